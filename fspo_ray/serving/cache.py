"""Persona cache: (user, hash of the preferences used) -> description; LRU-bounded, with a TTL.

Keys hold a pseudonym of the user id (store.user_key), so deletion can find a user's entries
without the cache keeping raw ids.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fspo_ray.episodes import Preference
from fspo_ray.serving.pseudonyms import user_key


def preferences_hash(prefs: Sequence[Preference]) -> str:
    """Order-sensitive: the shots are rendered in order, so a reordering is another prompt."""
    canonical = json.dumps([[p.question, p.chosen, p.rejected] for p in prefs], ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class PersonaCache:
    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_entries, self.ttl_s, self._clock = max_entries, ttl_s, clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, user_id: str, prefs_hash: str) -> str | None:
        key = (user_key(user_id), prefs_hash)
        with self._lock:
            item = self._entries.get(key)
            if item is not None and self._clock() - item[0] > self.ttl_s:
                del self._entries[key]
                self.stats.expirations += 1
                item = None
            if item is None:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return item[1]

    def put(self, user_id: str, prefs_hash: str, persona: str) -> None:
        if self.max_entries <= 0:
            return
        key = (user_key(user_id), prefs_hash)
        with self._lock:
            self._entries[key] = (self._clock(), persona)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self.stats.evictions += 1

    def delete_user(self, user_id: str) -> int:
        return self.delete_keys([user_key(user_id)])

    def delete_keys(self, keys: Sequence[str]) -> int:
        """Drop every entry of these user keys; returns how many."""
        wanted = set(keys)
        with self._lock:
            doomed = [k for k in self._entries if k[0] in wanted]
            for k in doomed:
                del self._entries[k]
        return len(doomed)
