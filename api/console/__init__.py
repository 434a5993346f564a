"""The supervisor console (督办台) at /console: server-rendered pages for supervisors and dispatchers."""
