"""The PostgreSQL profile store against a real server (tests/postgres_server.py starts one from
Debian's `postgresql` package; without it the module skips with the reason): the SQLite store's
limits and deletion semantics, and what SQLite cannot do: two replicas (two connections, as on
two nodes) see each other's writes and deletions, concurrent writers keep the limit exactly, and
a restarted server costs one failed call, then the store reconnects.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from fspo_ray.episodes import Preference
from fspo_ray.errors import FspoError
from fspo_ray.serving.config import ConfigError, load_serve_config
from fspo_ray.serving.store import make_store, user_key
from tests import postgres_server


def prefs(tag, n):
    return [Preference(f"{tag} q{i}", f"{tag} good{i}", f"{tag} bad{i}") for i in range(n)]


@pytest.fixture(scope="module")
def server():
    s = postgres_server.start()
    if isinstance(s, str):
        pytest.skip(f"PostgreSQL: {s}")
    yield s
    s.stop()


@pytest.fixture
def dsn(server):
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def store(dsn):
    s = make_store("postgres", dsn)
    yield s
    s.close()


def test_add_get_and_keep_the_newest(store):
    assert store.add_preferences("alice", prefs("a", 3), max_keep=4) == 3
    assert store.add_preferences("alice", prefs("b", 3), max_keep=4) == 4  # the 2 oldest dropped
    assert store.add_preferences("bob", prefs("c", 1), max_keep=4) == 1
    assert [p.question for p in store.get_preferences("alice")] == ["a q2", "b q0", "b q1", "b q2"]  # oldest first
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
    assert store.deletions_since(seq1, retain_s=60) == (seq1, [])
    assert store.delete_user("alice") == 0


def test_delete_one_preference_by_index(store):
    store.add_preferences("alice", prefs("a", 3), max_keep=10)
    seq0, _ = store.deletions_since(0, retain_s=60)
    assert store.delete_preference("alice", 1) is True
    assert [p.question for p in store.get_preferences("alice")] == ["a q0", "a q2"]
    assert store.delete_preference("alice", 2) is False and store.delete_preference("alice", -1) is False
    assert store.deletions_since(seq0, retain_s=60)[1] == [user_key("alice")]  # caches drop the old persona


def test_two_replicas_share_profiles_and_deletion_events(dsn):
    """Two stores = two ingress replicas on two nodes: a write on one is read on the other."""
    a, b = make_store("postgres", dsn), make_store("postgres", dsn)
    seq_b, _ = b.deletions_since(0, retain_s=60)
    a.add_preferences("carol", prefs("c", 2), max_keep=10)
    assert [p.chosen for p in b.get_preferences("carol")] == ["c good0", "c good1"]
    assert b.delete_user("carol") == 2
    assert a.get_preferences("carol") == []
    seq, keys = a.deletions_since(seq_b, retain_s=60)  # a's persona cache hears of b's deletion
    assert keys == [user_key("carol")] and seq > seq_b
    a.close(), b.close()


def test_concurrent_writers_keep_the_limit_exactly(dsn):
    stores = [make_store("postgres", dsn) for _ in range(4)]
    barrier = threading.Barrier(len(stores))

    def writer(i, s):
        barrier.wait()
        for j in range(10):
            s.add_preferences("dave", [Preference(f"w{i} q{j}", "c", "r")], max_keep=7)

    threads = [threading.Thread(target=writer, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = stores[0].get_preferences("dave")
    assert len(got) == 7 and len({p.question for p in got}) == 7
    for s in stores:
        s.close()


def test_deletion_events_are_pruned(store):
    store.delete_user("x")
    seq, keys = store.deletions_since(0, retain_s=60)
    assert keys == [user_key("x")]
    assert store.deletions_since(0, retain_s=0.0) == (seq, [user_key("x")])  # returned once, then pruned
    assert store.deletions_since(0, retain_s=60) == (seq, [])


def test_a_restarted_server_costs_one_call_then_the_store_reconnects(server, dsn):
    s = make_store("postgres", dsn)
    s.add_preferences("erin", prefs("e", 1), max_keep=10)
    r = server.pg_ctl("restart", "-m", "fast", "-w", "-t", "60", timeout=90)
    assert r.returncode == 0, r.stderr
    import psycopg

    with pytest.raises(psycopg.OperationalError):
        s.get_preferences("erin")  # the old connection is gone: the ingress answers this one with 503
    assert [p.question for p in s.get_preferences("erin")] == ["e q0"]  # reconnected; the data survived
    s.ping()
    s.close()


def test_open_errors_name_the_field(server):
    with pytest.raises(FspoError, match=r"store\.path: cannot open the PostgreSQL profile store: .*does not exist"):
        make_store("postgres", server.dsn("no_such_db"))


@pytest.mark.parametrize("path, match", [
    ("postgresql://fspo:secret@db:5432/fspo", "must not hold the password"),
    ("host=db user=fspo password=secret", "must not hold the password"),
    ("postgresql://db/fspo?password=secret", "must not hold the password"),
    ("{output_dir}/serve/profiles.sqlite3", "needs path as a connection string"),
])
def test_config_rejects_a_password_in_the_dsn_and_a_file_path(path, match):
    with pytest.raises(ConfigError, match=match):
        load_serve_config({"store": {"kind": "postgres", "path": path}, "check_model_paths": False})


def test_config_accepts_a_dsn_without_password():
    cfg = load_serve_config({"store": {"kind": "postgres", "path": "postgresql://fspo@db:5432/fspo"}})
    assert cfg.store.path == "postgresql://fspo@db:5432/fspo"
