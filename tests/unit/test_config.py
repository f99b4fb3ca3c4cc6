"""Config: YAML + overrides, and the error messages users see (pinned)."""

from pathlib import Path

import pytest
import yaml

from fspo_ray.config import ConfigError, build_config, load_config, parse_overrides, save_resolved

WORLD = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "world.yaml"


def test_world_yaml_loads_and_overrides_apply():
    cfg = load_config(WORLD, ["world.seed=7", "episodes.num_shots=4", "output_dir=/tmp/x", "world.domains=[elix]"])
    assert cfg.world.seed == 7
    assert cfg.episodes.num_shots == 4
    assert cfg.world.domains == ["elix"]
    assert cfg.output_dir == "/tmp/x"
    assert cfg.model.name_or_path == "/tmp/x/models/tiny"  # {output_dir} resolved
    assert cfg.tiny_model.output == "/tmp/x/models/tiny"


def test_run_name_placeholder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = build_config({"run_name": "abc"})
    assert cfg.output_dir == str(tmp_path / "runs/abc")


def test_parse_overrides_types():
    assert parse_overrides(["a.b=1", "a.c=0.5", "d=true", "e=[1, 2]", "f=text"]) == {
        "a": {"b": 1, "c": 0.5}, "d": True, "e": [1, 2], "f": "text"
    }


def test_missing_file_names_it():
    with pytest.raises(ConfigError, match=r"config file not found: nope\.yaml"):
        load_config("nope.yaml")


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"world\.sede: unknown key \(not in the schema; check spelling\)"):
        load_config(WORLD, ["world.sede=3"])


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match=r"trian: unknown key"):
        build_config({"trian": {"lr": 1}})


def test_wrong_type_is_named_with_value():
    with pytest.raises(ConfigError, match=r"episodes\.num_shots: Input should be a valid integer.*\(got 'many'\)"):
        load_config(WORLD, ["episodes.num_shots=many"])


def test_wrong_value_is_named():
    with pytest.raises(ConfigError, match=r"loss\.loss_type: Input should be 'ipo' or 'dpo' \(got 'kto'\)"):
        load_config(WORLD, ["loss.loss_type=kto"])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match=r"episodes: Value error, min_shots \(5\) must be <= num_shots \(4\)"):
        load_config(WORLD, ["episodes.num_shots=4", "episodes.min_shots=5"])
    with pytest.raises(ConfigError, match=r"label_smoothing applies to loss_type 'dpo' only, not 'ipo'"):
        load_config(WORLD, ["loss.loss_type=ipo", "loss.label_smoothing=0.1"])
    with pytest.raises(ConfigError, match=r"hidden_size \(250\) must be divisible by num_heads \(4\)"):
        load_config(WORLD, ["tiny_model.hidden_size=250"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match=r"override 'world\.seed' must look like key\.sub=value"):
        load_config(WORLD, ["world.seed"])


def test_every_field_has_a_description():
    from fspo_ray.config import RunConfig

    def walk(model, prefix=""):
        for name, field in model.model_fields.items():
            assert field.description, f"{prefix}{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann, f"{prefix}{name}.")

    walk(RunConfig)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(WORLD, ["world.seed=3"])
    path = save_resolved(cfg, tmp_path)
    again = build_config(yaml.safe_load(path.read_text()))
    assert again == cfg


def test_paths_are_resolved_once_at_load_for_ray_workers(tmp_path, monkeypatch):
    # Ray Train workers and Data actors run in their own directories: a relative runs/x given to
    # the driver must reach them as an absolute path, while a hub id stays untouched.
    monkeypatch.chdir(tmp_path)
    cfg = build_config({}, ["output_dir=runs/abc", "model.name_or_path={output_dir}/models/tiny",
                            "generate.llm.persona_file=p.jsonl", "evaluate.methods.fspo.model=./ckpt"])
    assert cfg.output_dir == str(tmp_path / "runs/abc")
    assert cfg.model.name_or_path == str(tmp_path / "runs/abc/models/tiny")
    assert cfg.tiny_model.output == str(tmp_path / "runs/abc/models/tiny")
    assert cfg.generate.llm.judge.model == str(tmp_path / "runs/abc/models/tiny")
    assert cfg.generate.llm.persona_file == str(tmp_path / "p.jsonl")
    assert cfg.evaluate.methods["fspo"].model == str(tmp_path / "ckpt")
    assert cfg.evaluate.methods["pref_ft"].model == "sft"  # a stage name stays a name
    assert cfg.layout.model("fspo") == tmp_path / "runs/abc/models/fspo"
    hub = build_config({}, ["model.name_or_path=meta-llama/Llama-3.2-3B-Instruct"])
    assert hub.model.name_or_path == "meta-llama/Llama-3.2-3B-Instruct"
    # resolving is idempotent: a resolved config loads back unchanged (Ray workers revalidate it)
    assert build_config(cfg.model_dump(mode="json")) == cfg


def test_a_metric_sink_that_is_on_and_missing_fails_before_any_worker(monkeypatch):
    # The worker imports its sinks without a fallback: a missing package is named at submit time.
    import importlib.util

    from fspo_ray.training.config import check_metric_sinks

    cfg = build_config({}, ["train.tensorboard=true", "train.wandb=true"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train\.wandb is on but the wandb package is not installed: pip install "
                                          r"wandb, or set train\.wandb=false"):
        check_metric_sinks(cfg.train)
    check_metric_sinks(build_config({}, ["train.wandb=false"]).train)  # tensorboard: the report extra has it
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"train\.tensorboard is on but the tensorboard package"):
        check_metric_sinks(build_config({}).train)


def test_one_section_of_a_run_file_is_read_by_its_owner_alone(tmp_path):
    # A reader that needs one section (the page needs the run's world) validates it with the owning
    # package's schema, without the run config and so without the stage packages.
    from fspo_ray.sections import load_section
    from fspo_ray.world.config import WorldConfig

    path = save_resolved(load_config(WORLD, ["world.seed=5"]), tmp_path)
    world = load_section(path, "world", WorldConfig)
    assert world.seed == 5 and world.rendering == "compact"
    path.write_text(yaml.safe_dump({"world": {"seed": "x"}, "train": {"anything": 1}}))
    with pytest.raises(ConfigError, match=r"invalid world section of .*:\n  seed: Input should be a valid integer"):
        load_section(path, "world", WorldConfig)


def test_a_config_from_an_earlier_version_is_read_with_todays_keys(caplog):
    # Existing run directories hold resolved configs written before the engines layer: still readable.
    old = {"model": {"trust_remote_code": False},
           "generate": {"llm": {"generators": [{"name": "a", "engine": "vllm"}, {"name": "b", "engine": "hf"}],
                                "judge": {"engine": "vllm"}},
                        "report": {"similarity_questions": 3, "embedder": {"name": "BGE-M3", "batch_size": 8}}},
           "evaluate": {"inference": {"engine": "hf", "pool": "shared"}, "judge": {"llm": {"engine": "hf"}}}}
    with caplog.at_level("WARNING"):
        cfg = build_config(old)
    assert [g.kind for g in cfg.generate.llm.generators] == ["vllm", "hf"] and cfg.generate.llm.judge.kind == "vllm"
    assert (cfg.embedder.name, cfg.embedder.batch_size) == ("BGE-M3", 8) and cfg.generate.report.similarity_questions == 3
    assert cfg.evaluate.inference.pool == "shared" and cfg.evaluate.judge.llm.kind == "hf"
    assert "generate.llm.generators[0].engine -> kind" in caplog.text and "trust_remote_code" in caplog.text
    assert old["generate"]["llm"]["judge"] == {"engine": "vllm"}  # the caller's dict is left as it was
