"""`vlfss` command line: one argparse tree, a module per subcommand, each a thin layer over the Python API.

Subcommand modules import the library when their command runs, so `vlfss --help` does not load torch.
Errors a user can fix exit 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import VlfssError
from . import app, bench, demo, label, models, pretrain, robust, segment, train, tune_prompts
from . import eval as eval_cmd

COMMANDS = (segment, label, models, demo, eval_cmd, train, tune_prompts, pretrain, robust, bench, app)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vlfss", description="Vision-language prompt-driven few-shot segmentation")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = ap.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    return ap


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not verbose:
        logging.getLogger("root").setLevel(logging.ERROR)  # open_clip logs through the root logger
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and not any(e.startswith("-") for e in extra):
        args.overrides += extra  # key=value overrides after an option (`train a=1 --resume b=2`): argparse leaves them
        extra = []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except VlfssError as e:
        print(f"vlfss: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlfss: interrupted", file=sys.stderr)
        return 130
