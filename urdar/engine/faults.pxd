# Disk fault injection for tests: the write paths of the engine ask fault_hit(site, path)
# right before their system call and fail with the returned -errno as if the kernel had
# answered it (ENOSPC, EIO, EFBIG, ...). Nothing is armed unless a test calls faults.inject,
# so production pays one load of a global per call.
cdef enum:
    FAULT_WAL_WRITE = 0           # WAL segment pwrite (fails after writing half the bytes)
    FAULT_WAL_SYNC = 1            # WAL segment fsync
    FAULT_WAL_CREATE = 2          # opening a new WAL segment
    FAULT_HEAD_CHUNKS = 3         # chunks_head/ file creation and block reservation
    FAULT_BLOCK_WRITE = 4         # writing a block directory (engine/block.py)
    FAULT_N_SITES = 5

# 0, or the -errno to fail with. `path` (a directory or file of the caller) must start with
# the armed prefix, when one was given. Safe to call without the GIL.
cdef int fault_hit(int site, const char *path) noexcept nogil
