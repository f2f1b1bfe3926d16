"""Speed benchmark (thin wrapper over ``vlfss.bench.run_bench``; same as ``vlfss bench``).

    PYTHONPATH=. python eval/bench_speed.py --repeats 7 --out bench.json
"""

from __future__ import annotations

import argparse
import logging
import os

from vlfss.evaluation.bench import run_bench


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=352, help="query/support side in pixels")
    ap.add_argument("--repeats", type=int, default=7, help="round-robin rounds")
    ap.add_argument("--model", default="ViT-B-16", help="open_clip model name (random weights unless --pretrained)")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--bf16-repeats", type=int, default=None,
                    help="rounds for the bf16 variant (default: as many as fit --bf16-budget)")
    ap.add_argument("--bf16-budget", type=float, default=60.0, help="seconds allowed for the bf16 rounds")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_bench(size=args.size, repeats=args.repeats, model=args.model, out=args.out, pretrained=args.pretrained,
              threads=args.threads, bf16_repeats=args.bf16_repeats, bf16_budget_s=args.bf16_budget)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
