"""Row helpers shared by every stage: seeded random streams, keys, drops, token counts, and the
one encoding rows travel in between Ray Data stages."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pyarrow as pa

# Column layout between Ray Data stages: routing keys as columns, everything else in one JSON
# payload (views, personas and labels are nested and vary by provider). `engine` and
# `messages_json` are a model call's request in the engines layer's contract
# (fspo_ray/engines/ray_data.py), which adds its reply as columns.
PAYLOAD = "payload"
ROW_SCHEMA = pa.schema(
    [("shard_id", pa.string()), ("key", pa.string()), (PAYLOAD, pa.string()), ("engine", pa.string()),
     ("messages_json", pa.string())]
)


def seed_of(*parts: object) -> int:
    """A 64-bit seed from any parts: same parts, same seed, on every machine."""
    data = "\x1f".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


_MASK = (1 << 64) - 1


class RowRandom:
    """A small seeded random stream with the `random.Random` methods the world uses
    (random, choice, sample, shuffle, randrange, randint), on SplitMix64.

    A stage draws one stream per row; seeding a Mersenne Twister costs ~7 us, which at
    several streams per row was the largest cost of the world provider. SplitMix64 seeds
    for free and passes BigCrush; it is not for cryptography.
    """

    __slots__ = ("_state",)

    def __init__(self, seed: int):
        self._state = seed & _MASK

    def _next(self) -> int:
        self._state = s = (self._state + 0x9E3779B97F4A7C15) & _MASK
        s = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        s = ((s ^ (s >> 27)) * 0x94D049BB133111EB) & _MASK
        return s ^ (s >> 31)

    def random(self) -> float:
        return (self._next() >> 11) * (1.0 / 9007199254740992.0)  # 53 bits -> [0, 1)

    def randrange(self, start: int, stop: int | None = None) -> int:
        if stop is None:
            start, stop = 0, start
        n = stop - start
        if n <= 0:
            raise ValueError(f"empty range for randrange({start}, {stop})")
        return start + (self._next() * n >> 64)  # multiply-shift: bias < n / 2**64

    def randint(self, a: int, b: int) -> int:
        return self.randrange(a, b + 1)

    def choice(self, seq):
        if not seq:
            raise IndexError("cannot choose from an empty sequence")
        return seq[self._next() * len(seq) >> 64]

    def shuffle(self, x: list) -> None:
        for i in range(len(x) - 1, 0, -1):
            j = self._next() * (i + 1) >> 64
            x[i], x[j] = x[j], x[i]

    def sample(self, population, k: int) -> list:
        pool = list(population)
        if not 0 <= k <= len(pool):
            raise ValueError("sample larger than population or is negative")
        for i in range(k):  # partial Fisher-Yates
            j = i + (self._next() * (len(pool) - i) >> 64)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]


def rng_for(*parts: object) -> RowRandom:
    """The random stream of one row and one stage. Seeding per row (not per batch) makes
    rows independent of how Ray Data batches them, so fused and staged runs agree."""
    return RowRandom(seed_of(*parts))


def slot_key(user_id: str, slot: int) -> str:
    return f"{user_id}:{slot:04d}"


def pair_id(user_id: str, question_id: str, chosen: str, rejected: str) -> str:
    """The dedup key of a preference row (data contract: stable across runs and resumes)."""
    data = "\x1f".join((user_id, question_id, chosen, rejected)).encode()
    return hashlib.blake2b(data, digest_size=10).hexdigest()


def drop(row: dict, reason: str) -> dict:
    """Mark a row dropped; later stages pass it through so the shard can count it."""
    out = dict(row)
    out["drop"] = reason
    return out


def count_drops(rows) -> Counter:
    return Counter(r["drop"] for r in rows if r.get("drop"))


def add_tokens(*counts: dict) -> dict:
    """Sum {model: generated tokens} counts."""
    out: dict[str, int] = {}
    for c in counts:
        for model, n in c.items():
            out[model] = out.get(model, 0) + n
    return out


# --- rows <-> Arrow batches ------------------------------------------------------------


def to_table(rows: list[dict]) -> pa.Table:
    """Rows -> a batch: a row carrying `messages` and `engine` is a request to that model."""
    cols: dict[str, list] = {n: [] for n in ROW_SCHEMA.names}
    for r in rows:
        r = dict(r)
        messages = r.pop("messages", None)
        cols["shard_id"].append(r["shard_id"])
        cols["key"].append(r.get("key", ""))
        cols["engine"].append(r.pop("engine", "") or "")
        cols["messages_json"].append(json.dumps(messages) if messages is not None else "")
        cols[PAYLOAD].append(json.dumps(r, separators=(",", ":")))
    return pa.table(cols, schema=ROW_SCHEMA)


def from_table(table: pa.Table) -> list[dict]:
    """A batch -> rows. A row a model answered (the engines layer's reply columns) comes back with
    `generated_text`, `engine_error` when it failed, and the model's tokens counted; it is off the
    routing (no `engine`, no `messages`). A request not answered yet keeps both."""
    names = table.column_names
    if PAYLOAD not in names:  # the pipeline's input items (shards, probe slots)
        return table.to_pylist()
    n = table.num_rows
    col = lambda name, default: table.column(name).to_pylist() if name in names else [default] * n  # noqa: E731
    answered = "generated_text" in names
    rows = []
    for p, engine, messages, text, error, tokens in zip(
        col(PAYLOAD, ""), col("engine", ""), col("messages_json", ""), col("generated_text", ""),
        col("engine_error", ""), col("num_generated_tokens", 0), strict=True,
    ):
        r = json.loads(p)
        if engine and answered:
            r["generated_text"] = text or ""
            if error:
                r["engine_error"] = str(error)
            r["tokens"] = add_tokens(r.get("tokens", {}), {engine: int(tokens or 0)})
        elif engine:
            r["engine"] = engine
            if messages:
                r["messages"] = json.loads(messages)
        rows.append(r)
    return rows


def rows_fn(fn):
    """A stage function over rows -> a Ray Data batch function over Arrow tables."""

    def batch_fn(table: pa.Table) -> pa.Table:
        return to_table(fn(from_table(table)))

    batch_fn.__name__ = getattr(fn, "__name__", "stage")
    return batch_fn
