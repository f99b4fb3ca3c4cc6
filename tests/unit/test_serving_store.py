"""Profile store: SQLite survives a reopen, keeps the newest preferences, and deletion really deletes."""

import pytest

from fspo_ray.episodes import Preference
from fspo_ray.errors import FspoError
from fspo_ray.serving.store import InMemoryProfileStore, SQLiteProfileStore, make_store, user_key


def prefs(tag, n):
    return [Preference(f"{tag} q{i}", f"{tag} good{i}", f"{tag} bad{i}") for i in range(n)]


@pytest.fixture(params=["sqlite", "memory"])
def store(request, tmp_path):
    s = make_store(request.param, str(tmp_path / "p.sqlite3"))
    yield s
    s.close()


def test_add_get_and_keep_the_newest(store):
    assert store.add_preferences("alice", prefs("a", 3), max_keep=4) == 3
    assert store.add_preferences("alice", prefs("b", 3), max_keep=4) == 4  # the 2 oldest dropped
    assert store.add_preferences("bob", prefs("c", 1), max_keep=4) == 1
    got = store.get_preferences("alice")
    assert [p.question for p in got] == ["a q2", "b q0", "b q1", "b q2"]  # oldest first
    assert [p.question for p in store.get_preferences("alice", limit=2)] == ["b q1", "b q2"]
    assert store.get_preferences("nobody") == []


def test_delete_removes_the_user_and_records_a_pseudonymous_event(store):
    store.add_preferences("alice", prefs("a", 2), max_keep=10)
    store.add_preferences("bob", prefs("b", 2), max_keep=10)
    seq0, _ = store.deletions_since(0, retain_s=60)
    assert store.delete_user("alice") == 2
    assert store.get_preferences("alice") == [] and len(store.get_preferences("bob")) == 2
    seq1, keys = store.deletions_since(seq0, retain_s=60)
    assert keys == [user_key("alice")] and seq1 == seq0 + 1
    assert "alice" not in keys[0]
    assert store.deletions_since(seq1, retain_s=60) == (seq1, [])
    assert store.delete_user("alice") == 0


def test_sqlite_survives_a_reopen_and_deleted_text_is_gone_from_disk(tmp_path):
    path = tmp_path / "profiles.sqlite3"
    a = SQLiteProfileStore(str(path))
    marker = "ZQX-private-marker-9137"
    a.add_preferences("alice", [Preference("q", f"chosen {marker}", "r")], max_keep=10)
    a.add_preferences("bob", prefs("b", 1), max_keep=10)
    a.close()
    b = SQLiteProfileStore(str(path))  # a replica restart: a new process opens the same file
    assert b.get_preferences("alice")[0].chosen == f"chosen {marker}"
    assert b.delete_user("alice") == 1
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # the db, its WAL and shm
    assert marker.encode() not in on_disk and b"alice" not in on_disk
    assert b"b good0" in on_disk  # other users stay
    b.close()
    assert SQLiteProfileStore(str(path)).get_preferences("alice") == []


def test_sqlite_deletion_events_are_pruned(tmp_path):
    s = SQLiteProfileStore(str(tmp_path / "p.sqlite3"))
    s.delete_user("alice")
    seq, keys = s.deletions_since(0, retain_s=-1)  # everything older than "now + 1 s" is pruned after reading
    assert keys == [user_key("alice")]
    assert s.deletions_since(0, retain_s=60) == (seq, [])


def test_make_store_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FspoError, match=r"store\.path: cannot open the profile store at .*/file/db"):
        make_store("sqlite", str(tmp_path / "file" / "db"))
    with pytest.raises(FspoError, match=r"store\.class_path: cannot import 'nope\.mod:Store'"):
        make_store("custom", "x", "nope.mod:Store")
    custom = make_store("custom", "ignored", "fspo_ray.serving.store:InMemoryProfileStore")
    assert isinstance(custom, InMemoryProfileStore)
    with pytest.raises(ValueError, match=r"unknown store kind 'redis'; expected one of \('sqlite', 'postgres', 'memory', 'custom'\)"):
        make_store("redis", "x")
