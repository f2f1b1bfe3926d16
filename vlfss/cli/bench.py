"""`vlfss bench`: speed of the segmenter against the bare encoder and CLIPSeg (random weights)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="speed benchmark vs the bare encoder and CLIPSeg (random weights)")
    b.add_argument("--size", type=int, default=352, help="query image side in pixels")
    b.add_argument("--repeats", type=int, default=7, help="timed repeats per case (the median is reported)")
    b.add_argument("--model", default="ViT-B-16", help="open_clip architecture (random weights)")
    b.add_argument("--out", default=None, help="write the figures as JSON here")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.bench import run_bench

    run_bench(size=args.size, repeats=args.repeats, model=args.model, out=args.out)
    return 0
