"""Prefect flows: one durable run per case, and the scheduled deadline watch."""
