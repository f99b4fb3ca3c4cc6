"""The preference data contract: schema, parquet round trip, counted rejects."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fspo_ray.data import (
    COLUMNS,
    PreferenceDataError,
    read_preferences,
    validate_rows,
    write_preferences,
)


def _row(**kw):
    row = dict(user_id="u1", question="q", chosen="a", rejected="b", domain="elix", split="train")
    row.update(kw)
    return row


def test_round_trip_by_split(tmp_path):
    rows = [_row(), _row(user_id="u2", split="held_out", user_description="likes x", refined=True, seed=3)]
    report = write_preferences(rows, tmp_path)
    assert report.kept == 2 and report.num_rejected == 0
    assert sorted(p.parent.name for p in tmp_path.rglob("*.parquet")) == ["split=held_out", "split=train"]
    table = read_preferences(tmp_path)
    assert tuple(table.column_names) == COLUMNS
    got = sorted(table.to_pylist(), key=lambda r: r["user_id"])
    assert got[1]["user_description"] == "likes x" and got[1]["refined"] is True and got[1]["seed"] == 3
    assert read_preferences(tmp_path, splits=["held_out"]).num_rows == 1


def test_rejects_are_counted_with_reasons():
    rows = [_row(), _row(chosen=""), _row(rejected=None), _row(split="dev"), _row(chosen="same", rejected="same"), _row(question="  ")]
    kept, report = validate_rows(rows)
    assert len(kept) == 1
    assert report.rejected == {
        "empty chosen": 1,
        "missing rejected": 1,
        "unknown split 'dev' (allowed: train, held_out, interpolated)": 1,
        "chosen equals rejected": 1,
        "empty question": 1,
    }
    assert report.summary().startswith("kept 1 rows, rejected 5")


def test_missing_columns_name_the_file(tmp_path):
    pq.write_table(pa.table({"user_id": ["u"], "question": ["q"], "chosen": ["a"]}), tmp_path / "bad.parquet")
    with pytest.raises(PreferenceDataError, match=r"bad\.parquet: missing required column\(s\) \['rejected', 'domain', 'split'\]"):
        read_preferences(tmp_path)


def test_trl_style_file_gets_optional_columns_as_nulls(tmp_path):
    pq.write_table(pa.table({k: ["x"] for k in ("user_id", "question", "chosen", "domain")} | {"rejected": ["y"], "split": ["train"]}), tmp_path / "t.parquet")
    row = read_preferences(tmp_path).to_pylist()[0]
    assert row["chosen"] == "x" and row["pair_id"] is None


def test_missing_path_is_clear(tmp_path):
    with pytest.raises(PreferenceDataError, match="does not exist"):
        read_preferences(tmp_path / "nope")
