"""The user pseudonym every store, cache and log line uses: never the raw user id."""

from __future__ import annotations

import hashlib


def user_key(user_id: str) -> str:
    """A pseudonym for logs, caches and deletion events: never the raw id."""
    return hashlib.sha256(user_id.encode()).hexdigest()[:24]
