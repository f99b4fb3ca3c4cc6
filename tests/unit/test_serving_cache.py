"""Persona cache: keyed by user + preference hash, bounded by size (LRU) and time (TTL)."""

from fspo_ray.episodes import Preference
from fspo_ray.serving.cache import PersonaCache, preferences_hash
from fspo_ray.serving.store import user_key

A, B = Preference("q1", "c1", "r1"), Preference("q2", "c2", "r2")


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_hash_is_order_and_content_sensitive():
    assert preferences_hash([A, B]) == preferences_hash([Preference("q1", "c1", "r1"), B])
    assert preferences_hash([A, B]) != preferences_hash([B, A])
    assert preferences_hash([A]) != preferences_hash([Preference("q1", "r1", "c1")])  # chosen/rejected swapped
    assert len(preferences_hash([A])) == 64


def test_hit_miss_and_ttl():
    clock = Clock()
    cache = PersonaCache(max_entries=10, ttl_s=60, clock=clock)
    h = preferences_hash([A])
    assert cache.get("u", h) is None
    cache.put("u", h, "likes short answers")
    assert cache.get("u", h) == "likes short answers"
    assert cache.get("other", h) is None and cache.get("u", preferences_hash([B])) is None
    clock.t = 60.0
    assert cache.get("u", h) == "likes short answers"  # exactly ttl: still valid
    clock.t = 60.5
    assert cache.get("u", h) is None and len(cache) == 0
    assert (cache.stats.hits, cache.stats.misses, cache.stats.expirations) == (2, 4, 1)
    assert cache.stats.hit_ratio == 2 / 6


def test_lru_bound():
    cache = PersonaCache(max_entries=2, ttl_s=60)
    cache.put("a", "h", "pa")
    cache.put("b", "h", "pb")
    assert cache.get("a", "h") == "pa"  # a is now the most recent
    cache.put("c", "h", "pc")
    assert len(cache) == 2 and cache.stats.evictions == 1
    assert cache.get("b", "h") is None and cache.get("a", "h") == "pa" and cache.get("c", "h") == "pc"


def test_delete_user_and_raw_ids_are_not_kept():
    cache = PersonaCache(max_entries=10, ttl_s=60)
    for h in ("h1", "h2"):
        cache.put("alice", h, "persona")
    cache.put("bob", "h1", "persona")
    assert all("alice" not in k[0] for k in cache._entries)
    assert cache.delete_user("alice") == 2 and len(cache) == 1
    assert cache.delete_keys([user_key("bob")]) == 1 and len(cache) == 0


def test_zero_entries_disables():
    cache = PersonaCache(max_entries=0, ttl_s=60)
    cache.put("u", "h", "p")
    assert cache.get("u", "h") is None and len(cache) == 0
