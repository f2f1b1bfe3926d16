"""Which images a person should label next: the model's uncertainty, with diversity.

Score (``uncertainty``): the mean normalised entropy (0 sure .. 1 uniform over background + classes) over the
pixels where a mistake would show: the predicted objects, a band around their boundaries (3% of the long side)
and every pixel the model gives at least 0.25 probability of being some object. An image with no such pixel
scores its mean entropy. Large objects do not outweigh small ones, and a confident empty background does not
dilute the doubt about the one object in the picture.

Choice (``select_diverse``): greedy. Among the ``CANDIDATES_PER_PICK * K`` most uncertain images, repeatedly take
the one maximising ``score / best_score - diversity * max(0, cos(f, f_chosen))``, where ``f`` is the image's
mean text-aligned patch embedding, centred on the candidates' mean and L2-normalised; near-duplicates of an
image already chosen (cosine near 1) lose ``diversity`` of their score, so they are not all chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from ..io_utils import atomic_save_image, atomic_write_text
from ..modeling.types import Encoded
from ..viz import overlay

log = logging.getLogger(__name__)

BAND = 0.03  # boundary band around predicted objects, as a fraction of the image's long side
OBJECT_PROB = 0.25  # pixels with at least this probability of being some object count as doubtful
CANDIDATES_PER_PICK = 4  # the greedy choice looks at the 4K most uncertain images (at least MIN_CANDIDATES)
MIN_CANDIDATES = 32
TILE = 192  # contact-sheet thumbnail side


def uncertainty(probs: Tensor, labels: Tensor, entropy: Tensor, band: float = BAND,
                object_prob: float = OBJECT_PROB) -> float:
    """The documented score of one prediction: probs (N+1) x H x W, labels H x W, entropy H x W in [0, 1]."""
    h, w = labels.shape
    r = max(1, round(band * max(h, w)))
    fg = (labels > 0).float()[None, None]
    grown = F.max_pool2d(fg, 2 * r + 1, stride=1, padding=r)[0, 0] > 0
    region = grown | ((1 - probs[0]) >= object_prob)
    return float(entropy[region].mean()) if bool(region.any()) else float(entropy.mean())


def pooled_feature(enc: Encoded) -> np.ndarray:
    """An image's mean text-aligned patch embedding (cells L2-normalised first), D floats."""
    z = F.normalize(enc.z.float().flatten(1), dim=0)  # D x hw
    return z.mean(1).numpy()


def select_diverse(scores: Sequence[float], feats: np.ndarray, k: int, diversity: float) -> list[int]:
    """Greedy uncertainty-with-diversity choice of ``k`` indices into ``scores`` (see the module docstring)."""
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    if n == 0 or k <= 0:
        return []
    f = np.asarray(feats, dtype=np.float64).reshape(n, -1)
    f = f - f.mean(0, keepdims=True)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    rel = s / s.max() if s.max() > 0 else s
    closest = np.zeros(n)  # max(0, cosine) to the nearest image already chosen
    chosen: list[int] = []
    for _ in range(min(k, n)):
        gain = rel - diversity * closest
        gain[chosen] = -np.inf
        best = int(np.argmax(gain))  # first maximum: ties go to the earlier image
        chosen.append(best)
        closest = np.maximum(closest, np.clip(f @ f[best], 0, None))
    return chosen


def candidates(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the most uncertain images the greedy choice considers (stable order on ties)."""
    n_cand = max(CANDIDATES_PER_PICK * k, MIN_CANDIDATES)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return order[:n_cand]


def contact_sheet(images: list[np.ndarray], captions: list[str], columns: int = 4) -> np.ndarray:
    """Thumbnails (aspect kept, on white tiles of TILE px) with a caption under each, in a grid."""
    from PIL import Image, ImageDraw

    cols = max(1, min(columns, len(images)))
    rows = -(-len(images) // cols)
    cap = 16
    sheet = Image.new("RGB", (cols * (TILE + 4) + 4, rows * (TILE + cap + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (img, text) in enumerate(zip(images, captions)):
        scale = TILE / max(img.shape[:2])
        size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
        thumb = Image.fromarray(img).resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)
        x, y = 4 + (i % cols) * (TILE + 4), 4 + (i // cols) * (TILE + cap + 4)
        sheet.paste(thumb, (x + (TILE - thumb.width) // 2, y + (TILE - thumb.height) // 2))
        draw.text((x + 2, y + TILE + 2), text[:34], fill=(0, 0, 0))
    return np.asarray(sheet)


def write_suggestions(out: Path, chosen: list[dict], images: list[np.ndarray]) -> None:
    """suggest.txt (one image path a line, most useful first) and suggest.png (the contact sheet)."""
    from PIL import Image

    atomic_write_text(out / "suggest.txt", "".join(r["path"] + "\n" for r in chosen))
    tiles, captions = [], []
    for rank, (r, img) in enumerate(zip(chosen, images), 1):
        labels = np.asarray(Image.open(out / "labels" / f"{r['name']}.png"))
        tiles.append(overlay(img, labels) if labels.shape == img.shape[:2] else img)
        captions.append(f"{rank}. {Path(r['name']).name} u={r['uncertainty']:.3f}")
    if tiles:
        atomic_save_image(Image.fromarray(contact_sheet(tiles, captions)), out / "suggest.png")
