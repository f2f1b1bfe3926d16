"""`vlfss robust-clip`: distil the tiny CLIP's image tower into one that is robust to blur, JPEG and rescaling."""

from __future__ import annotations

import argparse

from ..config import load_config
from ..engine.config import RobustConfig
from .common import add_weights_run_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("robust-clip", help="distil the tiny CLIP's image tower on corrupted scenes "
                       "(features of the clean scene as targets)")
    add_weights_run_args(p, "RobustConfig", "only write out_dir's last checkpoint (with the teacher's text tower) "
                         "as fp16 safetensors to FILE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # the library loads here, when the command runs, so that `vlfss --help` stays fast
    from ..engine.robust import export_weights, robustify

    cfg = load_config(RobustConfig, args.config, args.overrides)
    if args.export:
        print(export_weights(cfg, args.export))
        return 0
    print(robustify(cfg, resume=not args.restart))
    return 0
