"""`vlfss robust-clip`: distil the tiny CLIP's image tower into one that is robust to blur, JPEG and rescaling."""

from __future__ import annotations

import argparse

from ..config import load_config
from ..engine.config import RobustConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("robust-clip", help="distil the tiny CLIP's image tower on corrupted scenes "
                       "(features of the clean scene as targets)")
    p.add_argument("--config", default=None, help="YAML config (keys of vlfss.engine.config.RobustConfig)")
    p.add_argument("--restart", action="store_true", help="delete the checkpoints in out_dir and start over")
    p.add_argument("--export", default=None, metavar="FILE", help="only write out_dir's last checkpoint (with the "
                   "teacher's text tower) as fp16 safetensors to FILE")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. steps=600")
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
