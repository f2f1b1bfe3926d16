"""`vlfss pretrain-clip`: train the tiny CLIP on the synthetic world (captions only), or export its weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain-clip", help="train the tiny CLIP on the synthetic world (captions only)")
    p.add_argument("--config", default=None, help="YAML config (PretrainConfig fields)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in out_dir")
    p.add_argument("--export", default=None, metavar="FILE", help="only write out_dir's last checkpoint as fp16 "
                   "safetensors to FILE (e.g. vlfss/assets/vlfss-tiny-vit.safetensors)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine.pretrain import PretrainConfig, export_weights, pretrain
    from ..io_utils import check_writable_dir

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    if args.export:
        ckpt = Path(cfg.out_dir) / "last.pt"
        if not ckpt.is_file():
            raise InputError(f"no checkpoint {ckpt} to export; train first")
        print(export_weights(ckpt, Path(args.export), cfg))
        return 0
    check_writable_dir(Path(cfg.out_dir), "out_dir", "set out_dir=... to a writable folder")
    print(pretrain(cfg, resume=not args.restart))
    return 0
