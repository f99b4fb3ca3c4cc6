"""The issue's claims of several evaluated runs side by side (e.g. world.seed=0 and a seed
nobody tuned on).

    python -m jobs.evaluate_compare runs/seed0 runs/seed1 [--out compare.md]

Each argument is a run directory holding report.json (from jobs.evaluate) or the file itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from fspo_ray.evaluation.goals import compare_markdown

    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate_compare", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (or report.json files)")
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    reports = {}
    for run in args.runs:
        path = Path(run) / "report.json" if Path(run).is_dir() else Path(run)
        if not path.is_file():
            print(f"fspo evaluate_compare: error: {path} does not exist (run jobs.evaluate first)", file=sys.stderr)
            return 2
        reports[str(run)] = json.loads(path.read_text())
    table = compare_markdown(reports)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
