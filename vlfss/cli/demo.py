"""`vlfss demo`: the offline demo on a generated scene with the embedded tiny model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..modeling.config import SegmenterConfig


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="offline demo on a generated scene with the embedded tiny model")
    d.add_argument("--out", default="vlfss_demo", help="output folder")
    d.add_argument("--seed", type=int, default=0, help="which generated scene")
    d.add_argument("--model", default=SegmenterConfig.model)
    d.add_argument("--pretrained", default=SegmenterConfig.pretrained)
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from ..io_utils import check_writable_dir

    out = check_writable_dir(Path(args.out))
    run_demo(out, seed=args.seed, model=args.model, pretrained=args.pretrained)
    return 0
