"""The PostgreSQL disaster-recovery runbook: core package (no UI imports here)."""

__version__ = "0.1.0"
