"""The prompt travels with the model: a stage trained with the chat template at N = 2 is then
evaluated and served with exactly those prompts, taken from its fspo_prompt.json, although
episodes.num_shots (3) and the defaults (markdown, N = 8) say otherwise; a setting that
contradicts the contract is refused before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from fspo_ray.episodes import Preference
from fspo_ray.modeling import build_tiny_from_config
from fspo_ray.sections import ConfigError
from tests.ray.helpers import running_app, serve_args, tiny_train_cfg
from tests.world_fixtures import write_world_prefs

pytestmark = pytest.mark.timeout(600)

CHAT_USER_TURN = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n# Example 1\n"
STAGE = {"name": "fspo", "kind": "preference", "init_from": "model", "num_shots": 2, "lr": 3e-3, "warmup_steps": 1,
         "optimizer": "adamw", "beta": 0.1, "max_episodes": 8, "global_batch_size": 4, "micro_batch_size": 4}


def _cfg(out: Path, *overrides: str):
    cfg = tiny_train_cfg(out, "contract", num_workers=1, eval_users_per_split=2, stages=[STAGE])
    from fspo_ray.config import build_config

    data = cfg.model_dump(mode="json")
    data["episodes"] |= {"template": "chat", "num_shots": 3, "queries_per_episode": 1}
    data["evaluate"] = {"methods": {"base": {"model": str(out / "models" / "tiny"), "context": "none"}},
                        "only": ["fspo"], "shots_sweep": [], "describe_before": None, "describe_after": None,
                        "users_per_split": 1, "questions_per_user": 1, "splits": ["held_out"]}
    return build_config(data, list(overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_cluster):
    from fspo_ray.training.run import run_training

    out = tmp_path_factory.mktemp("contract")
    cfg = _cfg(out)
    write_world_prefs(cfg)
    build_tiny_from_config(cfg)  # byte-level BPE with a Llama-3-style chat template
    run_training(cfg)
    return out


def test_the_trained_contract_says_chat_and_two_shots(trained):
    contract = json.loads((trained / "models" / "fspo" / "fspo_prompt.json").read_text())
    assert (contract["template"], contract["num_shots"], contract["rat"]) == ("chat", 2, False)


def test_evaluation_prompts_the_engine_as_the_model_was_trained(trained):
    from fspo_ray.evaluation import inference
    from fspo_ray.evaluation.plan import answer_request
    from fspo_ray.evaluation.run import check_inputs

    plan = check_inputs(_cfg(trained))
    ev = plan.evaluate
    assert ev.num_shots == 2  # the trained N, not episodes.num_shots (3)
    user = plan.users["held_out"][0]
    request = answer_request("fspo", plan.methods.methods["fspo"], user, 0, ev.num_shots, None)
    out = inference.generate([request], plan.methods.models, ev.inference, ev.max_shots)[request["request_id"]]
    prompt = out["prompt"]  # what the Ray Data engine stage was given
    assert prompt.startswith(CHAT_USER_TURN) and out["error"] == ""
    assert prompt.count("# Example ") == 2 and out["shots_used"] == 2
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n## Preferred Response \n")
    with pytest.raises(ConfigError, match=r"evaluate\.num_shots=3 contradicts how .*/models/fspo was trained "
                                          r"\(num_shots: 2 in its fspo_prompt\.json\)"):
        check_inputs(_cfg(trained, "evaluate.num_shots=3"))
    assert check_inputs(_cfg(trained, "evaluate.num_shots=3", "evaluate.override_prompt_contract=true")).evaluate.num_shots == 3


def test_serving_prompts_the_engine_as_the_model_was_trained(trained, tmp_path):
    from fspo_ray.engines.local import TokenizerOnly
    from fspo_ray.personalize import Personalizer
    from fspo_ray.serving.app import build_app
    from fspo_ray.serving.config import load_serve_config, resolve_serve_prompting

    model = str(trained / "models" / "fspo")
    args = serve_args(model, "fspo-contract", tmp_path / "profiles.sqlite3", "k", num_shots=2, max_ongoing=4,
                      max_queued=4, max_batch=2, page={"enabled": False})
    del args["personalize"]["num_shots"]  # as serve/config.yaml: the models say
    cfg = resolve_serve_prompting(load_serve_config(args))
    assert (cfg.personalize.num_shots, cfg.personalize.rat) == (2, False)
    with pytest.raises(ConfigError, match=r"personalize\.template='markdown' contradicts .*\(template: 'chat'"):
        build_app(args | {"personalize": args["personalize"] | {"template": "markdown"}})
    prefs = [{"question": f"what should I cook {i}?", "chosen": f"a short recipe {i}", "rejected": "a long essay"}
             for i in range(3)]
    with running_app(args, "contract") as url, httpx.Client(base_url=url, timeout=120,
                                                             headers={"Authorization": "Bearer k"}) as client:
        r = client.post("/v1/personalize", json={"user_id": "u", "question": "what is for dinner?", "preferences": prefs})
        assert r.status_code == 200, r.text
        body = r.json()
    assert body["preferences_used"] == 2  # the trained N of the last preferences
    # The prompt the answer replica's engine got: chat-rendered, the two newest shots, no description
    # block (the model was trained without one): its token count is the served prompt_tokens.
    tok = TokenizerOnly(model)
    local = Personalizer(tok, tok, cfg.personalize)
    shots = [Preference(**p) for p in prefs]
    prompt, n_tokens, kept = local.answer_prompt(shots, body["persona"], "what is for dinner?")
    assert prompt.startswith(CHAT_USER_TURN) and kept == 2 and "## User Description" not in prompt
    assert body["usage"]["prompt_tokens"] == n_tokens
    markdown = Personalizer(tok, tok, cfg.personalize.model_copy(update={"template": "markdown",
                                                                         "override_prompt_contract": True}))
    assert markdown.answer_prompt(shots, None, "what is for dinner?")[1] != n_tokens  # the count tells them apart
