"""`vlfss pretrain-clip`: train the tiny CLIP on the synthetic world (captions only), or export its weights."""

from __future__ import annotations

import argparse

from ..config import load_config
from ..engine.config import PretrainConfig
from .common import add_weights_run_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain-clip", help="train the tiny CLIP on the synthetic world (captions only)")
    add_weights_run_args(p, "PretrainConfig", "only write out_dir's last checkpoint as fp16 safetensors to FILE "
                         "(e.g. vlfss/assets/vlfss-tiny-vit.safetensors)")
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
