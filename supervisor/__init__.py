"""A device supervisor, wire-compatible with the balena Supervisor (see docs/ARCHITECTURE.md)."""

__version__ = "0.1.0"
