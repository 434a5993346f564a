"""Outgoing messages: signed webhooks to units and the human-readable texts (jinja2 templates)."""
