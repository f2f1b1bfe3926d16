"""The forms a user's segmentation request arrives in, and their normalisation (before any model work).

Images may be paths, PIL images or arrays; supports one class's (image, mask) pairs or one list per class;
negatives pairs and/or names. ``Segmenter`` turns these into one canonical shape here, so a bad argument fails
with one line naming it before anything is encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .data.image import ImageLike, load_image
from .errors import InputError

Support = tuple[ImageLike, ImageLike]  # an (image, mask) example
TextsArg = Sequence[str | None] | str | None  # one name / prompt per class (None: a class given by examples only)
SupportsArg = Sequence[Support] | Sequence[Sequence[Support]] | None  # one class's pairs, or one list per class
NegativesArg = Sequence[Support | str] | None  # (image, mask) pairs and/or names of what NOT to segment


def load_images(images: Sequence[ImageLike]) -> list[np.ndarray]:
    """Decode every image (RGB uint8), named in errors by its path or its position."""
    return [load_image(x, str(x) if isinstance(x, (str, Path)) else f"image {i + 1}") for i, x in enumerate(images)]


def normalise_supports(supports: SupportsArg, n_texts: int) -> list[list[Support]]:
    """Accept None, [(img, mask), ...] (one class) or [[(img, mask), ...], ...] (one list per class)."""
    if supports is None:
        return []
    if not isinstance(supports, (list, tuple)):
        raise InputError("supports must be a list of (image, mask) pairs, or one such list per class")
    if len(supports) == 0:
        return []
    first = supports[0]
    is_pair = isinstance(first, tuple) and len(first) == 2 and not isinstance(first[0], (list, tuple))
    if is_pair and n_texts <= 1:
        return [list(supports)]
    return [list(s) for s in supports]
