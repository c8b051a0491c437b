# Borrowed C pointers into Python buffers, shared by the PromQL kernels and vecops. The caller
# keeps the object alive and unresized while it uses the pointer; array('d'/'q') objects skip
# the buffer protocol.
from libc.stdint cimport int64_t, uint8_t
from cpython.array cimport array as carray
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING


cdef inline const double *cdptr(object o) except? NULL:
    cdef const double[::1] mv
    if type(o) is carray:
        return (<carray>o).data.as_doubles
    mv = o
    return &mv[0] if mv.shape[0] else NULL


cdef inline double *mdptr(object o) except? NULL:
    # writable: refuses read-only buffers
    cdef double[::1] mv
    if type(o) is carray:
        return (<carray>o).data.as_doubles
    mv = o
    return &mv[0] if mv.shape[0] else NULL


cdef inline const int64_t *qptr(object o) except? NULL:
    cdef const int64_t[::1] mv
    if type(o) is carray:
        return <const int64_t *>(<carray>o).data.as_longlongs
    mv = o
    return &mv[0] if mv.shape[0] else NULL


cdef inline const uint8_t *mptr(object o) except? NULL:
    cdef const uint8_t[::1] mv
    if type(o) is bytearray:
        return <const uint8_t *>PyByteArray_AS_STRING(o)
    if type(o) is bytes:
        return <const uint8_t *>PyBytes_AS_STRING(o)
    mv = o
    return &mv[0] if mv.shape[0] else NULL
