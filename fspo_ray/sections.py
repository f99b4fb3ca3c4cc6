"""The base of every config schema: the section class, YAML + `key.sub=value` loading, errors.

Each package owns its section (`world/config.py`, `training/config.py`, `engines/config.py`, ...);
`fspo_ray/config.py` composes them into the run config and `serving/config.py` into the Serve
config. Both load and report errors through the functions here, so a bad value fails before any
Ray worker starts with one line per field, the field named.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from fspo_ray.errors import FspoError


class ConfigError(FspoError):
    """A config that cannot run; the message names the field and what is allowed."""


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


S = TypeVar("S", bound=BaseModel)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """['a.b=1', 'c=x'] -> {'a': {'b': 1}, 'c': 'x'}; values parse as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key part")
        try:
            # Path placeholders ({output_dir}, {run_name}) would read as YAML flow mappings.
            placeholder = raw.startswith(("{output_dir}", "{run_name}"))
            value = raw if placeholder else yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return tree


def merge(base: dict, update: dict) -> dict:
    """`update` merged into `base`, nested mappings key by key."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def format_validation_error(e: ValidationError, what: str = "config") -> str:
    """A pydantic error as one line per field: `  train.zero_stage: <why> (got 4)`."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not in the schema; check spelling)"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"  {loc}: {msg}")
    return f"invalid {what}:\n" + "\n".join(lines)


def validate(schema: type[S], data: dict[str, Any] | None, overrides: list[str] | None = None,
             what: str = "config") -> S:
    """Dict (+ overrides) -> a validated `schema`, or ConfigError naming each bad field."""
    merged = merge(data or {}, parse_overrides(overrides or []))
    try:
        return schema.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, what)) from None


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file whose top level is a mapping, or ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        available = sorted(str(c) for c in Path("jobs/configs").glob("*.yaml")) if Path("jobs/configs").is_dir() else []
        hint = f"; available: {', '.join(available)}" if available else ""
        raise ConfigError(f"config file not found: {p}{hint}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_section(path: str | os.PathLike, name: str, schema: type[S]) -> S:
    """One section of a run's YAML (e.g. a resolved config's `world:`), validated by its owner's
    schema; the rest of the file is not read, so a reader needs only that package."""
    return validate(schema, read_yaml(path).get(name) or {}, what=f"{name} section of {path}")
