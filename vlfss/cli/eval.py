"""`vlfss eval`: score zero-shot vs few-shot on a benchmark."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    # the library module still parses its own arguments: everything after the command word goes to it
    p = sub.add_parser("eval", help="score zero-shot vs few-shot on a benchmark", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=run, raw_argv=True)


def run(argv: list[str]) -> int:
    from ..evaluation.harness import cli_eval

    return cli_eval(argv)
