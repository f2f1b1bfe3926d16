"""Does `vlfss label --suggest` pick better images to label next than chance? (issue 15, item 6)

Synthetic test split, every class as a novel class (fold f's classes with the head meta-trained on the other
folds, as in the README protocol). Per class: a pool of unlabelled images that contain it and a held-out set
of others. Each seed starts from one random pool image as the support; three rounds each add two pool images
(with their true masks) as supports, chosen by the label run's suggestion rule (``labeling.suggest``:
uncertainty with diversity, the same functions `--suggest` runs) or at random. After each round: the mIoU over
the pool's still-unlabelled images (what a user labels the rest with) and over the held-out images (unbiased:
the suggestion rule takes the hard images out of the pool, which alone can move the pool figure). mIoU is the
field's: per class, summed intersection over summed union; then the mean over classes.

    PYTHONPATH=. python eval/active_learning.py                      # all 20 classes, 5 seeds (~10 min, 1 core)
    PYTHONPATH=. python eval/active_learning.py --classes 0 1 --seeds 2   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROUNDS, PER_ROUND = 3, 2


def fold_segmenters(mode: str, text: bool):
    """One Segmenter per fold (fold f's head meta-trained without fold f's classes), sharing backbone and cache."""
    from vlfss.cache import FeatureCache
    from vlfss.modeling.backbones import build_backbone
    from vlfss.modeling.config import SegmenterConfig
    from vlfss.modeling.head_file import load_head
    from vlfss.segmenter import Segmenter

    backbone = build_backbone("vlfss-tiny")
    cache = FeatureCache(100_000)
    segs = []
    for f in range(4):
        head, variant = (load_head(HERE.parent / "vlfss" / "assets" / f"head-vlfss-tiny-fold{f}.safetensors",
                                   backbone) if mode == "learned" else (None, None))
        seg = Segmenter(backbone, SegmenterConfig(mode=mode), head, variant)
        seg.cache = cache
        segs.append(seg)
    return segs


def predict(seg, request, images):
    """Per image: (foreground mask, uncertainty, pooled feature) with the label run's own functions."""
    from vlfss.labeling.suggest import pooled_feature, uncertainty
    from vlfss.modeling import functional as fn
    from vlfss.modeling.types import make_output

    out = []
    for enc in seg.encode(images, request.variant):
        o = make_output(fn.nway_logits(seg.logits(enc, request)[None])[0], request.class_names)
        out.append((o.labels.numpy() == 1, uncertainty(o.probs, o.labels, o.entropy), pooled_feature(enc)))
    return out


def typicality(feats: np.ndarray, k: int = 5) -> np.ndarray:
    """(1 + mean cosine to the k nearest other images) / 2, features centred on the pool's mean (TypiClust-like:
    at tiny budgets typical examples teach more than uncertain ones)."""
    f = feats - feats.mean(0, keepdims=True)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    k = max(1, min(k, len(f) - 1))
    return (1 + np.sort(sim, axis=1)[:, -k:].mean(1)) / 2


def iou_sums(preds, gts) -> tuple[int, int]:
    inter = sum(int((p & g).sum()) for p, g in zip(preds, gts))
    union = sum(int((p | g).sum()) for p, g in zip(preds, gts))
    return inter, union


def run_class(seg, ds, c: int, name: str, args, rng_seed: int) -> dict:
    """Both strategies over all seeds for class ``c``: IoU (pool, held-out) per round."""
    from vlfss.labeling.suggest import candidates, select_diverse

    ids = ds.images_of_class(c)
    order = np.random.default_rng(rng_seed).permutation(len(ids))
    pool = [ids[i] for i in order[:args.pool]]
    held = [ids[i] for i in order[args.pool:args.pool + args.held_out]]
    img = {i: ds.load_image(i) for i in pool + held}
    gt = {i: ds.load_label(i) == c + 1 for i in pool + held}
    texts = [name] if args.text else None
    res = {"suggest": [], "random": []}
    memo: dict[tuple, tuple] = {}  # round 0 is the same for both strategies

    def evaluate(chosen: list[int]):
        key = tuple(chosen)
        if key not in memo:
            request = seg.prepare(texts, [[(img[i], gt[i].astype(np.uint8)) for i in chosen]])
            rest = [i for i in pool if i not in chosen]
            preds = predict(seg, request, [img[i] for i in rest + held])
            p_pool, p_held = preds[:len(rest)], preds[len(rest):]
            memo[key] = (rest, p_pool, {"pool": iou_sums([p[0] for p in p_pool], [gt[i] for i in rest]),
                                        "held_out": iou_sums([p[0] for p in p_held], [gt[i] for i in held])})
        return memo[key]

    for seed in range(args.seeds):
        rng = np.random.default_rng([rng_seed, seed])
        start = [pool[int(rng.integers(len(pool)))]]
        for strategy in ("suggest", "random"):
            chosen = list(start)
            pick_rng = np.random.default_rng([rng_seed, seed, 7])
            curve = []
            for rnd in range(ROUNDS + 1):
                rest, p_pool, ious = evaluate(chosen)
                curve.append(ious)
                if rnd == ROUNDS:
                    break
                if strategy == "random":
                    new = [rest[j] for j in pick_rng.choice(len(rest), PER_ROUND, replace=False)]
                else:
                    scores = [p[1] for p in p_pool]
                    if args.typical:
                        scores = list(np.asarray(scores) * typicality(np.stack([p[2] for p in p_pool])))
                    cand = candidates(scores, PER_ROUND)
                    picks = select_diverse([scores[j] for j in cand], np.stack([p_pool[j][2] for j in cand]),
                                           PER_ROUND, args.diversity)
                    new = [rest[cand[j]] for j in picks]
                chosen += new
            res[strategy].append(curve)
    return res


def summarise(per_class: dict[int, dict], seeds: int) -> dict:
    """mIoU per strategy, round and set (mean over classes of per-class IoU; then mean and spread over seeds)."""
    out = {}
    for strategy in ("suggest", "random"):
        out[strategy] = {}
        for where in ("pool", "held_out"):
            rounds = []
            for rnd in range(ROUNDS + 1):
                per_seed = [np.mean([r[strategy][s][rnd][where][0] / max(1, r[strategy][s][rnd][where][1])
                                     for r in per_class.values()]) for s in range(seeds)]
                rounds.append({"miou": 100 * float(np.mean(per_seed)), "seed_std": 100 * float(np.std(per_seed))})
            out[strategy][where] = rounds
    wins = [np.mean([r["suggest"][s][ROUNDS][w][0] / max(1, r["suggest"][s][ROUNDS][w][1])
                     - r["random"][s][ROUNDS][w][0] / max(1, r["random"][s][ROUNDS][w][1])
                     for s in range(seeds)]) for r in per_class.values() for w in ("held_out",)]
    out["classes_where_suggest_wins_held_out"] = f"{sum(d > 0 for d in wins)}/{len(wins)}"
    return out


def table(summary: dict) -> str:
    lines = ["| set | strategy | " + " | ".join(f"round {r} ({1 + PER_ROUND * r} shots)" for r in range(ROUNDS + 1))
             + " |", "|---|---|" + "---|" * (ROUNDS + 1)]
    for where in ("pool", "held_out"):
        for strategy in ("suggest", "random"):
            cells = [f"{x['miou']:.1f} ± {x['seed_std']:.1f}" for x in summary[strategy][where]]
            lines.append(f"| {where} | {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="active learning with --suggest vs random choice (synthetic test split)")
    ap.add_argument("--classes", type=int, nargs="*", default=list(range(20)))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--pool", type=int, default=20, help="unlabelled pool images per class")
    ap.add_argument("--held-out", type=int, default=12, help="held-out images per class")
    ap.add_argument("--mode", default="learned", choices=["learned", "training-free"])
    ap.add_argument("--text", action="store_true", help="give the class name too (text + examples)")
    ap.add_argument("--diversity", type=float, default=0.5)
    ap.add_argument("--typical", action="store_true", help="weight the uncertainty by typicality (experiment)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    from vlfss.data.synthetic import CLASS_NAMES
    from vlfss.data.synthetic_store import synthetic_dataset

    t0 = time.perf_counter()
    ds = synthetic_dataset("test")
    segs = fold_segmenters(args.mode, args.text)
    per_class = {}
    for c in args.classes:
        per_class[c] = run_class(segs[c // 5], ds, c, CLASS_NAMES[c], args, rng_seed=c)
        print(f"class {c} {CLASS_NAMES[c]} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    summary = summarise(per_class, args.seeds)
    text = table(summary)
    print(text)
    print(f"held-out, after {ROUNDS} rounds: suggest beats random (mean over seeds) in "
          f"{summary['classes_where_suggest_wins_held_out']} classes; {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "summary": summary, "per_class": per_class},
                                              indent=1, default=int) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
