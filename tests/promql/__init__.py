"""Tests for urdar.promql. `testdata/` is the pinned copy of Prometheus' promqltest scripts (see its README)."""
import os

TESTDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata")
