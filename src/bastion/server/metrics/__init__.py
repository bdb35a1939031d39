"""Prometheus metrics of one fleet server app, at ``/metrics`` (loopback or a bearer token)."""
