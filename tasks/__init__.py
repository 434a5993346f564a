"""Prefect tasks: small named steps that call the case service (sync DB work runs in a thread)."""
