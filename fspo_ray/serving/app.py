"""`build_app(args) -> Application`: the builder serve/config.yaml names by import_path.

    serve run serve/config.yaml

The args are validated by ServeConfig (and model paths and the store checked) before any
replica starts; a bad config fails with the field named.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from fspo_ray.serving.config import ServeConfig, check_model_paths, load_serve_config, resolve_paths
from fspo_ray.serving.deployments import AnswerDeployment, PersonaDeployment
from fspo_ray.serving.ingress import Ingress
from fspo_ray.serving.store import make_store


def build_app(args: dict[str, Any] | ServeConfig | None) -> Application:
    cfg = resolve_paths(load_serve_config(args))
    check_model_paths(cfg)
    api_key = cfg.auth.resolve()
    make_store(cfg.store.kind, cfg.store.path, cfg.store.class_path).close()  # fail now on an unusable path
    d = cfg.deployments
    persona = PersonaDeployment.options(**d.persona.serve_options("PersonaDeployment")).bind(cfg)
    answer = AnswerDeployment.options(**d.answer.serve_options("AnswerDeployment")).bind(cfg)
    return Ingress.options(**d.ingress.serve_options("Ingress")).bind(persona, answer, cfg, api_key)
