"""Smoke test of bench/learning_probe.py: every stage runs and it ends with a RESULT line."""

import json

from bench.learning_probe import main


def test_learning_probe_smoke(capsys, tmp_path):
    main(["--hidden", "32", "--layers", "1", "--users", "4", "--prefs", "4", "--shots", "2", "--eval-users", "2",
          "--bs", "4", "--corpus-sentences", "300", "--threads", "1", "--workdir", str(tmp_path)])
    result = [line for line in capsys.readouterr().out.splitlines() if line.startswith("RESULT")]
    assert len(result) == 1
    acc = json.loads(result[0].removeprefix("RESULT "))["reward_accuracy"]
    assert set(acc) == {"train", "held_out", "interpolated"} and all(0 <= v <= 1 for v in acc.values())
