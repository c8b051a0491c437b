/* Size-class slabs for the head's per-series allocations (series structs, open chunks).
 *
 * Why not malloc: open chunks grow a few bytes per sample, and all series of a scrape grow in
 * step, so realloc moves most of them and leaves holes between the series that stay (tens of
 * bytes per series), and every block pays malloc's 8-byte header. Here a block of n bytes
 * takes a slot of the 16-byte class holding n, in a 128 KiB slab of that class only: the
 * slots a growing chunk leaves behind are reused by the next series growing into that class,
 * and a slab whose slots are all free goes back to the kernel (one per class is kept, so a
 * class moving between 0 and 1 blocks does not map and unmap each time).
 *
 * The caller passes the block's size back on free and realloc (the head knows it: the chunk's
 * capacity, the struct's key length). Blocks above URDAR_SLAB_MAX come from malloc.
 * Thread-safe: one spin lock per class (held for a few instructions; mapping a slab is rare).
 */
#ifndef URDAR_SLAB_H
#define URDAR_SLAB_H

#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>

#define URDAR_SLAB_BYTES ((size_t)32 * 1024)
#define URDAR_SLAB_STEP 16u
#define URDAR_SLAB_CLASSES 72u
#define URDAR_SLAB_MAX ((size_t)URDAR_SLAB_STEP * URDAR_SLAB_CLASSES)   /* 1152 */
#define URDAR_SLAB_HDR 64u

typedef struct urdar_slab {
    struct urdar_slab *prev, *next;   /* in the class's list of slabs with a free slot */
    void *free;                       /* freed slots, chained through their first word */
    uint32_t bump;                    /* offset of the first never-used slot */
    uint32_t live;                    /* slots in use */
    uint32_t size;                    /* slot bytes */
    uint32_t listed;                  /* on the class's list */
} urdar_slab_t;

typedef struct {
    int lock;
    uint32_t slabs;                   /* mapped slabs of this class */
    urdar_slab_t *avail;              /* slabs with a free slot, the most recently freed into first */
    size_t live_bytes;                /* slot bytes in use */
} urdar_slab_class_t;

static urdar_slab_class_t urdar_slab_cls[URDAR_SLAB_CLASSES];

static inline void urdar_slab_lock(urdar_slab_class_t *c) {
    int spins = 0;
    while (__atomic_exchange_n(&c->lock, 1, __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(&c->lock, __ATOMIC_RELAXED)) {
            if (++spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
#endif
            } else {
                sched_yield();
            }
        }
    }
}

static inline void urdar_slab_unlock(urdar_slab_class_t *c) {
    __atomic_store_n(&c->lock, 0, __ATOMIC_RELEASE);
}

/* The slot bytes a block of n bytes takes (n itself above URDAR_SLAB_MAX). */
static inline size_t urdar_slab_size(size_t n) {
    if (n > URDAR_SLAB_MAX)
        return n;
    if (n == 0)
        n = 1;
    return (n + URDAR_SLAB_STEP - 1) & ~(size_t)(URDAR_SLAB_STEP - 1);
}

static urdar_slab_t *urdar_slab_map(uint32_t size) {
    /* twice the size, trimmed to an aligned slab: a slot finds its slab by masking */
    uint8_t *raw = (uint8_t *)mmap(NULL, 2 * URDAR_SLAB_BYTES, PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint8_t *p;
    size_t lead;
    urdar_slab_t *s;
    if (raw == (uint8_t *)MAP_FAILED)
        return NULL;
    p = (uint8_t *)(((uintptr_t)raw + URDAR_SLAB_BYTES - 1) & ~(uintptr_t)(URDAR_SLAB_BYTES - 1));
    lead = (size_t)(p - raw);
    if (lead)
        munmap(raw, lead);
    if (URDAR_SLAB_BYTES - lead)
        munmap(p + URDAR_SLAB_BYTES, URDAR_SLAB_BYTES - lead);
    s = (urdar_slab_t *)p;
    s->prev = s->next = NULL;
    s->free = NULL;
    s->bump = URDAR_SLAB_HDR;
    s->live = 0;
    s->size = size;
    s->listed = 0;
    return s;
}

static inline void urdar_slab_link(urdar_slab_class_t *c, urdar_slab_t *s) {
    s->prev = NULL;
    s->next = c->avail;
    if (c->avail)
        c->avail->prev = s;
    c->avail = s;
    s->listed = 1;
}

static inline void urdar_slab_unlink(urdar_slab_class_t *c, urdar_slab_t *s) {
    if (s->prev)
        s->prev->next = s->next;
    else
        c->avail = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    s->listed = 0;
}

/* A block of at least n bytes (urdar_slab_size(n) usable), or NULL. Not zeroed. */
static void *urdar_slab_alloc(size_t n) {
    size_t size = urdar_slab_size(n);
    urdar_slab_class_t *c;
    urdar_slab_t *s;
    void *p;
    if (size > URDAR_SLAB_MAX)
        return malloc(size);
    c = &urdar_slab_cls[size / URDAR_SLAB_STEP - 1];
    urdar_slab_lock(c);
    s = c->avail;
    if (s == NULL) {
        s = urdar_slab_map((uint32_t)size);
        if (s == NULL) {
            urdar_slab_unlock(c);
            return NULL;
        }
        c->slabs++;
        urdar_slab_link(c, s);
    }
    if (s->free != NULL) {
        p = s->free;
        s->free = *(void **)p;
    } else {
        p = (uint8_t *)s + s->bump;
        s->bump += (uint32_t)size;
    }
    s->live++;
    c->live_bytes += size;
    if (s->free == NULL && s->bump + size > URDAR_SLAB_BYTES)
        urdar_slab_unlink(c, s);
    urdar_slab_unlock(c);
    return p;
}

/* Free a block urdar_slab_alloc(n) returned (n as allocated, or anything with the same
 * urdar_slab_size). NULL is ignored. */
static void urdar_slab_free(void *p, size_t n) {
    size_t size = urdar_slab_size(n);
    urdar_slab_class_t *c;
    urdar_slab_t *s;
    if (p == NULL)
        return;
    if (size > URDAR_SLAB_MAX) {
        free(p);
        return;
    }
    c = &urdar_slab_cls[size / URDAR_SLAB_STEP - 1];
    s = (urdar_slab_t *)((uintptr_t)p & ~(uintptr_t)(URDAR_SLAB_BYTES - 1));
    urdar_slab_lock(c);
    *(void **)p = s->free;
    s->free = p;
    s->live--;
    c->live_bytes -= size;
    if (s->live == 0 && c->slabs > 1) {
        if (s->listed)
            urdar_slab_unlink(c, s);
        c->slabs--;
        urdar_slab_unlock(c);
        munmap(s, URDAR_SLAB_BYTES);
        return;
    }
    if (!s->listed)
        urdar_slab_link(c, s);
    urdar_slab_unlock(c);
}

/* Move a block of `old` bytes to one of at least `n` (the contents up to the smaller size
 * kept); the same block when both sizes share a class. NULL (the old block intact) when out
 * of memory. */
static void *urdar_slab_realloc(void *p, size_t old, size_t n) {
    size_t a = urdar_slab_size(old), b = urdar_slab_size(n);
    void *q;
    if (p == NULL)
        return urdar_slab_alloc(n);
    if (a == b)
        return p;
    if (a > URDAR_SLAB_MAX && b > URDAR_SLAB_MAX)
        return realloc(p, b);
    q = urdar_slab_alloc(n);
    if (q == NULL)
        return NULL;
    memcpy(q, p, a < b ? a : b);
    urdar_slab_free(p, old);
    return q;
}

/* (bytes of the slabs mapped, slot bytes in use): the first less the second is the slabs' free
 * room (a mapped slab's never-used tail is not resident, so RSS may be lower). */
static void urdar_slab_usage(size_t *mapped, size_t *used) {
    size_t m = 0, u = 0;
    unsigned i;
    for (i = 0; i < URDAR_SLAB_CLASSES; i++) {
        urdar_slab_lock(&urdar_slab_cls[i]);
        m += (size_t)urdar_slab_cls[i].slabs * URDAR_SLAB_BYTES;
        u += urdar_slab_cls[i].live_bytes;
        urdar_slab_unlock(&urdar_slab_cls[i]);
    }
    *mapped = m;
    *used = u;
}

#endif
