"""Pictures of results: label-map PNGs with a palette, overlays, confidence maps, side-by-side panels."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def palette(n: int = 256) -> np.ndarray:
    """PASCAL VOC colour map (n x 3 uint8): label 0 black, 255 white-ish for ignore. A fresh copy per call."""
    return _palette(n).copy()


@functools.lru_cache(maxsize=4)
def _palette(n: int) -> np.ndarray:  # 1.3 ms to build: once, not once per label PNG
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


@functools.lru_cache(maxsize=1)
def _palette_list() -> list[int]:
    return _palette(256).flatten().tolist()


def label_png(labels: np.ndarray) -> Image.Image:
    """H x W label map -> palette ('P' mode) PIL image whose pixel values are the labels."""
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(_palette_list())
    return img


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over the image where labels > 0; draws class boundaries in white."""
    pal = _palette(256)
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


def side_by_side(panels: list[np.ndarray], gap: int = 4, titles: list[str] | None = None,
                 title_size: int = 18) -> np.ndarray:
    """Concatenate H x W x 3 panels horizontally (heights padded to the tallest); ``titles`` adds a white band
    above them with each panel's title centred over it (PIL's default font, so no matplotlib is needed)."""
    if titles is not None and len(titles) != len(panels):
        raise ValueError(f"{len(titles)} titles for {len(panels)} panels")
    h = max(p.shape[0] for p in panels)
    cols = []
    for i, p in enumerate(panels):
        pad = np.full((h, p.shape[1], 3), 255, np.uint8)
        pad[: p.shape[0]] = p if p.ndim == 3 else np.repeat(p[..., None], 3, 2)
        cols.append(pad)
        if i < len(panels) - 1:
            cols.append(np.full((h, gap, 3), 255, np.uint8))
    row = np.concatenate(cols, axis=1)
    if titles is None:
        return row
    return np.concatenate([_title_band([p.shape[1] for p in panels], gap, titles, title_size), row], axis=0)


def _title_band(widths: list[int], gap: int, titles: list[str], size: int) -> np.ndarray:
    """A white band as wide as the panels and their gaps, each title in black centred over its panel."""
    font = ImageFont.load_default(size=size)
    band = Image.new("RGB", (sum(widths) + gap * (len(widths) - 1), size + size // 2), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    x = 0
    for w, title in zip(widths, titles):
        left, top, right, bottom = draw.textbbox((0, 0), title, font=font)
        draw.text((x + (w - right - left) // 2, (band.height - bottom - top) // 2), title, fill=(0, 0, 0), font=font)
        x += w + gap
    return np.asarray(band)
