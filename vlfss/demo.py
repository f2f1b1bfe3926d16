"""`vlfss demo`: a generated scene segmented with text only, with one example, and with both (offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data.synthetic import CLASS_NAMES, SyntheticConfig, generate_scene
from .io_utils import atomic_save_image, atomic_write_text
from .segmenter import build_segmenter
from .viz import heatmap, overlay, side_by_side

PANEL_TITLES = ("query", "ground truth", "text", "one-shot", "text+one-shot", "confidence")  # side_by_side.png


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 1.0


def _pick(seed: int, cfg: SyntheticConfig):
    """A query with a clearly visible object, and a support image of the same class from another scene."""
    i = 0
    while True:
        q = generate_scene(seed, 10_000 + i, cfg)
        areas = {c: int((q.mask == c + 1).sum()) for c in q.class_ids}
        cls = max(areas, key=areas.get)
        if areas[cls] >= 0.08 * q.mask.size:
            break
        i += 1
    j = 0
    while True:
        s = generate_scene(seed, 20_000 + j, cfg)
        if cls in s.class_ids and (s.mask == cls + 1).sum() >= 0.05 * s.mask.size:
            return q, s, cls
        j += 1


def run_demo(out: Path, seed: int = 0, model: str = "vlfss-tiny", pretrained: str | None = None) -> dict:
    """Write overlays, a confidence map and a side-by-side panel under ``out``; print and return a summary."""
    import json

    from PIL import Image

    cfg = SyntheticConfig()
    q, s, cls = _pick(seed, cfg)
    name = CLASS_NAMES[cls]
    seg = build_segmenter(model, pretrained=pretrained)
    support = (s.image, (s.mask == cls + 1).astype(np.uint8))
    runs = {
        "text": seg.segment(q.image, texts=[name]),
        "one-shot": seg.segment(q.image, supports=[support]),
        "text+one-shot": seg.segment(q.image, texts=[name], supports=[support]),
    }
    gt = q.mask == cls + 1
    scale = 3
    def big(a: np.ndarray) -> np.ndarray:
        return np.kron(a, np.ones((scale, scale, 1) if a.ndim == 3 else (scale, scale), a.dtype))

    panels = [big(q.image), big(overlay(q.image, gt.astype(np.int64)))]
    summary = {"seed": seed, "class": name, "mode": seg.mode, "model": seg.backbone.model_id, "results": {}}
    for key, o in runs.items():
        pred = o.masks[0].numpy()
        summary["results"][key] = {"iou": round(_iou(pred, gt), 4), "area_frac": round(float(pred.mean()), 4),
                                   "mean_confidence": round(float(o.confidence.mean()), 4)}
        ov = overlay(q.image, o.labels.numpy())
        atomic_save_image(Image.fromarray(big(ov)), out / f"overlay_{key}.png")
        panels.append(big(ov))
    conf = heatmap(runs["text+one-shot"].confidence.numpy())
    atomic_save_image(Image.fromarray(big(conf)), out / "confidence_text+one-shot.png")
    panels.append(big(conf))
    atomic_save_image(Image.fromarray(big(s.image)), out / "support.png")
    atomic_save_image(Image.fromarray(side_by_side(panels, titles=list(PANEL_TITLES))), out / "side_by_side.png")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    print(f"vlfss demo: class '{name}' ({summary['mode']} mode, {seg.backbone.model_id})")
    print("  panels: " + " | ".join(PANEL_TITLES))
    for key, r in summary["results"].items():
        print(f"  {key:14s} IoU {r['iou']:.3f}  predicted area {100 * r['area_frac']:.1f}%  "
              f"mean confidence {r['mean_confidence']:.3f}")
    print(f"  wrote {out}/side_by_side.png and overlays, confidence map, summary.json")
    return summary
