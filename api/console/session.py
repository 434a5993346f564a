"""Console login sessions and CSRF protection.

A supervisor (or dispatcher, or the admin) logs in with their token; the console keeps a **signed session cookie**
(HttpOnly, SameSite=Strict, 12 h) holding who they are and a random CSRF token. Every form carries that CSRF token
in a hidden field and every POST checks it against the session (the login form, before any session exists,
checks a signed pre-login cookie the same way). The signing key is derived from the admin token, so rotating
the admin token logs everybody out.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from hotline.settings import get_settings

COOKIE = "hotline_console"
PRE_COOKIE = "hotline_console_login"
MAX_AGE = 12 * 3600


@dataclass(frozen=True)
class ConsoleUser:
    actor: str  # as recorded on the timeline: "admin" or "staff:<id>:<role>"
    name: str
    csrf: str


def _serializer(salt: str) -> URLSafeTimedSerializer:
    admin = get_settings().admin_token or ""
    key = hmac.new(admin.encode(), b"hotline-console", hashlib.sha256).hexdigest()
    return URLSafeTimedSerializer(key, salt=salt)


def new_session(actor: str, name: str) -> tuple[str, ConsoleUser]:
    user = ConsoleUser(actor=actor, name=name, csrf=secrets.token_urlsafe(24))
    return _serializer("session").dumps({"actor": user.actor, "name": user.name, "csrf": user.csrf}), user


def read_session(cookie: str | None) -> ConsoleUser | None:
    if not cookie:
        return None
    try:
        data = _serializer("session").loads(cookie, max_age=MAX_AGE)
    except BadSignature:
        return None
    return ConsoleUser(actor=data["actor"], name=data["name"], csrf=data["csrf"])


def new_login_csrf() -> tuple[str, str]:
    """(cookie value, token for the hidden field) for the login form."""
    token = secrets.token_urlsafe(24)
    return _serializer("login").dumps(token), token


def login_csrf_ok(cookie: str | None, submitted: str | None) -> bool:
    if not cookie or not submitted:
        return False
    try:
        expected = _serializer("login").loads(cookie, max_age=3600)
    except BadSignature:
        return False
    return hmac.compare_digest(expected, submitted)


def csrf_ok(user: ConsoleUser, submitted: str | None) -> bool:
    return bool(submitted) and hmac.compare_digest(user.csrf, submitted)
