"""Human-evaluation kit, scoring side: filled blind comparisons + the hidden key -> win rates.

    python -m jobs.human_eval_score --answers comparisons.csv --key key.jsonl [--out scores.json]

Each filled item is one judgment (win 1, tie 1/2, loss 0); per method: the win rate against
the baseline, its 95% Wilson interval and a one-sided exact binomial p-value against 0.5.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fspo_ray.errors import FspoError


def main(argv: list[str] | None = None) -> int:
    from fspo_ray.evaluation.human_eval import score_answers, score_table

    parser = argparse.ArgumentParser(prog="python -m jobs.human_eval_score", description=__doc__.split("\n")[0])
    parser.add_argument("--answers", required=True, help="filled comparisons (CSV or JSONL)")
    parser.add_argument("--key", required=True, help="key.jsonl written with the comparisons")
    parser.add_argument("--out", default=None, help="scores JSON (default: next to --answers, human_eval_scores.json)")
    args = parser.parse_args(argv)
    try:
        scores = score_answers(args.answers, args.key)
    except FspoError as e:
        print(f"fspo human_eval_score: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or Path(args.answers).with_name("human_eval_scores.json"))
    out.write_text(json.dumps(scores, indent=2) + "\n")
    print(score_table(scores))
    if scores["unanswered"]:
        print(f"{scores['unanswered']} items left blank (not counted)")
    print(f"scores: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
