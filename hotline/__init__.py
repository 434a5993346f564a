"""Citizen hotline (12345 接诉即办) case handling: the runtime, settings and CLI."""
