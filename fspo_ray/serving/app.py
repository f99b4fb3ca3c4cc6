"""`build_app(args) -> Application`: the builder serve/config.yaml names by import_path.

    serve run serve/config.yaml

The args are validated by ServeConfig (and model paths and the store checked) before any
replica starts; a bad config fails with the field named.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from fspo_ray.serving.config import (
    ServeConfig,
    check_model_paths,
    load_serve_config,
    resolve_serve_prompting,
)
from fspo_ray.serving.deployments import AnswerDeployment, PersonaDeployment
from fspo_ray.serving.ingress import Ingress
from fspo_ray.serving.page import build_pool
from fspo_ray.serving.store import make_store


def build_app(args: dict[str, Any] | ServeConfig | None) -> Application:
    cfg = load_serve_config(args)
    check_model_paths(cfg)
    cfg = resolve_serve_prompting(cfg)  # N and RAT as the models were trained; a contradiction fails here
    api_key = cfg.auth.resolve()
    make_store(cfg.store.kind, cfg.store.path, cfg.store.class_path).close()  # fail now on an unusable path
    if cfg.page.enabled:
        build_pool(cfg.page, cfg.limits.max_text_chars)  # a bad pool file fails now, naming its line
    d = cfg.deployments
    persona = PersonaDeployment.options(**d.persona.serve_options("PersonaDeployment")).bind(cfg)
    answer = AnswerDeployment.options(**d.answer.serve_options("AnswerDeployment")).bind(cfg)
    baseline = None
    if cfg.page.enabled and cfg.page.unpersonalized_model is not None:
        baseline = AnswerDeployment.options(**d.baseline.serve_options("BaselineDeployment")).bind(baseline_config(cfg))
    return Ingress.options(**d.ingress.serve_options("Ingress")).bind(persona, answer, cfg, api_key, baseline)


def baseline_config(cfg: ServeConfig) -> ServeConfig:
    """The config an AnswerDeployment serving the unpersonalized model reads: its engine is the answer
    stage's with the model swapped, its resources are deployments.baseline."""
    engine = cfg.personalize.answer.model_copy(update={"model": cfg.page.unpersonalized_model})
    # Its prompts carry no user context at all: RAT is as that model was trained (decided again).
    personalize = cfg.personalize.model_copy(update={"answer": engine, "rat": None})
    deployments = cfg.deployments.model_copy(update={"answer": cfg.deployments.baseline})
    return cfg.model_copy(update={"personalize": personalize, "deployments": deployments})
