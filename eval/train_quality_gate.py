"""Fit and check the embedded tiny CLIP's quality gate (vlfss/assets/vlfss-tiny-gate.safetensors).

The gate decides which images the robust image tower encodes instead of the sharp one
(``SegmenterConfig.robust_fallback``; docs/tiny-clip.md "The quality gate"). It is a small MLP (one hidden layer
of 128, GELU) on the sharp tower's taps (each channel's token mean and spread), fitted on the synthetic **train**
split: every image clean (label 0) and under two random corruptions (label 1): Gaussian blur sigma 0.6..1.6,
rescaling x0.55..0.85 or x1.25..2 (resized back as the segmenter does), JPEG quality 10..40; the slide windows of
every tenth large training scene are clean examples too. Its threshold is the highest score of any clean **val**
image or val large-scene window plus ``--margin``, so sharp images keep their features. It is then checked on the
**test** split: the clean images flagged (the README table is unchanged only if none is), the windows of every
fifth large test scene, and the share flagged under each corruption of ``vlfss eval --perturb``. The MLP's size
and weight decay were chosen over a linear model by the share of corrupted **val** images flagged.

    python eval/train_quality_gate.py                      # writes the asset and runs/quality_gate.json
    python eval/train_quality_gate.py --out /tmp/gate.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vlfss.data import build_benchmark  # noqa: E402
from vlfss.data.perturb import apply_image, parse_perturbation  # noqa: E402
from vlfss.io_utils import atomic_write_json  # noqa: E402
from vlfss.modeling import slide  # noqa: E402
from vlfss.modeling.backbones.tiny import GATE  # noqa: E402
from vlfss.modeling.config import SegmenterConfig  # noqa: E402
from vlfss.modeling.quality_gate import QualityGate, gate_features  # noqa: E402
from vlfss.segmenter import Segmenter  # noqa: E402

CHECKS = ("blur:0.5", "blur:1", "blur:1.5", "scale:0.75", "scale:1.5", "jpeg:30", "jpeg:60", "noise:12", "gray")


def random_corruption(rng: np.random.Generator) -> str:
    kind = rng.integers(3)
    if kind == 0:
        return f"blur:{rng.uniform(0.6, 1.6):.2f}"
    if kind == 1:
        f = rng.uniform(0.55, 0.85) if rng.random() < 0.5 else rng.uniform(1.25, 2.0)
        return f"scale:{f:.2f}"
    return f"jpeg:{int(rng.integers(10, 41))}"


def features(seg: Segmenter, image: np.ndarray) -> torch.Tensor:
    """The gate's features of one image as the segmenter encodes it (resized to the encoder's input)."""
    enc = seg.encode([image])[0]
    return gate_features([t[None] for t in enc.taps])[0]


def window_features(seg: Segmenter, image: np.ndarray) -> torch.Tensor:
    """The gate's features of each of a large image's slide windows (what the gate sees under slide inference)."""
    canvas, _, boxes = seg._plan(*image.shape[:2], None)  # the windows the segmenter would encode
    if boxes is None:
        raise ValueError(f"a {image.shape[0]}x{image.shape[1]} scene is not slid with {seg.cfg.inference=}")
    batch = slide.cut_windows(seg._to_input(image, canvas), boxes, seg.window_geometry()[0])
    with torch.inference_mode():
        taps = seg.backbone.dense(batch, seg.variant).taps
    return gate_features(taps)


def fit(x: torch.Tensor, y: torch.Tensor, hidden: int, weight_decay: float, steps: int,
        seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    """Standardise and fit a one-hidden-layer MLP (AdamW, batches of 512): (mean, std, mlp)."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-6
    a = (x - mean) / std
    mlp = torch.nn.Sequential(torch.nn.Linear(a.shape[1], hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.AdamW(mlp.parameters(), 1e-3, weight_decay=weight_decay)
    for _ in range(steps):
        idx = torch.randint(0, len(a), (512,))
        loss = F.binary_cross_entropy_with_logits(mlp(a[idx])[:, 0], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mean, std, mlp.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(GATE))
    ap.add_argument("--report", default="runs/quality_gate.json")
    ap.add_argument("--margin", type=float, default=1.0, help="log-odds above the highest clean val score")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    seg = Segmenter.from_config(SegmenterConfig(model="vlfss-tiny", mode="training-free", robust_fallback=False,
                                                feature_cache_items=8))
    train = build_benchmark("synthetic", None, "train", 0).dataset
    xs, ys = [], []
    for i in range(len(train)):
        img = train.load_image(i)
        xs.append(features(seg, img))
        ys.append(0.0)
        for _ in range(2):
            xs.append(features(seg, apply_image(parse_perturbation(random_corruption(rng)), img, seed=i)))
            ys.append(1.0)
    large_train = build_benchmark("synthetic-large", None, "train", 0).dataset
    for i in range(0, len(large_train), 10):  # sharp windows of large scenes are clean too
        for f in window_features(seg, large_train.load_image(i)):
            xs.append(f)
            ys.append(0.0)
    mean, std, mlp = fit(torch.stack(xs), torch.tensor(ys), args.hidden, args.weight_decay, args.steps, args.seed)
    gate = QualityGate(mean, std, mlp[0].weight.detach(), mlp[0].bias.detach(), mlp[2].weight.detach()[0],
                       float(mlp[2].bias.detach()), 0.0, seg.backbone.gate_id())

    def score(f: torch.Tensor) -> torch.Tensor:  # one image's features (F) or a batch's (B x F)
        return gate.score_features(f.reshape(-1, f.shape[-1])).reshape(f.shape[:-1])

    val = build_benchmark("synthetic", None, "val", 0).dataset
    val_clean = torch.stack([score(features(seg, val.load_image(i))) for i in range(len(val))])
    large_val = build_benchmark("synthetic-large", None, "val", 0).dataset
    val_windows = torch.cat([score(window_features(seg, large_val.load_image(i))) for i in range(0, len(large_val), 2)])
    gate.threshold = float(torch.cat([val_clean, val_windows]).max()) + args.margin
    test = build_benchmark("synthetic", None, "test", 0).dataset
    report: dict = {"threshold": gate.threshold, "val_clean_max": float(val_clean.max()),
                    "val_large_window_max": float(val_windows.max()),
                    "train_images": len(train), "val_images": len(val), "test_images": len(test)}
    flagged = {name: 0 for name in ("clean", *CHECKS)}
    for i in range(len(test)):
        img = test.load_image(i)
        flagged["clean"] += int(score(features(seg, img)) > gate.threshold)
        for spec in CHECKS:
            p = parse_perturbation(spec)
            flagged[spec] += int(score(features(seg, apply_image(p, img, seed=i))) > gate.threshold)
    report["test_flagged"] = {k: round(v / len(test), 4) for k, v in flagged.items()}
    report["test_clean_flagged_images"] = flagged["clean"]
    large = build_benchmark("synthetic-large", None, "test", 0).dataset
    n_win = n_flag = 0
    for i in range(0, len(large), 5):
        s = score(window_features(seg, large.load_image(i))) > gate.threshold
        n_win, n_flag = n_win + s.numel(), n_flag + int(s.sum())
    report["large_scene_windows"] = {"windows": n_win, "flagged": n_flag}
    gate.save(args.out, {"fit": "eval/train_quality_gate.py", "report": report})
    atomic_write_json(args.report, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
