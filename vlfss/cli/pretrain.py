"""`vlfss pretrain-clip`: train the tiny CLIP on the synthetic world (captions only), or export its weights."""

from __future__ import annotations

import argparse

from ..config import load_config
from ..engine.config import PretrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain-clip", help="train the tiny CLIP on the synthetic world (captions only)")
    p.add_argument("--config", default=None, help="YAML config (keys of vlfss.engine.config.PretrainConfig)")
    p.add_argument("--restart", action="store_true", help="delete the checkpoints in out_dir and start over")
    p.add_argument("--export", default=None, metavar="FILE", help="only write out_dir's last checkpoint as fp16 "
                   "safetensors to FILE (e.g. vlfss/assets/vlfss-tiny-vit.safetensors)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. steps=600")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # the library loads here, when the command runs, so that `vlfss --help` stays fast
    from ..engine.pretrain import export_weights, pretrain

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    if args.export:
        print(export_weights(cfg.out_dir, args.export))
        return 0
    print(pretrain(cfg, resume=not args.restart))
    return 0
