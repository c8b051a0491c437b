"""urdar: multi-tenant long-term storage for Prometheus metrics, speaking the Mimir HTTP API."""

__version__ = "0.1.0"
