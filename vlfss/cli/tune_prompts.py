"""`vlfss tune-prompts`: learn context vectors for a new class."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    # the library module still parses its own arguments: everything after the command word goes to it
    p = sub.add_parser("tune-prompts", help="learn context vectors for a new class", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=run, raw_argv=True)


def run(argv: list[str]) -> int:
    from ..engine.prompt_tuning import cli_tune_prompts

    return cli_tune_prompts(argv)
