"""The HTTP API (CONTRACT.md): thin routes over the services."""
