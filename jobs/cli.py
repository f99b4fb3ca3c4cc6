"""`fspo <stage> [--config PATH] [key.sub=value ...]`: the console-script twin of `python -m jobs.<stage>`."""

from __future__ import annotations

import importlib
import sys

STAGES = ("build_model", "generate", "train", "evaluate", "demo")


def available_stages() -> list[str]:
    out = []
    for stage in STAGES:
        try:
            importlib.import_module(f"jobs.{stage}")
        except ModuleNotFoundError as e:
            if e.name != f"jobs.{stage}":
                raise
            continue
        out.append(stage)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stages = available_stages()
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: fspo <stage> [--config PATH] [key.sub=value ...]\nstages: {', '.join(stages)}")
        return 0 if argv else 2
    stage, rest = argv[0], argv[1:]
    if stage not in stages:
        print(f"fspo: unknown stage {stage!r}; expected one of {', '.join(stages)}", file=sys.stderr)
        return 2
    return importlib.import_module(f"jobs.{stage}").main(rest)


if __name__ == "__main__":
    sys.exit(main())
