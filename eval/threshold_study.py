"""How much of the supports' threshold offset to apply (``segmenter.calibrate_shrink``), measured offline.

For K-shot episodes of the synthetic benchmark (learned fold heads, test split, seed 0) it records, once per
request, the query's log-odds with the fixed threshold and every support's held-out log-odds (segmented from the
other K-1 supports: what ``calibrate=supports`` computes). It then scores, without re-running the model, the
mean class-wise mIoU over folds when the chosen offset is applied in full, shrunk by each factor in
``--shrinks``, or not at all. Masks are refined with the model's default, ``pamr-area`` (here the supports do not
pick the refinement). ``calibrate_shrink`` = 0.5 is the default because of this study (docs/inference.md
"Calibration on the supports").

    python eval/threshold_study.py                                  # 150 episodes per fold, 5 shots, all folds
    python eval/threshold_study.py --episodes 20 --folds 0 --shrinks 0.5 1   # a quick check
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vlfss.data import build_benchmark  # noqa: E402
from vlfss.data.episodes import EpisodeSampler, load_episode  # noqa: E402
from vlfss.evaluation.harness import episode_request  # noqa: E402
from vlfss.modeling import functional as fn  # noqa: E402
from vlfss.modeling.config import SegmenterConfig  # noqa: E402
from vlfss.segmenter import Segmenter  # noqa: E402

INPUTS = ("examples", "text+examples")


def record(fold: int, shots: int, episodes: int) -> list[dict]:
    """Per request: query log-odds (fixed threshold), the offset leave-one-out picks (unshrunk), image and mask."""
    head = REPO / "vlfss" / "assets" / f"head-vlfss-tiny-fold{fold}.safetensors"
    # calibrate_shrink=1: request.offsets is the full offset leave-one-out picked; the fixed answer is without it
    seg = Segmenter.from_config(SegmenterConfig(model="vlfss-tiny", mode="learned", head_path=str(head),
                                                calibrate="supports", calibrate_shrink=1.0, calibrate_refine=[]))
    bench = build_benchmark("synthetic", None, "test", fold)
    rows = []
    for spec in EpisodeSampler(bench.dataset, bench.novel_classes(fold), 1, shots, 0, episodes).specs():
        ep = load_episode(bench.dataset, spec)
        query = seg.encode([ep.query_image], seg.head_variant)[0]
        for inp in INPUTS:
            request = seg.prepare(**episode_request(ep, inp, shots), mode="learned")
            offset = float(request.offsets[0]) if request.offsets is not None else 0.0
            rows.append({"fold": fold, "input": inp, "cls": ep.class_ids[0], "image": ep.query_image,
                         "target": torch.from_numpy(ep.query_mask).long(),
                         "logits": seg.logits(query, request) - offset, "offset": offset})
    return rows


def miou(seg: Segmenter, rows: list[dict], shrink: float) -> dict[int, float]:
    """Class-wise mIoU per fold with ``shrink`` x each request's offset, refined as the model's default."""
    inter, union = defaultdict(int), defaultdict(int)
    for r in rows:
        lg = seg.refine_logits(r["image"], fn.nway_logits((r["logits"] + shrink * r["offset"]).unsqueeze(0))[0])
        pred, t = lg.argmax(0) == 1, r["target"]
        valid, fg = t != 255, t == 1
        inter[(r["fold"], r["cls"])] += int((pred & fg & valid).sum())
        union[(r["fold"], r["cls"])] += int(((pred | fg) & valid).sum())
    per = defaultdict(list)
    for (fold, _), u in union.items():
        per[fold].append(inter[(fold, _)] / u if u else 1.0)
    return {f: 100 * float(np.mean(v)) for f, v in sorted(per.items())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--episodes", type=int, default=150, help="episodes per fold")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--shrinks", type=float, nargs="+", default=[0.25, 0.4, 0.5, 0.6, 0.75, 1.0])
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    rows = [r for f in args.folds for r in record(f, args.shots, args.episodes)]
    seg = Segmenter.from_config(SegmenterConfig(model="vlfss-tiny", mode="training-free"))  # refinement only
    print(f"{args.episodes} episodes per fold, {args.shots} shots, folds {args.folds}; mIoU (%) per fold and mean")
    for inp in INPUTS:
        mine = [r for r in rows if r["input"] == inp]
        base = miou(seg, mine, 0.0)
        print(f"{inp:14s} shrink 0 (fixed)  " + " ".join(f"{v:5.1f}" for v in base.values())
              + f"  mean {np.mean(list(base.values())):5.2f}")
        for s in args.shrinks:
            m = miou(seg, mine, s)
            gain = np.mean(list(m.values())) - np.mean(list(base.values()))
            print(f"{inp:14s} shrink {s:<10.2f}" + " ".join(f"{v:5.1f}" for v in m.values())
                  + f"  mean {np.mean(list(m.values())):5.2f} ({gain:+.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
