"""Pictures of results: label-map PNGs with a palette, overlays, confidence maps, side-by-side panels."""

from __future__ import annotations

import numpy as np


def palette(n: int = 256) -> np.ndarray:
    """PASCAL VOC colour map (n x 3 uint8): label 0 black, 255 white-ish for ignore."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def label_png(labels: np.ndarray):
    """H x W label map -> palette ('P' mode) PIL image whose pixel values are the labels."""
    from PIL import Image

    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(palette().flatten().tolist())
    return img


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over the image where labels > 0; draws class boundaries in white."""
    pal = palette()
    out = image.astype(np.float32).copy()
    fg = labels > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * pal[labels[fg]].astype(np.float32)
    edge = np.zeros_like(fg)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    out[edge] = 255
    return out.clip(0, 255).astype(np.uint8)


def heatmap(values: np.ndarray) -> np.ndarray:
    """H x W values in [0, 1] -> H x W x 3 uint8 (dark blue low .. yellow high), no matplotlib needed."""
    v = np.clip(values, 0, 1)[..., None]
    lo, mid, hi = np.array([20, 20, 90.0]), np.array([200, 40, 80.0]), np.array([250, 230, 60.0])
    col = np.where(v < 0.5, lo + (mid - lo) * (v / 0.5), mid + (hi - mid) * ((v - 0.5) / 0.5))
    return col.astype(np.uint8)


def side_by_side(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Concatenate H x W x 3 panels horizontally (heights padded to the tallest)."""
    h = max(p.shape[0] for p in panels)
    cols = []
    for i, p in enumerate(panels):
        pad = np.full((h, p.shape[1], 3), 255, np.uint8)
        pad[: p.shape[0]] = p if p.ndim == 3 else np.repeat(p[..., None], 3, 2)
        cols.append(pad)
        if i < len(panels) - 1:
            cols.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(cols, axis=1)
