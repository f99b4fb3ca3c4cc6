"""How a trained model is prompted, and the one rule for a setting that disagrees with it.

Every model a training stage exports holds its prompt contract next to its weights
(`fspo_prompt.json`, written by training/loop.py::prompt_contract): the template, sign tokens on
the shots, the N it was trained with, whether it reads a user description (RAT), its token
budget and EOS. Evaluation and serving take their prompt settings from it. A setting given
explicitly that contradicts it is refused, naming both values, unless the config says it
overrides the contract on purpose (`override_prompt_contract: true`: e.g. evaluating at N = 8 a
model trained at N = 4, as the paper does). A model without a contract (a hub model, one this
project did not train) gets the defaults.
"""

from __future__ import annotations

from typing import Any

from fspo_ray.modeling import PROMPT_CONTRACT, read_prompt_contract
from fspo_ray.sections import ConfigError

DEFAULTS: dict[str, Any] = {"template": "markdown", "signed_shots": False, "num_shots": 8, "rat": True}


def contract_of(model: str) -> dict:
    """The model's prompt contract, {} when it has none."""
    return read_prompt_contract(model) or {}


def contradiction(where: str, name: str, explicit: Any, model: str, trained: Any) -> ConfigError:
    return ConfigError(
        f"{where}.{name}={explicit!r} contradicts how {model} was trained ({name}: {trained!r} in its "
        f"{PROMPT_CONTRACT}); unset {where}.{name} to use the trained value, or set "
        f"{where}.override_prompt_contract=true to override it on purpose"
    )


def setting(where: str, name: str, explicit: Any, model: str, contract: dict, *, override: bool) -> Any:
    """One prompt setting of one model: the explicit value if it agrees with the contract (or the
    config overrides on purpose), else the trained value, else the default.

    A model trained without shots (N = 0, e.g. base_sft) may be shown any N: that is the few-shot
    baseline, not a contradiction."""
    trained = contract.get(name)
    if explicit is None:
        return DEFAULTS[name] if trained is None else trained
    if trained is not None and explicit != trained and not override and not (name == "num_shots" and trained == 0):
        raise contradiction(where, name, explicit, model, trained)
    return explicit
