"""`vlfss train`: episodic meta-training of the fusion head."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    # the library module still parses its own arguments: everything after the command word goes to it
    p = sub.add_parser("train", help="episodic meta-training of the fusion head", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=run, raw_argv=True)


def run(argv: list[str]) -> int:
    from ..engine.train import cli_train

    return cli_train(argv)
