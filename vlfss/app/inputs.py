"""What the page sends, decoded and checked: query files, painted or uploaded support masks, size limits.

Every problem is an ``InputError`` with the CLI's message; a message names the file the user uploaded, never
the server's temporary path. Only paths Gradio hands over (its upload cache) or the app's own examples reach
these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.image import load_image, load_mask
from ..errors import InputError


@dataclass(frozen=True)
class Limits:
    """What one request may carry (the upload size itself is capped by Gradio: ``max_upload_mb``)."""

    max_upload_mb: float = 10.0  # largest file accepted by the upload route, MiB
    max_image_mp: float = 16.0  # largest image in megapixels (width x height / 1e6), checked before decoding
    max_queries: int = 16  # query images per request


def display_name(path: str | Path) -> str:
    """The name the user gave the file (Gradio keeps it as the last part of its cache path)."""
    return Path(path).name


def _renamed(err: InputError, path: str | Path) -> InputError:
    """The same error with the server's temporary path replaced by the uploaded file's name."""
    return InputError(str(err).replace(str(path), display_name(path)))


def check_pixels(width: int, height: int, what: str, limits: Limits) -> None:
    """Refuse an image above ``limits.max_image_mp``, naming the limit."""
    mp = width * height / 1e6
    if mp > limits.max_image_mp:
        raise InputError(f"{what} is {width}x{height} ({mp:.1f} megapixels), above this app's limit of "
                         f"{limits.max_image_mp:g} megapixels; downscale it (or start the app with a larger "
                         "--max-image-mp)")


def read_image_file(path: str | Path, what: str, limits: Limits) -> np.ndarray:
    """An uploaded image file -> H x W x 3 uint8, with the size checked from its header before decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # lazy: reads the header only
            check_pixels(im.width, im.height, f"{what} ({display_name(path)})", limits)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        pass  # load_image below gives the CLI's message for these
    try:
        return load_image(str(path))
    except InputError as e:
        raise _renamed(e, path) from None


def read_queries(paths: list[str | Path] | None, limits: Limits) -> list[tuple[str, np.ndarray]]:
    """(file name, image) for each uploaded query, in order."""
    paths = list(paths or [])
    if not paths:
        raise InputError("no query image: upload one or more images to segment")
    if len(paths) > limits.max_queries:
        raise InputError(f"{len(paths)} query images; this app takes at most {limits.max_queries} per request")
    return [(display_name(p), read_image_file(p, f"query image {i + 1}", limits)) for i, p in enumerate(paths)]


def _as_rgb(a: np.ndarray, what: str) -> np.ndarray:
    return load_image(np.asarray(a), what)


def painted_mask(layers: list[Any], shape: tuple[int, int], what: str) -> np.ndarray:
    """The union of the editor's paint layers -> H x W {0, 1}: a pixel is painted where a layer's alpha > 0
    (the eraser clears alpha); a layer without alpha counts where it is non-zero."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    for layer in layers:
        a = np.asarray(layer)
        if a.ndim == 3 and a.shape[2] in (2, 4):
            painted = a[..., -1] > 0
        elif a.ndim == 3:
            painted = a.max(axis=2) > 0
        elif a.ndim == 2:
            painted = a > 0
        else:
            raise InputError(f"{what}: a paint layer of shape {a.shape} is not an image")
        if painted.shape != (h, w):
            raise InputError(f"{what}: mask size {painted.shape[1]}x{painted.shape[0]} differs from its image "
                             f"{w}x{h}; resize the mask to the image")
        mask |= painted.astype(np.uint8)
    return mask


def read_example(editor: dict | None, mask_file: str | Path | None, what: str,
                 limits: Limits) -> tuple[np.ndarray, np.ndarray] | None:
    """An (image, mask) pair from the image editor: its background, and either the uploaded mask file or the
    painted layers. None when no image was given (and no mask file either)."""
    background = (editor or {}).get("background")
    if background is None:
        if mask_file:
            raise InputError(f"{what}: a mask file but no image; upload the image the mask belongs to")
        return None
    image = _as_rgb(background, f"{what} image")
    check_pixels(image.shape[1], image.shape[0], f"{what} image", limits)
    if mask_file:
        try:
            mask = load_mask(str(mask_file), image.shape, f"{what} mask ({mask_file})")
        except InputError as e:
            raise _renamed(e, mask_file) from None
        return image, mask
    mask = painted_mask(list((editor or {}).get("layers") or []), image.shape[:2], f"{what} mask")
    return image, load_mask(mask, image.shape, f"{what} mask")  # the CLI's checks: empty -> its message


def class_names_text(text: str | None) -> list[str]:
    """Comma- or newline-separated names -> a list without blanks or repeats."""
    names = [t.strip() for t in (text or "").replace("\n", ",").split(",")]
    return list(dict.fromkeys(n for n in names if n))
