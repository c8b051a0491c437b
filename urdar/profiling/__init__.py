"""Profilers of the whole urdar process that speak pprof's wire format (served by handlers/pprof.py).

pprof.py encodes profile.proto by hand; sampler.py is the stack sampler thread behind cpu.py
(on-CPU threads, per-thread CPU clocks), fgprof.py (wall clock, every thread) and trace.py
(sampled Chrome trace); heapsample.pyx is an allocator hook that samples about one allocation
per 512 KiB, always on, and heap.py turns its samples into Go's heap profile; threads.py dumps
every thread's stack and what the reactor waits for; contention.py provides the Lock/RLock that
urdar's own code uses and records their waits when asked. Apart from the heap sampling hook,
nothing here runs while idle."""
