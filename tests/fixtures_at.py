"""Fixtures for the embedded control plane (owned by the server work: see noports/at/server)."""
