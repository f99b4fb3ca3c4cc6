"""The library's layers (docs/design.md): world/ below the stage packages; training/ and evaluation/
import nothing from generation/; serving/ nothing from training, generation or evaluation, not even
through the run config; the library never imports jobs/. Checked twice: by importing every module
of a package in a fresh interpreter and listing what got loaded, and by reading every import
statement in the source (function-local imports run only when called)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "fspo_ray"

# package -> prefixes it may not reach, directly or through anything it imports
FORBIDDEN = {
    "fspo_ray.world": ("fspo_ray.training", "fspo_ray.evaluation", "fspo_ray.generation", "fspo_ray.serving",
                       "fspo_ray.config", "jobs"),
    "fspo_ray.training": ("fspo_ray.generation", "fspo_ray.serving", "jobs"),
    "fspo_ray.evaluation": ("fspo_ray.generation", "fspo_ray.serving", "jobs"),
    "fspo_ray.serving": ("fspo_ray.training", "fspo_ray.generation", "fspo_ray.evaluation", "fspo_ray.config", "jobs"),
    "fspo_ray": ("jobs",),
}

PROBE = """
import importlib, json, pkgutil, sys
pkg = importlib.import_module(sys.argv[1])
for m in pkgutil.walk_packages(getattr(pkg, "__path__", []), pkg.__name__ + "."):
    importlib.import_module(m.name)
print(json.dumps(sorted(k for k in sys.modules if k.startswith(("fspo_ray", "jobs")))))
"""


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_loads_none_of_the_layers_above_it(package):
    out = subprocess.run([sys.executable, "-c", PROBE, package], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.splitlines()[-1])
    own = package + "."
    bad = [m for m in loaded if m.startswith(FORBIDDEN[package]) and not m.startswith(own) and m != package]
    assert not bad, f"{package} loads {bad}"


def _imports(path: Path) -> set[str]:
    """Every module a file names in an import statement, at any depth (function-local ones too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(p for p in FORBIDDEN if p != "fspo_ray"))
def test_function_local_imports_keep_the_layers_too(package):
    folder = PKG / package.removeprefix("fspo_ray.")
    bad = {f"{f.relative_to(ROOT)}: {name}" for f in folder.rglob("*.py") for name in _imports(f)
           if name.startswith(FORBIDDEN[package])}
    assert not bad, sorted(bad)


def test_the_library_never_imports_jobs():
    bad = {f"{f.relative_to(ROOT)}: {n}" for f in PKG.rglob("*.py") for n in _imports(f) if n == "jobs" or n.startswith("jobs.")}
    assert not bad, sorted(bad)
