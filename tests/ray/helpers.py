"""Builders the Ray-layer tests share: the tiny training config and the tiny Serve app."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path

from fspo_ray.config import RunConfig, build_config

FSPO_STAGE = {"name": "fspo", "kind": "preference", "init_from": "model", "lr": 3e-3, "warmup_steps": 1,
              "optimizer": "adamw", "epochs": 2, "beta": 0.1}


def tiny_train_cfg(out: Path, run_name: str = "t", **train) -> RunConfig:
    """The known-good tiny setup: 2 workers, ZeRO-2, 8 pairs a step, a checkpoint every 2 steps.
    Keyword arguments override `train` fields (`stages` included)."""
    stages = train.pop("stages", [FSPO_STAGE])
    return build_config({
        "run_name": run_name,
        "output_dir": str(out),
        "world": {"users_train": 12, "users_held_out": 3, "users_interpolated": 3, "prefs_per_user": 6},
        "tiny_model": {"vocab_size": 400, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1,
                       "num_heads": 2, "num_kv_heads": 2, "corpus_sentences": 1500},
        "episodes": {"num_shots": 2, "min_shots": 1, "max_length": 384, "queries_per_episode": 2},
        "train": {"num_workers": 2, "global_batch_size": 8, "micro_batch_size": 2, "checkpoint_every": 2,
                  "cpus_per_worker": 1, "eval_users_per_split": 3,
                  "max_failures": 1, "tensorboard": False, "stages": stages} | train,
    })


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_args(model: str, model_id: str, store: Path, api_key: str, *, num_shots: int, max_ongoing: int,
               max_queued: int, max_batch: int, **extra) -> dict:
    """build_app arguments for one tiny model serving both stages, health-checked every second."""
    small = {"num_cpus": 0.25, "max_ongoing_requests": max_ongoing, "max_queued_requests": max_queued,
             "health_check_period_s": 1}
    return {
        "model_id": model_id,
        "personalize": {"num_shots": num_shots, "persona": {"model": model, "max_new_tokens": 6},
                        "answer": {"model": model, "max_new_tokens": 8}},
        "deployments": {
            "ingress": {"num_cpus": 0.1, "max_ongoing_requests": 100, "max_queued_requests": 100,
                        "health_check_period_s": 1},
            "persona": small, "answer": small,
            "persona_batching": {"max_batch_size": max_batch}, "answer_batching": {"max_batch_size": max_batch},
        },
        "store": {"kind": "sqlite", "path": str(store)},
        "auth": {"api_key": api_key},
    } | extra


@contextmanager
def running_app(args: dict, name: str):
    """Serve `args` on a free local port; yields the base URL; tears Serve down after."""
    from ray import serve

    from fspo_ray.serving.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name=name, route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.delete(name)
        serve.shutdown()  # the next module starts Serve with its own HTTP options
