"""Smoke test of bench/learning_probe.py: a tiny world, both stages, the curve and the RESULT line."""

import json

from bench.learning_probe import main


def test_learning_probe_smoke(capsys, tmp_path):
    main(["--base-steps", "2", "--pref-steps", "4", "--eval-every", "2", "--eval-shots", "0", "2", "--threads", "1",
          "--out", str(tmp_path),
          "world.users_train=8", "world.users_held_out=2", "world.users_interpolated=2", "world.prefs_per_user=12",
          "tiny_model.hidden_size=16", "tiny_model.intermediate_size=32", "tiny_model.num_layers=1",
          "tiny_model.num_heads=2", "tiny_model.num_kv_heads=2", "train.eval_users_per_split=2"])
    result = [line for line in capsys.readouterr().out.splitlines() if line.startswith("RESULT")]
    assert len(result) == 1
    by_seed = json.loads(result[0].removeprefix("RESULT "))["by_seed"]
    assert set(by_seed) == {"0"} and 0 <= by_seed["0"]["final"] <= 1 and 0.5 <= by_seed["0"]["shot_reader"] <= 1
    saved = json.loads((tmp_path / "learning_probe.json").read_text())["seeds"][0]
    assert [p["step"] for p in saved["curve"]] == [0, 2, 4]
    assert {"held_out", "interpolated", "held_out@0", "held_out@2"} <= set(saved["curve"][-1])
    assert saved["reference"]["held_out@0"]["shot_reader"] == 0.5
