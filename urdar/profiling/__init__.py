"""Profilers of the whole urdar process that speak pprof's wire format (served by handlers/pprof.py).

pprof.py encodes profile.proto by hand; sampler.py is the stack sampler thread behind cpu.py
(on-CPU threads, per-thread CPU clocks), fgprof.py (wall clock, every thread) and trace.py
(sampled Chrome trace); heap.py wraps tracemalloc (off until switched on); threads.py dumps
every thread's stack and what the reactor waits for; contention.py provides the Lock/RLock that
urdar's own code uses and records their waits when asked. Nothing here runs while idle."""
