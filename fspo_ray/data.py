"""The preference-row data contract: one Arrow schema, parquet readers and writers.

Every stage that writes or reads preferences goes through this module, so the columns
are defined in one place. Columns overlap TRL's preference format (`chosen`/`rejected`;
`question` is TRL's `prompt`) so a user can feed the same parquet to TRL.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fspo_ray.episodes import Preference
from fspo_ray.errors import FspoError
from fspo_ray.splits import SPLITS

logger = logging.getLogger(__name__)

# Required text fields: a row with any of these missing or empty is rejected.
REQUIRED_FIELDS = ("user_id", "question", "chosen", "rejected", "domain", "split")

PREFERENCE_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        # The user's natural-language description (after iterative refinement).
        pa.field("user_description", pa.string()),
        # Gold persona as JSON {axis: value} where known (the simulated world); else null.
        pa.field("user_profile", pa.string()),
        # Provenance.
        pa.field("pair_id", pa.string()),  # stable hash; the dedup key across resumes
        pa.field("question_id", pa.string()),
        pa.field("generator_chosen", pa.string()),
        pa.field("generator_rejected", pa.string()),
        pa.field("view_chosen", pa.string()),  # JSON of the view that steered the response
        pa.field("view_rejected", pa.string()),
        pa.field("judge_votes", pa.string()),  # e.g. "A|B": labels in original and swapped order
        pa.field("refined", pa.bool_()),  # label decided by iterative persona refinement
        pa.field("source", pa.string()),  # provider: "world", "hf:<model>", "vllm:<model>"
        pa.field("seed", pa.int64()),
    ]
)

COLUMNS = tuple(PREFERENCE_SCHEMA.names)


class PreferenceDataError(FspoError):
    """Raised when preference data does not meet the contract; the message says what and where."""


@dataclass
class ValidationReport:
    """What `validate_rows` kept and rejected, with a count per reason."""

    kept: int = 0
    rejected: Counter = field(default_factory=Counter)

    @property
    def num_rejected(self) -> int:
        return sum(self.rejected.values())

    def summary(self) -> str:
        if not self.rejected:
            return f"kept {self.kept} rows, rejected 0"
        reasons = ", ".join(f"{n} {r}" for r, n in self.rejected.most_common())
        return f"kept {self.kept} rows, rejected {self.num_rejected} ({reasons})"


def validate_rows(rows: Iterable[Mapping]) -> tuple[list[dict], ValidationReport]:
    """Split rows into valid ones (filled to the full schema) and a report of rejects.

    Never drops silently: every rejected row is counted under a reason such as
    "empty chosen" or "unknown split 'dev'".
    """
    report = ValidationReport()
    kept: list[dict] = []
    for row in rows:
        reason = _reject_reason(row)
        if reason is not None:
            report.rejected[reason] += 1
            continue
        kept.append({c: row.get(c) for c in COLUMNS})
        report.kept += 1
    if report.rejected:
        logger.warning("preference rows: %s", report.summary())
    return kept, report


def _reject_reason(row: Mapping) -> str | None:
    for name in REQUIRED_FIELDS:
        value = row.get(name)
        if value is None:
            return f"missing {name}"
        if not isinstance(value, str) or not value.strip():
            return f"empty {name}"
    if row["split"] not in SPLITS:
        return f"unknown split {row['split']!r} (allowed: {', '.join(SPLITS)})"
    if row["chosen"] == row["rejected"]:
        return "chosen equals rejected"
    return None


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Rows already validated -> an Arrow table in the contract's schema."""
    return pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=PREFERENCE_SCHEMA)


def write_preferences(
    rows: Iterable[Mapping], out_dir: str | Path, *, by_split: bool = True, file_name: str = "part-00000.parquet"
) -> ValidationReport:
    """Validate and write rows as parquet under `out_dir/split=<split>/` (or flat).

    Returns the validation report; rejected rows are counted, not written.
    """
    kept, report = validate_rows(rows)
    out = Path(out_dir)
    if by_split:
        groups: dict[str, list[dict]] = {}
        for r in kept:
            groups.setdefault(r["split"], []).append(r)
        for split, group in groups.items():
            d = out / f"split={split}"
            d.mkdir(parents=True, exist_ok=True)
            pq.write_table(rows_to_table(group), d / file_name)
    else:
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows_to_table(kept), out / file_name)
    return report


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.parquet") if not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))


def read_preferences(path: str | Path, *, splits: Iterable[str] | None = None) -> pa.Table:
    """Read a parquet file or directory of preference rows into one table in the contract's schema.

    Fails with a message naming the file and the missing columns if a file does not
    carry the required ones; optional provenance columns absent from a file are filled
    with nulls (data made by other tools, e.g. TRL-format parquet with a `user_id`).
    """
    root = Path(path)
    if not root.exists():
        raise PreferenceDataError(f"preference data not found: {root} does not exist")
    files = _parquet_files(root)
    if not files:
        raise PreferenceDataError(f"no parquet files under {root}")
    tables = []
    for f in files:
        t = pq.read_table(f)
        if "split" not in t.column_names and f.parent.name.startswith("split="):
            t = t.append_column("split", pa.array([f.parent.name[len("split="):]] * t.num_rows, pa.string()))
        missing = [c for c in REQUIRED_FIELDS if c not in t.column_names]
        if missing:
            raise PreferenceDataError(
                f"{f}: missing required column(s) {missing}; a preference file needs "
                f"{list(REQUIRED_FIELDS)} (optional: {[c for c in COLUMNS if c not in REQUIRED_FIELDS]})"
            )
        cols = [
            t.column(c).cast(PREFERENCE_SCHEMA.field(c).type) if c in t.column_names else pa.nulls(t.num_rows, PREFERENCE_SCHEMA.field(c).type)
            for c in COLUMNS
        ]
        tables.append(pa.Table.from_arrays(cols, schema=PREFERENCE_SCHEMA.with_metadata(None)))
    table = pa.concat_tables(tables)
    if splits is not None:
        wanted = set(splits)
        mask = [s in wanted for s in table.column("split").to_pylist()]
        table = table.filter(pa.array(mask))
    return table


@dataclass(frozen=True)
class UserData:
    """One split's preferences per user (file order) and gold descriptions, as training and the
    world's reference predictors read them."""

    prefs: dict[str, list[Preference]]
    descriptions: dict[str, str]


def load_users(path: str | Path, split: str, max_users: int | None = None) -> UserData:
    """The users of `split` under a preference directory; `max_users`: the first by user id."""
    table = read_preferences(path, splits=[split])
    cols = {c: table.column(c).to_pylist() for c in ("user_id", "question", "chosen", "rejected", "user_description")}
    prefs: dict[str, list[Preference]] = {}
    descriptions: dict[str, str] = {}
    for u, q, c, r, d in zip(*cols.values(), strict=True):
        prefs.setdefault(u, []).append(Preference(q, c, r))
        if d:
            descriptions[u] = d
    if max_users is not None:
        keep = sorted(prefs)[:max_users]
        prefs = {u: prefs[u] for u in keep}
        descriptions = {u: d for u, d in descriptions.items() if u in prefs}
    return UserData(prefs, descriptions)
