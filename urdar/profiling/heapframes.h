/* The Python stack of the running thread, read from the interpreter's own frame records.
 *
 * The allocator hook (heapsample.pyx) runs inside PyObject_Malloc, so it must not allocate:
 * the public PyEval_GetFrame/PyFrame_GetBack build frame *objects* on demand, and building one
 * can start a garbage collection (finalizers, Python code, a GIL switch) in the middle of an
 * allocation. The internal _PyInterpreterFrame chain has everything we need (code object,
 * instruction offset) and reading it allocates nothing. Its layout is private and changes
 * between minor versions, hence the version switches; the caller holds the GIL. */
#ifndef URDAR_HEAPFRAMES_H
#define URDAR_HEAPFRAMES_H

#include <Python.h>
#ifndef Py_BUILD_CORE
#define Py_BUILD_CORE 1
#endif
#include "internal/pycore_frame.h"

#if PY_VERSION_HEX < 0x030B0000
#error "urdar's heap sampler reads 3.11+ interpreter frames"
#endif

/* Code object of a frame, or NULL for a frame that runs no Python code (3.13 C-stack shims). */
static inline PyCodeObject *hf_code(_PyInterpreterFrame *f) {
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *ex = f->f_executable;
    return (ex != NULL && PyCode_Check(ex)) ? (PyCodeObject *)ex : NULL;
#else
    return f->f_code;
#endif
}

static inline _PyInterpreterFrame *hf_top(PyThreadState *ts) {
#if PY_VERSION_HEX >= 0x030D0000
    return ts->current_frame;
#else
    return ts->cframe != NULL ? ts->cframe->current_frame : NULL;
#endif
}

/* Up to `max` frames of the current thread, leaf first: borrowed code objects and their
 * instruction offsets (in code units; PyCode_Addr2Line wants bytes). Returns the count.
 * Frames that have not started yet (their line would be meaningless) are skipped, as in
 * tracebacks. */
static int hf_stack(PyObject **codes, int *lastis, int max) {
    PyThreadState *ts = _PyThreadState_UncheckedGet();
    int n = 0;
    if (ts == NULL)
        return 0;
    for (_PyInterpreterFrame *f = hf_top(ts); f != NULL && n < max; f = f->previous) {
        PyCodeObject *code = hf_code(f);
        if (code == NULL || _PyFrame_IsIncomplete(f))
            continue;
        codes[n] = (PyObject *)code;
        lastis[n] = _PyInterpreterFrame_LASTI(f);
        n++;
    }
    return n;
}

/* Reference counting on borrowed pointers, for code kept alive by the sample tables. */
static inline void hf_incref(PyObject *o) { Py_INCREF(o); }
static inline void hf_decref(PyObject *o) { Py_DECREF(o); }

#endif
