"""jobs.evaluate on a local Ray cluster: tiny stand-in models under every stage name, the
report's keys and numbers, missing-method skip and fail modes, and bad input at submit time.

Every stage directory holds a copy of the same untrained tiny model, so answers that share
a prompt are identical; with a noiseless judge that pins exact numbers (ties -> 0.5, equal
methods -> equal win rates) without any training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fspo_ray.config import build_config
from fspo_ray.modeling import build_tiny_from_config
from tests.world_fixtures import write_world_prefs

CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "world.yaml"
STAGES = ("base_sft", "sft", "fspo", "ipo_no_context", "rat_describe_sft", "rat_describe", "fspo_rat")
SPLITS = ["train", "held_out", "interpolated"]
METHODS = ["base", "few_shot", "pref_ft", "ipo", "fspo", "fspo_rat", "oracle"]


def _cfg(out: Path, *overrides: str):
    data = {
        "run_name": "t",
        "output_dir": str(out),
        "world": {"users_train": 3, "users_held_out": 3, "users_interpolated": 3, "prefs_per_user": 8},
        "tiny_model": {"vocab_size": 400, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1,
                       "num_heads": 2, "num_kv_heads": 2, "corpus_sentences": 1500},
        "evaluate": {"users_per_split": 2, "questions_per_user": 1, "num_shots": 2, "shots_sweep": [1, 2],
                     "judge": {"position_bias": 0.0, "noise": 0.0},
                     "inference": {"max_new_tokens": 8, "describe_max_new_tokens": 12}},
    }
    return build_config(data, list(overrides))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """Prefs and the tiny model under every stage name, built once; tests copy what they need."""
    root = tmp_path_factory.mktemp("eval-base")
    cfg = _cfg(root)
    write_world_prefs(cfg)
    tiny = build_tiny_from_config(cfg)
    for st in STAGES:
        shutil.copytree(tiny, root / "models" / st)
    return root


def _run_dir(base: Path, tmp_path: Path, skip: tuple[str, ...] = ()) -> Path:
    out = tmp_path / "run"
    shutil.copytree(base / "prefs", out / "prefs")
    for st in STAGES:
        if st not in skip:
            (out / "models").mkdir(parents=True, exist_ok=True)
            (out / "models" / st).symlink_to(base / "models" / st)
    return out


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_end_to_end(ray_cluster, base_run, tmp_path):
    from jobs.evaluate import evaluate

    out = _run_dir(base_run, tmp_path)
    returned = evaluate(_cfg(out))
    r = json.loads((out / "report.json").read_text())
    assert r == json.loads(json.dumps(returned))
    assert r["methods"] == METHODS and r["splits"] == SPLITS and r["skipped"] == {}
    assert r["users"] == {s: 2 for s in SPLITS} and r["judge"] == {"kind": "world", "position_bias": 0.0, "noise": 0.0}
    for m in METHODS:
        assert list(r["win_rate"][m]) == SPLITS
        for s in SPLITS:
            w, (lo, hi) = r["win_rate"][m][s], r["ci95"][m][s]
            assert 0.0 <= lo <= w <= hi <= 1.0 and 0.0 < r["p_value"][m][s] <= 1.0
            assert r["n"][m][s] == 2 and r["counts"][m][s]["judgments"] == 4
    # Identical weights: the base answer against itself, and ipo (same prompt, no context), tie
    # everywhere; few_shot, pref_ft and fspo see the same prompt, so they score the same.
    for s in SPLITS:
        assert r["win_rate"]["base"][s] == r["win_rate"]["ipo"][s] == 0.5
        assert r["counts"]["base"][s] == {"wins": 0, "ties": 4, "losses": 0, "judgments": 4}
        assert r["win_rate"]["few_shot"][s] == r["win_rate"]["pref_ft"][s] == r["win_rate"]["fspo"][s]
    # The sweep: methods with user context, N = 1 and 2 on held-out users; N = 2 is the main table's.
    assert set(r["win_rate_by_shots"]) == {"few_shot", "pref_ft", "fspo", "fspo_rat", "oracle"}
    for m, by_n in r["win_rate_by_shots"].items():
        assert list(by_n) == ["1", "2"] and by_n["2"] == r["win_rate"][m]["held_out"]
    # 14 descriptions (fspo_rat: 6 users at N=2 + 2 at N=1; stage 1 at N=2: 6; stage 2 at N=2 is
    # fspo_rat's) and 52 answers (base 6, ipo 6, five methods with context x (6 + 2)).
    assert r["generation"]["requests"] == 14 + 52 and r["generation"]["errors"] == 0
    dq = r["description_quality"]
    assert dq["before"]["stage"] == "rat_describe_sft" and dq["after"]["stage"] == "rat_describe"
    assert dq["before"]["users"]["all"] == 6
    for when in ("before", "after"):
        assert -1.0 <= dq[when]["similarity"]["all"] <= 1.0 and 0.0 <= dq[when]["axes_recovered"]["all"] <= 1.0
    assert dq["before"]["similarity"] == pytest.approx(dq["after"]["similarity"])  # same weights
    # the claims, measured: identical models tie, so "fspo beats few_shot" does not hold, by exactly 0
    goals = {g["claim"]: g for g in r["goals"]}
    g = goals["fspo beats few_shot on held-out users"]
    assert g["holds"] is False and g["difference"] == {"mean": 0.0, "ci95": [0.0, 0.0], "n": 2}
    assert goals["fspo win rate rises with the number of shots (held-out users)"]["by_shots"].keys() == {"1", "2"}
    assert all(_is_png(out / p) for p in r["plots"].values()) and len(r["plots"]) == 2
    md = (out / "report.md").read_text()
    assert "| Method | Trained users | Held-out users | Interpolated users |" in md
    assert "| base | 50.0 ± " in md and "## RAT description quality" in md


def test_missing_method_is_skipped_with_its_reason(ray_cluster, base_run, tmp_path):
    from jobs.evaluate import evaluate

    out = _run_dir(base_run, tmp_path, skip=("fspo_rat",))
    cfg = _cfg(out, "evaluate.only=[fspo,fspo_rat,oracle]", "evaluate.shots_sweep=[]",
               "evaluate.describe_before=null", "evaluate.describe_after=null", "evaluate.splits=[held_out]",
               "evaluate.inference.pool=shared", "evaluate.inference.concurrency=2")  # one pool, both models
    r = evaluate(cfg)
    reason = f"model stage 'fspo_rat': {out}/models/fspo_rat does not exist"
    assert r["skipped"] == {"fspo_rat": reason, "oracle": reason}
    assert r["methods"] == ["base", "fspo"] and list(r["win_rate"]) == ["base", "fspo"]
    assert r["win_rate_by_shots"] == {} and list(r["plots"]) == ["win_rate_by_method"]
    assert r["description_quality"] is None and r["generation"]["requests"] == 2 + 2  # base and fspo, 2 users
    assert f"- `oracle`: {reason}" in (out / "report.md").read_text()


@pytest.fixture
def no_ray(monkeypatch):
    """Bad input must fail before Ray starts: starting it is a test failure."""
    import jobs.evaluate

    def refuse(*a, **k):
        raise AssertionError("init_ray was called: the error came too late")

    monkeypatch.setattr(jobs.evaluate, "init_ray", refuse)


def _main(out: Path, *overrides: str) -> int:
    """`python -m jobs.evaluate --config world.yaml ...` in-process; returns the exit code."""
    from jobs.evaluate import main

    args = [f"output_dir={out}", "evaluate.users_per_split=2", "evaluate.questions_per_user=1",
            "evaluate.num_shots=2", "evaluate.shots_sweep=[1,2]"]
    return main(["--config", str(CONFIG), *args, *overrides])


def test_missing_method_fails_early_when_configured(base_run, tmp_path, capsys, no_ray):
    out = _run_dir(base_run, tmp_path, skip=("fspo_rat",))
    assert _main(out, "evaluate.on_missing=fail") == 2
    err = capsys.readouterr().err
    assert (f"fspo evaluate: error: evaluate.methods.fspo_rat: model stage 'fspo_rat': {out}/models/fspo_rat "
            "does not exist; train that stage first") in err
    assert not (out / "report.json").exists()


def test_nonexistent_checkpoint_is_a_clear_error(base_run, tmp_path, capsys, no_ray):
    out = _run_dir(base_run, tmp_path)
    assert _main(out, "evaluate.methods.fspo.model=/nonexistent/ckpt") == 2
    assert "evaluate.methods.fspo.model: checkpoint /nonexistent/ckpt does not exist" in capsys.readouterr().err


def test_split_with_no_users_is_a_clear_error(base_run, tmp_path, capsys, no_ray):
    out = _run_dir(base_run, tmp_path)
    shutil.rmtree(out / "prefs" / "split=interpolated")
    assert _main(out) == 2
    err = capsys.readouterr().err
    assert f"split 'interpolated' has no users in {out}/prefs: drop it from evaluate.splits" in err
    assert "world.users_interpolated > 0" in err


def test_human_eval_kit_end_to_end(ray_cluster, base_run, tmp_path, capsys):
    """Template -> a participant's marks -> blind comparisons generated on Ray -> marks -> scores."""
    import csv

    from jobs import human_eval_export, human_eval_score

    out = _run_dir(base_run, tmp_path)
    kit = tmp_path / "kit"
    common = [f"output_dir={out}", "evaluate.human.methods=[fspo]", "evaluate.human.template_pairs=3",
              "evaluate.human.questions_per_participant=2", "evaluate.inference.pool=shared",
              "evaluate.inference.max_new_tokens=8"]
    assert human_eval_export.main(["template", "--config", str(CONFIG), "--participants", "2", "--out", str(kit),
                                   *common]) == 0
    rows = list(csv.DictReader((kit / "preferences_template.csv").open()))
    assert len(rows) == 6
    for r in rows:
        r["preferred"] = "A"
    with (kit / "filled.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert human_eval_export.main(["comparisons", "--config", str(CONFIG), "--preferences", str(kit / "filled.csv"),
                                   "--out", str(kit), *common]) == 0
    items = list(csv.DictReader((kit / "comparisons.csv").open()))
    key = {json.loads(line)["item_id"]: json.loads(line) for line in (kit / "key.jsonl").read_text().splitlines()}
    assert len(items) == 2 * 2 and set(key) == {it["item_id"] for it in items}
    assert all(it["question"] and it["preferred"] == "" for it in items)  # (an untrained model may answer "")
    assert {k["participant_id"] for k in key.values()} == {"p000", "p001"} and {k["method"] for k in key.values()} == {"fspo"}
    for it in items:  # this participant always prefers the fspo answer
        it["preferred"] = str(key[it["item_id"]]["method_position"])
    with (kit / "answers.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(items[0]))
        w.writeheader()
        w.writerows(items)
    capsys.readouterr()
    assert human_eval_score.main(["--answers", str(kit / "answers.csv"), "--key", str(kit / "key.jsonl")]) == 0
    scores = json.loads((kit / "human_eval_scores.json").read_text())
    assert scores["methods"]["fspo"]["win_rate"] == 1.0 and scores["methods"]["fspo"]["p_value"] == 1 / 16
    assert "| fspo | 100.0 |" in capsys.readouterr().out


def test_llm_judge_end_to_end_both_orders_and_dropped_replies(ray_cluster, base_run, tmp_path):
    """The LLM judge on the hf engine (the tiny model as judge): every comparison is judged in both
    orders; a reply the label parser cannot read is a dropped judgment with its reason, never a tie."""
    from jobs.evaluate import evaluate

    out = _run_dir(base_run, tmp_path)
    judge_model = str(base_run / "models" / "base_sft")
    r = evaluate(_cfg(out, "evaluate.judge.kind=llm", f"evaluate.judge.llm.model={judge_model}",
                      "evaluate.judge.llm.max_new_tokens=4", "evaluate.only=[fspo]", "evaluate.shots_sweep=[]",
                      "evaluate.describe_before=null", "evaluate.describe_after=null", "evaluate.splits=[held_out]"))
    judge = r["judge"]
    assert judge["kind"] == "llm" and judge["model"] == judge_model
    # 2 users x 1 question per judged method; a comparison left with no vote is not in n
    comparisons = sum(r["n"][m]["held_out"] for m in r["n"]) + judge["comparisons_without_vote"]
    assert comparisons >= 2
    counted = sum(r["counts"][m]["held_out"]["judgments"] for m in r["counts"])
    assert counted + sum(judge["dropped"].values()) == 2 * comparisons  # every comparison in both orders
    assert set(judge["dropped"]) <= {"unparseable_label", "engine_error"}
    md = (out / "report.md").read_text()
    assert ("dropped judgments" in md) == bool(judge["dropped"])
