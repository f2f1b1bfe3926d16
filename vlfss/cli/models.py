"""`vlfss models`: the backbones the registry and open_clip know, with the weights each loads by default."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="list known backbones")
    m.add_argument("--all", action="store_true",
                   help="include open_clip architectures without known weights (they need a file or 'random')")
    m.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..modeling.backbones import describe_models

    for name, desc in describe_models(include_untagged=args.all):
        print(f"{name:32s} {desc}")
    return 0
