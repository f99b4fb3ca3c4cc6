"""ServeConfig: defaults follow the run layout, bad args fail before anything starts, naming the field."""

from pathlib import Path

import pytest
import yaml

from fspo_ray.sections import ConfigError
from fspo_ray.serving.config import (
    ServeConfig,
    check_model_paths,
    load_serve_config,
    resolve_serve_prompting,
)

REPO = Path(__file__).resolve().parents[2]


def test_defaults_follow_the_run_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths: to where `serve run` starts, resolved at load
    cfg = load_serve_config({"output_dir": "runs/seed1"})
    assert cfg.personalize.persona.model == str(tmp_path / "runs/seed1/models/rat_describe")
    assert cfg.personalize.answer.model == str(tmp_path / "runs/seed1/models/fspo_rat")
    assert cfg.store.path == str(tmp_path / "runs/seed1/serve/profiles.sqlite3")
    assert cfg.personalize.persona.kind == cfg.personalize.answer.kind == "hf"


def test_deployment_options_map_to_ray_serve_keywords():
    cfg = load_serve_config({"deployments": {"answer": {"num_cpus": 0.25, "max_ongoing_requests": 4,
                                                        "max_queued_requests": 2, "env_vars": {"A": "1"},
                                                        "autoscaling": {"min_replicas": 1, "max_replicas": 3}},
                                             "answer_batching": {"max_batch_size": 4}}})
    opts = cfg.deployments.answer.serve_options("AnswerDeployment")
    assert opts == {
        "name": "AnswerDeployment",
        "ray_actor_options": {"num_cpus": 0.25, "num_gpus": 0.0, "runtime_env": {"env_vars": {"A": "1"}}},
        "max_ongoing_requests": 4,
        "max_queued_requests": 2,
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2.0,
                               "upscale_delay_s": 10.0, "downscale_delay_s": 60.0, "look_back_period_s": 30.0},
        "health_check_period_s": 10.0,
        "health_check_timeout_s": 30.0,
        "graceful_shutdown_timeout_s": 10.0,
    }
    from ray.serve.config import AutoscalingConfig

    AutoscalingConfig(**opts["autoscaling_config"])  # Ray accepts every key


@pytest.mark.parametrize(
    "args, match",
    [
        ({"bogus": 1}, r"bogus: unknown key"),
        ({"limits": {"max_tokens": "many"}}, r"limits\.max_tokens: Input should be a valid integer"),
        ({"personalize": {"persona": {"model": "m", "kind": "vllm"}, "answer": {"model": "m"}}},
         r"deployments\.persona\.num_gpus must be > 0 when personalize\.persona\.kind is 'vllm'"),
        ({"deployments": {"answer": {"max_ongoing_requests": 2}}},
         r"deployments\.answer_batching\.max_batch_size \(8\) must be <= deployments\.answer\.max_ongoing_requests \(2\)"),
        ({"limits": {"max_tokens": 64}}, r"personalize\.answer\.max_new_tokens \(128\) must be <= limits\.max_tokens \(64\)"),
        ({"limits": {"max_preferences": 10, "max_stored_preferences": 5}}, r"max_preferences \(10\) must be <= max_stored"),
        ({"deployments": {"persona": {"max_queued_requests": 0}}}, r"max_queued_requests must be -1 \(no limit\) or >= 1"),
        ({"deployments": {"persona": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}},
         r"deployments\.persona\.autoscaling: Value error, max_replicas \(2\) must be >= min_replicas \(3\)"),
        ({"store": {"kind": "custom"}}, r"store: Value error, kind 'custom' needs class_path"),
        ({"auth": {"api_key": "k", "api_key_env": "K"}}, r"set api_key or api_key_env, not both"),
    ],
)
def test_bad_args_name_the_field(args, match):
    with pytest.raises(ConfigError, match=match):
        load_serve_config(args)


def test_model_paths_are_checked_and_resolved(tmp_path, monkeypatch):
    cfg = load_serve_config({"output_dir": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match=r"personalize\.persona\.model: .*/run/models/rat_describe is not a model "
                                          r"directory \(no config.json\); train it first"):
        check_model_paths(cfg)
    for stage in ("rat_describe", "fspo_rat"):
        (tmp_path / "run" / "models" / stage).mkdir(parents=True)
        (tmp_path / "run" / "models" / stage / "config.json").write_text("{}")
    check_model_paths(cfg)
    check_model_paths(load_serve_config({"personalize": {"persona": {"model": "meta-llama/Llama-3.2-3B-Instruct"},
                                                         "answer": {"model": "meta-llama/Llama-3.2-3B-Instruct"}}}))
    monkeypatch.chdir(tmp_path)
    rel = load_serve_config({"output_dir": "run"})
    assert rel.personalize.answer.model == str(tmp_path / "run" / "models" / "fspo_rat")
    assert rel.store.path == str(tmp_path / "run" / "serve" / "profiles.sqlite3")
    hub = load_serve_config({"personalize": {"persona": {"model": "meta-llama/Llama-3.2-3B-Instruct"},
                                             "answer": {"model": "meta-llama/Llama-3.2-3B-Instruct"}}})
    assert hub.personalize.answer.model == "meta-llama/Llama-3.2-3B-Instruct"  # a hub id stays one


def test_prompt_settings_come_from_the_served_models(tmp_path):
    """N and RAT as the models were trained (their fspo_prompt.json), decided at build time for the
    ingress; an explicit contradiction fails there, naming both values."""
    import json

    for stage, contract in (("rat_describe", {"num_shots": 4, "task": "describe", "rat": False}),
                            ("fspo_rat", {"num_shots": 4, "task": "answer", "rat": True, "template": "chat"})):
        d = tmp_path / "run" / "models" / stage
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "fspo_prompt.json").write_text(json.dumps(contract))
    cfg = resolve_serve_prompting(load_serve_config({"output_dir": str(tmp_path / "run")}))
    assert (cfg.personalize.num_shots, cfg.personalize.rat) == (4, True)
    with pytest.raises(ConfigError, match=r"personalize\.num_shots=8 contradicts how .*/models/rat_describe was "
                                          r"trained \(num_shots: 4 in its fspo_prompt\.json\)"):
        resolve_serve_prompting(load_serve_config({"output_dir": str(tmp_path / "run"), "personalize": {
            "num_shots": 8, "persona": {"model": "{output_dir}/models/rat_describe"},
            "answer": {"model": "{output_dir}/models/fspo_rat"}}}))
    # the page's unpersonalized model (trained without shots or a description) resolves on its own
    from fspo_ray.personalize import resolve_prompting
    from fspo_ray.serving.app import baseline_config

    base = tmp_path / "run" / "models" / "base_sft"
    base.mkdir()
    (base / "fspo_prompt.json").write_text(json.dumps({"num_shots": 0, "task": "answer", "rat": False}))
    page = cfg.model_copy(update={"page": cfg.page.model_copy(update={"unpersonalized_model": str(base)})})
    assert resolve_prompting(baseline_config(page).personalize).rat is False
    # untrained (hub) models: the defaults
    hub = resolve_serve_prompting(load_serve_config({"personalize": {
        "persona": {"model": "org/a"}, "answer": {"model": "org/a"}}}))
    assert (hub.personalize.num_shots, hub.personalize.rat) == (8, True)


def test_api_key_from_the_environment(monkeypatch):
    cfg = load_serve_config({"auth": {"api_key_env": "FSPO_TEST_KEY"}})
    monkeypatch.delenv("FSPO_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"auth\.api_key_env: environment variable FSPO_TEST_KEY is not set"):
        cfg.auth.resolve()
    monkeypatch.setenv("FSPO_TEST_KEY", "s3cret")
    assert cfg.auth.resolve() == "s3cret"
    assert "s3cret" not in repr(load_serve_config({"auth": {"api_key": "s3cret"}}))  # SecretStr


@pytest.mark.parametrize("name", ["config.yaml", "gpu.yaml"])
def test_shipped_serve_configs_validate(name):
    data = yaml.safe_load((REPO / "serve" / name).read_text())
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(data)  # what `serve run` / `serve deploy` parse first
    (app,) = data["applications"]
    assert app["import_path"] == "fspo_ray.serving.app:build_app"
    cfg = load_serve_config(app["args"])
    assert isinstance(cfg, ServeConfig)
    kinds = {cfg.personalize.persona.kind, cfg.personalize.answer.kind}
    assert kinds == ({"hf"} if name == "config.yaml" else {"vllm"})
    for stage in ("ingress", "persona", "answer"):
        assert 0 < getattr(cfg.deployments, stage).num_cpus < (4 if name == "gpu.yaml" else 1)


def test_build_app_validates_before_anything_starts(tmp_path):
    from ray.serve import Application

    from fspo_ray.serving.app import build_app

    with pytest.raises(ConfigError, match=r"limits\.max_tokens: Input should be a valid integer"):
        build_app({"limits": {"max_tokens": "lots"}})
    with pytest.raises(ConfigError, match=r"personalize\.persona\.model: .* is not a model directory"):
        build_app({"output_dir": str(tmp_path / "no-run")})
    app = build_app({"check_model_paths": False, "store": {"kind": "sqlite", "path": str(tmp_path / "s" / "p.db")}})
    assert isinstance(app, Application)
    assert (tmp_path / "s" / "p.db").is_file()  # the store was opened (and closed) at build time
