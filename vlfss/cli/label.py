"""`vlfss label`: label a whole folder or dataset from a few examples (batched, resumable, sharded)."""

from __future__ import annotations

import argparse
import os
import sys

from ..labeling.config import LabelConfig, check_label_config
from .common import add_class_args, add_segmenter_args, class_request, segmenter_config

_D = LabelConfig()


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("label", help="label a whole dataset from a few examples (batched, resumable, sharded)",
                       description="Label every image of SOURCE... with the classes given by --text / --support / "
                       "--prompt. Rerun the same command to resume; see docs/label.md.")
    s.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a folder (recursive), a glob, a text file listing paths, an image, or "
                        "hf:NAME_OR_SAVED_DIR[:SPLIT]")
    add_class_args(s)
    s.add_argument("--out", required=True, help="output folder (labels/, manifest.jsonl, coco.json, ...)")
    s.add_argument("--batch-size", type=int, default=_D.batch_size, help=f"images per batch (default {_D.batch_size})")
    s.add_argument("--workers", type=int, default=_D.workers,
                   help=f"image decoding processes (default {_D.workers}; 0: in the main process)")
    s.add_argument("--writers", type=int, default=_D.writers,
                   help=f"threads scoring and writing images (default {_D.writers})")
    s.add_argument("--precision", default=_D.precision, choices=["auto", "fp32", "bf16"],
                   help="encoder arithmetic; auto: bf16 where the hardware has bf16 units and it measured faster")
    s.add_argument("--overlay", action="store_true", help="also write overlays/<name>.png")
    s.add_argument("--confidence", action="store_true", help="also write confidence/<name>.png")
    s.add_argument("--no-coco", action="store_true", help="do not write coco.json")
    s.add_argument("--hf-dataset", action="store_true", help="also write hf_dataset/ (datasets.save_to_disk)")
    s.add_argument("--suggest", type=int, default=0, metavar="K",
                   help="write the K images most worth labelling next to suggest.txt and suggest.png")
    s.add_argument("--diversity", type=float, default=_D.diversity,
                   help=f"near-duplicate penalty of the suggestions (default {_D.diversity}; 0: uncertainty only)")
    s.add_argument("--image-column", default=None, help="image column of a Hugging Face dataset SOURCE")
    s.add_argument("--shard", default=None, metavar="I/N", help="label share I of N (0-based), e.g. a job array task")
    s.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out and start over")
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_segmenter_args(s)
    s.set_defaults(func=run)


def label_config(args: argparse.Namespace) -> LabelConfig:
    cfg = LabelConfig(batch_size=args.batch_size, workers=args.workers, writers=args.writers,
                      precision=args.precision, overlay=args.overlay, confidence=args.confidence,
                      coco=not args.no_coco, hf_dataset=args.hf_dataset, suggest=args.suggest,
                      diversity=args.diversity, image_column=args.image_column, shard=args.shard,
                      overwrite=args.overwrite, progress=not args.quiet)
    check_label_config(cfg)
    return cfg


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..labeling import label
    from ..labeling.sources import resolve_sources
    from ..segmenter import Segmenter

    cfg = label_config(args)  # bad options fail before anything loads
    source = resolve_sources(args.sources, cfg.image_column, exclude=args.out)
    seg_cfg = segmenter_config(args)
    if not any(s.startswith("feature_cache_items=") for s in args.set or []):
        seg_cfg = dataclasses.replace(seg_cfg, feature_cache_items=0)  # each image is seen once
    if seg_cfg.device.startswith("cuda") and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        seg_cfg = dataclasses.replace(seg_cfg, device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0)}")
    seg = Segmenter.from_config(seg_cfg)
    request = class_request(args, seg)
    summary = label(source, args.out, segmenter=seg, config=cfg, prompt=args.prompt, **request)
    if not args.quiet:
        print(f"vlfss label: {summary.line()}; precision: {summary.precision_reason}", file=sys.stderr)
        for reason in summary.failures:
            print(f"  failed: {reason}", file=sys.stderr)
        if summary.complete:
            print(f"outputs in {args.out}: labels/, manifest.jsonl" + (", coco.json" if cfg.coco else "")
                  + (", suggest.txt, suggest.png" if cfg.suggest else "") + (", hf_dataset/" if cfg.hf_dataset
                                                                               else ""))
    return 0
