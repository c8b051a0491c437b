"""Suite-wide settings.

Hypothesis' per-example deadline (200 ms by default) is a timed assertion: on a loaded machine a
correct example can exceed it. Tests assert behaviour, never speed (benchmarks/ does that), so
the deadline is off for every property test, and so is the health check that times the
generation of examples."""
from hypothesis import HealthCheck, settings

settings.register_profile("urdar", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("urdar")
