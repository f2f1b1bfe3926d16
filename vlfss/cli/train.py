"""`vlfss train`: episodic meta-training of the fusion head (a thin layer over ``vlfss.engine.train.fit``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..config import load_config
from ..engine.config import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="episodic meta-training of the fusion head",
                       description="Episodic meta-training of the fusion head. Run under "
                       "`torchrun --nproc_per_node=N -m vlfss.cli train ...` for DDP.")
    p.add_argument("--config", default=None, help="YAML config (see configs/); keys of vlfss.engine.config.TrainConfig")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in out_dir")
    p.add_argument("--overwrite", action="store_true", help="discard checkpoints already in out_dir")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. steps=200 data.fold=1")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # the library loads here, when the command runs, so that `vlfss --help` stays fast
    from ..engine.train import fit
    from ..engine.validate import format_scores

    cfg = load_config(TrainConfig, args.config, args.overrides)
    path = fit(cfg, resume=args.resume, overwrite=args.overwrite)
    summary = Path(cfg.out_dir) / "summary.json"
    if summary.is_file() and os.environ.get("RANK", "0") == "0":
        s = json.loads(summary.read_text())
        val = f"; novel-class validation: {format_scores(s['val'])}" if s.get("val") else ""
        loss = f", loss {s['first_loss']:.4f} -> {s['last_loss']:.4f}" if s.get("first_loss") is not None else ""
        print(f"trained {s['steps']} steps (from step {s['started_at_step']}){loss}{val}; head: {path}")
    return 0
