"""ServeConfig: the one schema a Serve YAML's `args` must satisfy before anything starts.

Same conventions as the run config (fspo_ray/sections.py): extra="forbid", a description on every
field, cross-field checks in one validator per model, errors that name the field. Paths are
resolved once, at load, by the run layout's rule (fspo_ray/layout.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator

from fspo_ray.layout import absolute, looks_local, resolve_path
from fspo_ray.personalize import PersonalizeConfig, StageEngineConfig, resolve_prompting
from fspo_ray.sections import ConfigError, Section, format_validation_error
from fspo_ray.serving.page import PageConfig


class AutoscalingOptions(Section):
    """Ray Serve `autoscaling_config` for one deployment (keys as Ray 2.60 names them)."""

    min_replicas: int = Field(1, ge=1, description="Replicas kept up at all times.")
    initial_replicas: int | None = Field(None, ge=1, description="Replicas at deploy time (unset: min_replicas).")
    max_replicas: int = Field(1, ge=1, description="Most replicas the autoscaler may start.")
    target_ongoing_requests: float = Field(2.0, gt=0.0, description="Ongoing requests per replica the autoscaler aims for.")
    upscale_delay_s: float = Field(10.0, ge=0.0, description="Load must stay high this long before scaling up.")
    downscale_delay_s: float = Field(60.0, ge=0.0, description="Load must stay low this long before scaling down.")
    look_back_period_s: float = Field(
        30.0, gt=10.0, description="Window the request metrics are averaged over (Ray wants it above its 10 s metrics interval)."
    )

    @model_validator(mode="after")
    def _check(self) -> AutoscalingOptions:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError(
                f"initial_replicas ({self.initial_replicas}) must lie in [min_replicas, max_replicas] "
                f"= [{self.min_replicas}, {self.max_replicas}]"
            )
        return self


class DeploymentOptions(Section):
    """Resources, admission limits and health checks of one deployment."""

    num_cpus: float = Field(0.5, ge=0.0, description="CPUs each replica asks Ray for (fractions share a core).")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs each replica asks Ray for (fractions share a GPU).")
    max_ongoing_requests: int = Field(8, ge=1, description="Requests a replica works on at once.")
    max_queued_requests: int = Field(
        16, ge=-1, description="Requests queued per caller when replicas are full; beyond it: 503. -1 = no limit."
    )
    autoscaling: AutoscalingOptions = Field(default_factory=AutoscalingOptions, description="Autoscaling bounds.")
    health_check_period_s: float = Field(10.0, gt=0.0, description="Seconds between check_health calls.")
    health_check_timeout_s: float = Field(30.0, gt=0.0, description="A check_health slower than this fails.")
    graceful_shutdown_timeout_s: float = Field(10.0, ge=0.0, description="Wait for in-flight requests on shutdown.")
    env_vars: dict[str, str] = Field(default_factory=dict, description="Environment variables of each replica.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each replica asks for, e.g. {group_gpu_serve: 0.01} "
        "to keep it on the node group that advertises it (cluster/ gives every group one)."
    )
    max_replicas_per_node: int | None = Field(
        None, ge=1, le=100, description="At most this many replicas on one node (1: a lost node takes one replica "
        "of this deployment with it). Unset: no limit."
    )

    @model_validator(mode="after")
    def _check(self) -> DeploymentOptions:
        if self.max_queued_requests == 0:
            raise ValueError("max_queued_requests must be -1 (no limit) or >= 1 (Ray Serve rejects 0)")
        return self

    def serve_options(self, name: str) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options(...)`."""
        actor: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.env_vars:
            actor["runtime_env"] = {"env_vars": dict(self.env_vars)}
        if self.resources:
            actor["resources"] = dict(self.resources)
        placement = {} if self.max_replicas_per_node is None else {"max_replicas_per_node": self.max_replicas_per_node}
        return dict(
            **placement,
            name=name,
            ray_actor_options=actor,
            max_ongoing_requests=self.max_ongoing_requests,
            max_queued_requests=self.max_queued_requests,
            autoscaling_config=self.autoscaling.model_dump(exclude_none=True),
            health_check_period_s=self.health_check_period_s,
            health_check_timeout_s=self.health_check_timeout_s,
            graceful_shutdown_timeout_s=self.graceful_shutdown_timeout_s,
        )


class BatchingOptions(Section):
    """Dynamic batching of non-streamed generations (serving.batching.Batcher)."""

    max_batch_size: int = Field(8, ge=1, description="Requests generated together in one engine call.")
    batch_wait_timeout_s: float = Field(
        0.005, ge=0.0, description="How long a partial batch waits for more (requests that queued while the "
        "previous batch ran join it without waiting)."
    )


class DeploymentsConfig(Section):
    ingress: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(num_cpus=0.25, max_ongoing_requests=64, max_queued_requests=128),
        description="The FastAPI ingress: light, async; it mostly waits on the two stages.",
    )
    persona: DeploymentOptions = Field(default_factory=DeploymentOptions, description="PersonaDeployment (stage 1).")
    answer: DeploymentOptions = Field(default_factory=DeploymentOptions, description="AnswerDeployment (stage 2).")
    baseline: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(num_cpus=0.25),
        description="BaselineDeployment: the page's unpersonalized answer; deployed only when "
        "page.unpersonalized_model is set (it batches like the answer stage).",
    )
    persona_batching: BatchingOptions = Field(default_factory=BatchingOptions, description="Stage 1 batching.")
    answer_batching: BatchingOptions = Field(default_factory=BatchingOptions, description="Stage 2 batching.")


class LimitsConfig(Section):
    """Request limits; a request over one gets 400/413 stating the limit."""

    max_preferences: int = Field(32, ge=1, description="Preferences one request may carry.")
    max_stored_preferences: int = Field(256, ge=1, description="Preferences kept per user; the oldest are dropped.")
    max_text_chars: int = Field(4000, ge=1, description="Characters per question, chosen, rejected or message.")
    max_messages: int = Field(32, ge=1, description="Messages per chat completion request.")
    max_tokens: int = Field(512, ge=1, description="Largest max_tokens a request may ask for.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body (413 beyond).")

    @model_validator(mode="after")
    def _check(self) -> LimitsConfig:
        if self.max_preferences > self.max_stored_preferences:
            raise ValueError(
                f"max_preferences ({self.max_preferences}) must be <= max_stored_preferences ({self.max_stored_preferences})"
            )
        return self


class CacheConfig(Section):
    """Persona cache: user + hash of the preferences -> description, skipping stage 1 on a hit."""

    max_entries: int = Field(4096, ge=0, description="Entries per ingress replica (LRU beyond); 0 disables the cache.")
    ttl_s: float = Field(600.0, gt=0.0, description="Seconds an entry lives.")
    sweep_interval_s: float = Field(
        1.0, gt=0.0, description="How often each ingress replica drops entries of users deleted through another replica."
    )


class StoreConfig(Section):
    """Per-user profile store (preferences from feedback)."""

    kind: Literal["sqlite", "postgres", "memory", "custom"] = Field(
        "sqlite", description="'sqlite': a file on `path` (survives replica restarts; one node, one writer); "
        "'postgres': a PostgreSQL server at `path` that every replica on every node shares (survives a lost "
        "node); 'memory': per replica, lost on restart (tests); 'custom': `class_path`."
    )
    path: str = Field(
        "{output_dir}/serve/profiles.sqlite3",
        description="sqlite: the database file. postgres: a libpq connection string or URI without a password, "
        "e.g. 'postgresql://fspo@db.internal:5432/fspo' (libpq reads the password from PGPASSWORD or ~/.pgpass).",
    )
    class_path: str | None = Field(None, description="custom: 'package.module:Class', built as Class(path).")

    @model_validator(mode="after")
    def _check(self) -> StoreConfig:
        if self.kind == "postgres":
            if self.path.endswith(".sqlite3") or not ("://" in self.path or "=" in self.path):
                raise ValueError(f"kind 'postgres' needs path as a connection string, e.g. "
                                 f"'postgresql://fspo@db.internal:5432/fspo' (got {self.path!r})")
            if _has_password(self.path):
                raise ValueError("path: a postgres connection string must not hold the password (it would sit in "
                                 "the Serve config); set PGPASSWORD in the replicas' environment or use ~/.pgpass")
        if self.kind == "custom" and (not self.class_path or ":" not in self.class_path):
            raise ValueError("kind 'custom' needs class_path as 'package.module:Class'")
        if self.kind != "custom" and self.class_path is not None:
            raise ValueError(f"class_path applies to kind 'custom' only, not {self.kind!r}")
        return self


def _has_password(dsn: str) -> bool:
    if "://" in dsn:
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(dsn)
        return parts.password is not None or "password" in parse_qs(parts.query)
    return any(kv.split("=", 1)[0].strip() == "password" for kv in dsn.split())


class AuthConfig(Section):
    api_key: SecretStr | None = Field(None, description="Bearer token every /v1 request must carry (unset: no auth).")
    api_key_env: str | None = Field(None, description="Name of an environment variable holding the API key.")

    @model_validator(mode="after")
    def _check(self) -> AuthConfig:
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("set api_key or api_key_env, not both")
        return self

    def resolve(self) -> str | None:
        """The key, read from the environment when api_key_env names it (at build time)."""
        if self.api_key_env is not None:
            value = os.environ.get(self.api_key_env)
            if not value:
                raise ConfigError(f"auth.api_key_env: environment variable {self.api_key_env} is not set or empty")
            return value
        return self.api_key.get_secret_value() if self.api_key is not None else None


def _default_personalize() -> PersonalizeConfig:
    return PersonalizeConfig(
        persona=StageEngineConfig(model="{output_dir}/models/rat_describe", max_new_tokens=64),
        answer=StageEngineConfig(model="{output_dir}/models/fspo_rat", max_new_tokens=128),
    )


class ServeConfig(Section):
    """The Serve application: `args` of serve/config.yaml."""

    output_dir: str = Field(
        "runs/fspo-world", description="The training run whose models/ this serves (relative: to the directory "
        "`serve run` starts in)."
    )
    model_id: str = Field("fspo-rat", min_length=1, description="Model name clients send and GET /v1/models lists.")
    personalize: PersonalizeConfig = Field(
        default_factory=_default_personalize,
        description="The two stages and their prompt settings (taken from how the models were trained, their "
        "fspo_prompt.json). '{output_dir}' in a model path is replaced.",
    )
    check_model_paths: bool = Field(
        True, description="Fail at build time when a local model directory is missing (off: replicas find out)."
    )
    deployments: DeploymentsConfig = Field(default_factory=DeploymentsConfig, description="Per-deployment options.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Request limits.")
    cache: CacheConfig = Field(default_factory=CacheConfig, description="Persona cache.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="Profile store.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API key auth.")
    page: PageConfig = Field(default_factory=PageConfig, description="The web page at / (docs/serving.md).")

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        # Paths once, here: '{output_dir}' replaced, local paths absolute (replicas run elsewhere).
        out = absolute(self.output_dir)
        object.__setattr__(self, "output_dir", out)
        for stage in ("persona", "answer"):
            engine: StageEngineConfig = getattr(self.personalize, stage)
            object.__setattr__(engine, "model", resolve_path(engine.model, out))
            opts: DeploymentOptions = getattr(self.deployments, stage)
            if engine.kind == "vllm" and opts.num_gpus <= 0:
                raise ValueError(
                    f"deployments.{stage}.num_gpus must be > 0 when personalize.{stage}.kind is 'vllm' (got {opts.num_gpus})"
                )
            if engine.kind == "vllm" and opts.num_gpus < engine.tensor_parallel_size:
                # vLLM places the extra ranks itself; the replica must still hold one whole GPU per rank.
                raise ValueError(
                    f"deployments.{stage}.num_gpus ({opts.num_gpus}) must cover personalize.{stage}.tensor_parallel_size "
                    f"({engine.tensor_parallel_size})"
                )
            batching: BatchingOptions = getattr(self.deployments, f"{stage}_batching")
            if batching.max_batch_size > opts.max_ongoing_requests:
                raise ValueError(
                    f"deployments.{stage}_batching.max_batch_size ({batching.max_batch_size}) must be <= "
                    f"deployments.{stage}.max_ongoing_requests ({opts.max_ongoing_requests}), or batches never fill"
                )
        if self.personalize.answer.max_new_tokens > self.limits.max_tokens:
            raise ValueError(
                f"personalize.answer.max_new_tokens ({self.personalize.answer.max_new_tokens}) must be <= "
                f"limits.max_tokens ({self.limits.max_tokens})"
            )
        store = self.store.path.replace("{output_dir}", out)
        object.__setattr__(self.store, "path", absolute(store) if self.store.kind == "sqlite" else store)
        for section, name in _PAGE_PATHS:
            value = getattr(section(self), name)
            if value is not None:
                value = value.replace("{output_dir}", out)
                model = name == "unpersonalized_model"  # a model may be a hub id; the others are files
                object.__setattr__(section(self), name, resolve_path(value, out) if model else absolute(value))
        return self


# The page's paths: '{output_dir}' is replaced, files made absolute, the model resolved like the others.
_PAGE_PATHS = ((lambda c: c.page.pairs, "path"), (lambda c: c.page.pairs.world, "run_config"),
               (lambda c: c.page, "unpersonalized_model"))


def load_serve_config(args: dict[str, Any] | ServeConfig | None) -> ServeConfig:
    """Serve `args` (a dict from YAML, or a ServeConfig) -> validated ServeConfig, or ConfigError naming each field."""
    if isinstance(args, ServeConfig):
        return args
    try:
        return ServeConfig.model_validate(args or {})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "serve config")) from None


def check_model_paths(cfg: ServeConfig) -> None:
    """Local model directories must exist with weights; hub ids are left to the loader."""
    if not cfg.check_model_paths:
        return
    models = [(f"personalize.{stage}.model", getattr(cfg.personalize, stage).model) for stage in ("persona", "answer")]
    if cfg.page.enabled and cfg.page.unpersonalized_model is not None:
        models.append(("page.unpersonalized_model", cfg.page.unpersonalized_model))
    for field, path in models:
        if not looks_local(path):
            continue
        p = Path(path).expanduser()
        if not (p / "config.json").is_file():
            raise ConfigError(
                f"{field}: {p} is not a model directory (no config.json); train it first "
                f"(python -m jobs.train ...) or point {field} at a Hugging Face directory"
            )


def resolve_serve_prompting(cfg: ServeConfig) -> ServeConfig:
    """The config with the prompt settings decided from the served models' fspo_prompt.json (the
    ingress reads num_shots and rat; an explicit contradicting setting fails here, at build time)."""
    return cfg.model_copy(update={"personalize": resolve_prompting(cfg.personalize)})
