"""report.json keys, report.md tables laid out like the paper's, and the two PNG plots."""

import json
import struct

import pytest

from fspo_ray.evaluation.config import EvaluateConfig
from fspo_ray.evaluation.plan import Cell
from fspo_ray.evaluation.report import build_report, cell_text, render_markdown, write_report
from fspo_ray.evaluation.stats import win_rate

SPLITS = ["train", "held_out", "interpolated"]


@pytest.fixture
def report():
    """Methods: base (all ties: 0.5), fspo (3 of 4 pairs won, 1 tied: 0.875), oracle skipped."""
    ev = EvaluateConfig(num_shots=8, shots_sweep=[2, 8])
    results = {}
    for s in SPLITS:
        results[Cell("base", s, 8)] = win_rate([(0.5, 0.5)] * 4)
        results[Cell("fspo", s, 8)] = win_rate([(1.0, 1.0)] * 3 + [(0.5, 0.5)])
    results[Cell("fspo", "held_out", 2)] = win_rate([(1.0, 0.0)] * 4)  # 0.5
    dq = {"num_shots": 8, "embedder": "all-MiniLM-L6-v2", "skipped": {"after": "describe_after stage 'x': gone"},
          "before": {"stage": "rat_describe_sft", "similarity": {"train": 0.61, "all": 0.6},
                     "axes_recovered": {"all": 0.5}, "users": {"all": 4}}}
    return ev, build_report(ev=ev, methods=["base", "fspo"], results=results,
                            skipped={"oracle": "model stage 'fspo_rat': /r/models/fspo_rat does not exist"},
                            users={s: 2 for s in SPLITS}, judge={"kind": "world", "position_bias": 0.1, "noise": 0.05},
                            description_quality=dq, seconds=12.34)


def test_report_json_keys_and_values(report):
    _, r = report
    assert r["win_rate"] == {"base": {s: 0.5 for s in SPLITS}, "fspo": {s: 0.875 for s in SPLITS}}
    assert set(r["ci95"]["fspo"]) == set(SPLITS) and r["ci95"]["fspo"]["train"][0] < 0.875 < r["ci95"]["fspo"]["train"][1]
    assert r["p_value"]["fspo"]["held_out"] == 5 / 16  # floor(3.5) = 3 of 4: (4 + 1)/16
    assert r["n"]["base"]["train"] == 4
    assert r["counts"]["fspo"]["train"] == {"wins": 6, "ties": 2, "losses": 0, "judgments": 8}
    # the sweep has methods with user context only (base has none), N keys as strings, in N order
    assert r["win_rate_by_shots"] == {"fspo": {"2": 0.5, "8": 0.875}}
    assert list(r["ci95_by_shots"]["fspo"]) == ["2", "8"]
    assert r["skipped"] == {"oracle": "model stage 'fspo_rat': /r/models/fspo_rat does not exist"}
    assert r["seconds"] == 12.3 and r["statistics"]["ci95"].startswith("Wilson")
    json.dumps(r, allow_nan=False)  # strict JSON


def test_markdown_tables_like_the_paper(report):
    _, r = report
    md = render_markdown(r)
    lines = md.splitlines()
    i = lines.index("| Method | Trained users | Held-out users | Interpolated users |")
    lo, hi = r["ci95"]["fspo"]["train"]
    assert lines[i + 1] == "|---|---:|---:|---:|"
    assert lines[i + 2].startswith("| base | 50.0 ± ")
    assert lines[i + 3] == "| fspo | " + " | ".join([f"87.5 ± {100 * (hi - lo) / 2:.1f}"] * 3) + " |"
    assert "| fspo | p = 0.312 (n = 4) |" in md
    assert "## Win rate vs number of shots (held-out users)" in md and "| Method | N = 2 | N = 8 |" in md
    assert "| stage 1 (SFT) | `rat_describe_sft` | 0.610 | n/a | n/a | 0.600 | 50.0% |" in md
    assert "- `oracle`: model stage 'fspo_rat': /r/models/fspo_rat does not exist" in md
    assert "![win_rate_vs_shots](plots/win_rate_vs_shots.png)" in md
    assert cell_text(0.725, [0.61, 0.82]) == "72.5 ± 10.5"


def _png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_write_report_files_and_plots(report, tmp_path):
    _, r = report
    paths = write_report(tmp_path, r)
    assert json.loads((tmp_path / "report.json").read_text())["win_rate"] == r["win_rate"]
    assert (tmp_path / "report.md").read_text() == render_markdown(r)
    w, h = _png_size(paths["win_rate_by_method"])
    assert w > 600 and h > 400
    assert _png_size(paths["win_rate_vs_shots"])[0] > 600
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["win_rate_by_method.png", "win_rate_vs_shots.png"]


def test_no_sweep_no_sweep_plot(tmp_path):
    ev = EvaluateConfig(num_shots=4, shots_sweep=[])
    r = build_report(ev=ev, methods=["base"], results={Cell("base", s, 4): win_rate([(0.5, 0.5)]) for s in SPLITS},
                     skipped={}, users={s: 1 for s in SPLITS}, judge={"kind": "llm", "model": "j", "dropped": {"unparseable_label": 1},
                            "comparisons_without_vote": 0})
    paths = write_report(tmp_path, r)
    assert "win_rate_vs_shots" not in paths and r["plots"] == {"win_rate_by_method": "plots/win_rate_by_method.png"}
    md = render_markdown(r)
    assert "LLM judge `j`" in md and "dropped judgments: 1 unparseable_label" in md and "## Win rate vs number of shots" not in md


def test_report_carries_what_training_measured(tmp_path):
    import json as _json

    from fspo_ray.evaluation.report import training_lines, training_summary

    assert training_summary(tmp_path) is None  # no train job ran here
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "learning_curve.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "eval_metrics.json").write_text(_json.dumps({
        "stages": {"fspo": {"reward_accuracy": {"held_out": 0.727, "train": 0.692},
                            "reference": {"shot_reader": {"held_out": 0.879}, "shot_reader_by_shots": {"2": 0.7}}}},
        "timing": {"optimizer_share": 0.61}}))
    t = training_summary(tmp_path)
    assert t["learning_curve"] == "plots/learning_curve.png" and t["optimizer_share"] == 0.61
    md = "\n".join(training_lines(t))
    assert "| fspo | 0.692 | 0.727 | n/a |" in md and "| ↳ shot reader (same pairs) | n/a | 0.879 | n/a |" in md
    assert "![learning curve](plots/learning_curve.png)" in md
