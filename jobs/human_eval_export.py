"""Human-evaluation kit, export side (see docs/evaluation.md).

    # 1. a template each participant fills with their own preferences (their shots)
    python -m jobs.human_eval_export template --participants 12 --out runs/x/human_eval [--config ...] [key=value ...]
    # 2. blind pairwise comparisons (CSV + JSONL) and the hidden key, from the filled template
    python -m jobs.human_eval_export comparisons --preferences filled.csv --out runs/x/human_eval [--config ...]

Then `python -m jobs.human_eval_score --answers comparisons.csv --key key.jsonl`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fspo_ray.errors import FspoError
from jobs._common import DEFAULT_CONFIG


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.human_eval_export", description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=("template", "comparisons"), help="what to export")
    parser.add_argument("--config", default=None, help=f"YAML run config (default: {DEFAULT_CONFIG} when present)")
    parser.add_argument("--out", default=None, help="output directory (default: <output_dir>/human_eval)")
    parser.add_argument("--participants", type=int, default=10, help="template: number of participants")
    parser.add_argument("--pairs", default=None,
                        help="template: preference parquet (file or dir) of candidate pairs (default: <output_dir>/prefs)")
    parser.add_argument("--preferences", default=None, help="comparisons: the filled template (CSV or JSONL)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)  # options and key=value overrides in any order
    if args.config is None and Path(DEFAULT_CONFIG).is_file():
        args.config = DEFAULT_CONFIG
    if args.step == "comparisons" and not args.preferences:
        parser.error("comparisons needs --preferences FILE (the filled template)")
    return args


def export(args: argparse.Namespace) -> None:
    from fspo_ray.config import load_config, save_resolved
    from fspo_ray.evaluation import human_eval

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or cfg.layout.human_eval)
    seed = cfg.seed if cfg.evaluate.seed is None else cfg.evaluate.seed
    if args.step == "template":
        from fspo_ray.data import read_preferences
        from fspo_ray.episodes import Preference

        table = read_preferences(args.pairs or cfg.layout.prefs)
        pairs = [Preference(r["question"], r["chosen"], r["rejected"]) for r in table.to_pylist()]
        ids = [f"p{i:03d}" for i in range(args.participants)]
        path = human_eval.write_template(pairs, ids, cfg.evaluate.human.template_pairs, out, seed)
        print(f"template for {len(ids)} participants: {path}\n{human_eval.INSTRUCTIONS['template']}")
        return
    from fspo_ray.ray_utils import init_ray

    human_eval.read_preferences_template(args.preferences)  # fail on a bad file before Ray starts
    save_resolved(cfg, out, name="resolved_config.human_eval.yaml")
    init_ray(cfg.ray)
    paths = human_eval.export_comparisons(cfg, args.preferences, out)
    print(f"comparisons for participants: {paths['csv']} (same items: {paths['jsonl']})")
    print(f"hidden key (keep from participants): {paths['key']}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        export(args)
    except FspoError as e:
        print(f"fspo human_eval_export: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
