"""A sampled execution timeline of every thread (GET /debug/pprof/trace), as Chrome trace-event JSON.

Go's /debug/pprof/trace is the runtime's binary event trace; Python has no equivalent that is
cheap for every thread: sys.setprofile calls back into Python on every call and return (several
times slower code, and on 3.11 it cannot be set on threads already running). Instead a wall-clock
StackSampler records each thread's stack at every tick, and `chrome_trace(sampler)` turns runs of
consecutive ticks in which a frame stays on a thread's stack into complete ("X") events, nested
like a flame chart on a time axis. Open it in Perfetto (ui.perfetto.dev) or chrome://tracing; it
is not readable by `go tool trace`. Resolution is one tick (default 250 Hz, ?hz=N), and
no finer than the GIL switch interval (5 ms) while threads compete for the GIL; shorter calls are
missed or merged."""
import os

from urdar.profiling.sampler import Exclusive

DEFAULT_HZ = 250
EXCLUSIVE = Exclusive("trace")


def chrome_trace(sampler):
    """{"traceEvents": [...]} from a stopped StackSampler(record_timeline=True)."""
    pid = os.getpid()
    period_ns = sampler.period_ns
    names = {}

    def name_of(cid):
        n = names.get(cid)
        if n is None:
            n = names[cid] = sampler.modules.name(cid)
        return n

    events = []
    open_by_tid = {}            # tid -> [(code, start ns)] root first
    last_seen = {}              # tid -> (tick, t ns)
    thread_names = {}

    def close(tid, keep, t_end):
        frames = open_by_tid.get(tid, [])
        while len(frames) > keep:
            cid, t0 = frames.pop()
            code = sampler.modules.code(cid)
            events.append({"name": name_of(cid), "cat": "python", "ph": "X", "pid": pid, "tid": tid,
                           "ts": t0 / 1000.0, "dur": max(t_end - t0, 0) / 1000.0,
                           "args": {"file": code.co_filename, "line": code.co_firstlineno}})

    for tick, t, thread, tid, stack in sampler.timeline:
        thread_names[tid] = thread
        prev = last_seen.get(tid)
        if prev is not None and tick - prev[0] > 1:
            close(tid, 0, prev[1] + period_ns)     # missing from a tick: the thread had ended
        last_seen[tid] = (tick, t)
        codes = [cid for cid, _line in reversed(stack)]
        frames = open_by_tid.setdefault(tid, [])
        common = 0
        while common < len(frames) and common < len(codes) and frames[common][0] == codes[common]:
            common += 1
        close(tid, common, t)
        for cid in codes[common:]:
            frames.append((cid, t))
    for tid, (_tick, t) in last_seen.items():
        close(tid, 0, t + period_ns)
    events.sort(key=lambda e: (e["tid"], e["ts"], -e["dur"]))
    meta = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": "urdar"}}]
    meta += [{"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": n}}
             for tid, n in sorted(thread_names.items())]
    return {"traceEvents": meta + events, "displayTimeUnit": "ms",
            "otherData": {"producer": "urdar sampled trace", "hz": sampler.hz, "ticks": sampler.ticks}}
