"""Does prompt tuning beat the hand-written templates? Measured per class on the synthetic benchmark.

For each class: learn a prompt (``vlfss.engine.prompt_tuning.learn_prompt``) from ``--shots`` labelled train-split
images of it, then segment ``--heldout`` test-split images that contain it, text only, once with the
template ensemble and once with the learned prompt, and score the class IoU (summed intersection over
summed union, as the field's mIoU). Prints a table; ``--out`` also writes it as JSON.

    python eval/prompt_tuning.py                          # the embedded tiny CLIP, every class
    python eval/prompt_tuning.py --classes stripes dots --steps 50
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlfss.config import load_config  # noqa: E402
from vlfss.data.episodes import relabel_query  # noqa: E402
from vlfss.data.synthetic_store import synthetic_dataset  # noqa: E402
from vlfss.engine.config import PromptTuneConfig  # noqa: E402
from vlfss.engine.prompt_tuning import learn_prompt  # noqa: E402
from vlfss.evaluation.metrics import FSSMeter  # noqa: E402
from vlfss.io_utils import atomic_write_text  # noqa: E402
from vlfss.segmenter import Segmenter, SegmenterConfig  # noqa: E402


def class_iou(seg: Segmenter, name: str, images: list[np.ndarray], labels: list[np.ndarray], c: int) -> float:
    """IoU of class ``c`` over held-out images, segmenting with the text ``name`` (whatever prompt it maps to)."""
    meter = FSSMeter(c + 1)
    for k, (img, lab) in enumerate(zip(images, labels, strict=True)):
        out = seg.segment(img, texts=[name], mode="training-free")
        meter.update(out.labels, relabel_query(lab, [c]), [c], episode=k)
    return meter.miou([c])


def run(args: argparse.Namespace) -> list[dict]:
    overrides = [f"model={args.model}", "mode=training-free"]
    for key, val in (("templates", args.templates), ("pretrained", args.pretrained)):
        if val:
            overrides.append(f"{key}={val}")
    seg = Segmenter.from_config(load_config(SegmenterConfig, None, overrides))
    train = synthetic_dataset("train", args.train_images, args.seed, "hf", args.data_root, args.image_size)
    test = synthetic_dataset("test", args.test_images, args.seed, "hf", args.data_root, args.image_size)
    names = list(train.class_names)
    wanted = args.classes or names
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise SystemExit(f"unknown class(es) {unknown}; the synthetic classes are {', '.join(names)}")
    rng = np.random.default_rng(args.seed)
    cfg = PromptTuneConfig(n_ctx=args.n_ctx, steps=args.steps, lr=args.lr, seed=args.seed,
                           anchor_weight=args.anchor_weight, residual=not args.no_residual)
    rows = []
    for cname in wanted:
        c = names.index(cname)
        text = train.text_names[c]
        pool = train.images_of_class(c)
        chosen = [pool[j] for j in rng.permutation(len(pool))[: args.shots]]
        sup = [train.load(i) for i in chosen]
        held = [test.load(i) for i in test.images_of_class(c)[: args.heldout]]
        if not sup or not held:
            print(f"skipping {cname}: {len(sup)} train / {len(held)} held-out images contain it")
            continue
        masks = [np.where(lab == train.ignore_label, 255, lab == c + 1).astype(np.uint8) for _, lab in sup]
        t0 = time.time()
        seg.prompt_learners.pop(text, None)
        res = learn_prompt(seg, text, [im for im, _ in sup], masks, cfg)
        tune_s = time.time() - t0
        iou_t = class_iou(seg, text, [im for im, _ in held], [lab for _, lab in held], c)
        seg.prompt_learners[text] = res.learner
        iou_p = class_iou(seg, text, [im for im, _ in held], [lab for _, lab in held], c)
        seg.prompt_learners.pop(text)
        rows.append({"class": cname, "train_images": len(sup), "heldout_images": len(held),
                     "iou_templates": iou_t, "iou_tuned": iou_p, "train_iou_templates": res.train_iou_templates,
                     "train_iou_tuned": res.train_iou_tuned, "tune_seconds": round(tune_s, 2)})
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'class':14s} {'IoU templates':>14s} {'IoU tuned':>10s} {'delta':>7s}   (held-out, %)"]
    for r in rows:
        lines.append(f"{r['class']:14s} {100 * r['iou_templates']:14.1f} {100 * r['iou_tuned']:10.1f} "
                     f"{100 * (r['iou_tuned'] - r['iou_templates']):+7.1f}")
    if rows:
        mt = float(np.mean([r["iou_templates"] for r in rows]))
        mp = float(np.mean([r["iou_tuned"] for r in rows]))
        wins = sum(r["iou_tuned"] > r["iou_templates"] for r in rows)
        lines.append(f"{'mean':14s} {100 * mt:14.1f} {100 * mp:10.1f} {100 * (mp - mt):+7.1f}   "
                     f"tuned wins {wins}/{len(rows)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=SegmenterConfig.model)
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--templates", default=None, help="the hand-written template set to beat (default: the model's)")
    ap.add_argument("--data-root", default=None, help="synthetic cache root (default: the vlfss cache)")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--train-images", type=int, default=400, help="train-split pool the labelled images come from")
    ap.add_argument("--test-images", type=int, default=300, help="test-split pool of held-out images")
    ap.add_argument("--classes", nargs="*", default=None, help="class names (default: all 20)")
    ap.add_argument("--shots", type=int, default=4, help="labelled images per class for tuning")
    ap.add_argument("--heldout", type=int, default=40, help="held-out images per class for scoring")
    tune = PromptTuneConfig()  # the tuning defaults live there
    ap.add_argument("--steps", type=int, default=tune.steps)
    ap.add_argument("--lr", type=float, default=tune.lr)
    ap.add_argument("--n-ctx", type=int, default=tune.n_ctx)
    ap.add_argument("--anchor-weight", type=float, default=tune.anchor_weight,
                    help="pull towards the templates' embedding (0: plain CoOp)")
    ap.add_argument("--no-residual", action="store_true", help="plain CoOp context (no residual over the templates)")
    ap.add_argument("--seed", type=int, default=tune.seed, help="seeds the tuning and the choice of labelled images")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = run(args)
    print(table(rows))
    if args.out:
        summary = {"model": args.model, "templates": args.templates or "the model's default", "shots": args.shots,
                   "steps": args.steps, "residual": not args.no_residual,
                   "anchor_weight": args.anchor_weight, "n_ctx": args.n_ctx, "classes": rows,
                   "mean_iou_templates": float(np.mean([r["iou_templates"] for r in rows])) if rows else math.nan,
                   "mean_iou_tuned": float(np.mean([r["iou_tuned"] for r in rows])) if rows else math.nan}
        atomic_write_text(args.out, json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
