"""Augmentations for (image, label map) pairs: pure numpy functions that take their randomness as an rng.

Images are H x W x 3 uint8, masks H x W uint8 label maps with ``ignore`` (255) for pixels that must not be
scored. Geometric transforms move image and mask together (bilinear for the image, nearest for the mask);
padding is 0 in the image and ``ignore`` in the mask. Nothing here mutates its inputs.

Mixing: ``cutmix`` pastes a box of pair b into pair a (image and mask alike) and returns the fraction of a
kept. ``mixup`` blends the images with weight ``lam`` for a; its ``mask`` is the *dominant* label map
(a's when lam >= 0.5, else b's), and ``soft_labels`` gives the per-pixel label weights
``lam * onehot(a) + (1 - lam) * onehot(b)`` for soft-target losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .perturb import Perturbation, apply_image

IGNORE = 255


def _check_pair(image: np.ndarray, mask: np.ndarray, what: str = "image") -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{what} must be an H x W x 3 uint8 array, got "
                         f"{getattr(image, 'shape', type(image))} {getattr(image, 'dtype', '')}")
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.shape != image.shape[:2]:
        raise InputError(f"{what} mask must be an H x W array matching the image {image.shape[:2]}, got "
                         f"{getattr(mask, 'shape', type(mask))}")


def _check_two_pairs(op: str, image_a: np.ndarray, mask_a: np.ndarray, image_b: np.ndarray, mask_b: np.ndarray,
                     alpha: float) -> None:
    """The input checks ``cutmix`` and ``mixup`` share: two valid, equal-size pairs and a positive ``alpha``."""
    _check_pair(image_a, mask_a, "image_a")
    _check_pair(image_b, mask_b, "image_b")
    if image_a.shape != image_b.shape:
        raise InputError(f"{op} needs equal sizes, got {image_a.shape} and {image_b.shape}; crop them first")
    if alpha <= 0:
        raise InputError(f"alpha must be > 0, got {alpha}")


def _check_prob(name: str, p: float) -> None:
    if not 0.0 <= float(p) <= 1.0:
        raise InputError(f"{name} must be in [0, 1], got {p}")


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (align_corners=False, as torch/PIL) of H x W x C uint8 to ``size`` = (h, w)."""
    h, w = image.shape[:2]
    oh, ow = int(size[0]), int(size[1])
    if (oh, ow) == (h, w):
        return image.copy()
    ys = np.clip((np.arange(oh) + 0.5) * h / oh - 0.5, 0, h - 1)
    xs = np.clip((np.arange(ow) + 0.5) * w / ow - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    img = image.astype(np.float32)
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bot = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return np.clip(top * (1 - fy) + bot * fy + 0.5, 0, 255).astype(np.uint8)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an H x W label map to ``size`` = (h, w) (labels are never blended)."""
    h, w = mask.shape
    oh, ow = int(size[0]), int(size[1])
    ys = np.minimum(((np.arange(oh) + 0.5) * h / oh).astype(int), h - 1)
    xs = np.minimum(((np.arange(ow) + 0.5) * w / ow).astype(int), w - 1)
    return mask[ys][:, xs].copy()


def hflip(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, p: float = 0.5):
    """Mirror image and mask left-right with probability ``p``; returns (image, mask) copies."""
    _check_pair(image, mask)
    _check_prob("p", p)
    if rng.random() < p:
        return image[:, ::-1].copy(), mask[:, ::-1].copy()
    return image.copy(), mask.copy()


def random_scale_crop(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    size: int | tuple[int, int],
    scale: tuple[float, float] = (0.5, 2.0),
    ignore: int = IGNORE,
):
    """Rescale by a factor drawn log-uniformly from ``scale``, pad if needed, take a random ``size`` crop.

    Returns (image, mask) of shape ``size`` (an int means square). Padding: 0 image, ``ignore`` mask.
    """
    _check_pair(image, mask)
    oh, ow = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if oh < 1 or ow < 1:
        raise InputError(f"crop size must be positive, got {size}")
    lo, hi = float(scale[0]), float(scale[1])
    if not 0 < lo <= hi:
        raise InputError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
    s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    h, w = mask.shape
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    img, msk = resize_image(image, (nh, nw)), resize_mask(mask, (nh, nw))
    ph, pw = max(0, oh - nh), max(0, ow - nw)
    if ph or pw:
        top, left = int(rng.integers(ph + 1)), int(rng.integers(pw + 1))
        img = np.pad(img, ((top, ph - top), (left, pw - left), (0, 0)), constant_values=0)
        msk = np.pad(msk, ((top, ph - top), (left, pw - left)), constant_values=ignore)
    y = int(rng.integers(img.shape[0] - oh + 1))
    x = int(rng.integers(img.shape[1] - ow + 1))
    return img[y:y + oh, x:x + ow].copy(), msk[y:y + oh, x:x + ow].copy()


def colour_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.05,
) -> np.ndarray:
    """Random brightness, contrast and saturation factors in [1-x, 1+x] and a hue rotation in [-hue, hue] turns.

    Applied in a random order, like torchvision's ColorJitter; the mask is unaffected, so only the image
    is taken and returned.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image must be an H x W x 3 uint8 array, got {getattr(image, 'shape', type(image))}")
    for nm, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if not 0 <= v <= 1:
            raise InputError(f"{nm} must be in [0, 1], got {v}")
    if not 0 <= hue <= 0.5:
        raise InputError(f"hue must be in [0, 0.5], got {hue}")
    img = image.astype(np.float32) / 255.0
    lum_w = np.array([0.299, 0.587, 0.114], np.float32)
    for op in rng.permutation(4):
        if op == 0 and brightness:
            img = img * rng.uniform(1 - brightness, 1 + brightness)
        elif op == 1 and contrast:
            mean = float((img @ lum_w).mean())
            img = (img - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
        elif op == 2 and saturation:
            gray = (img @ lum_w)[..., None]
            img = (img - gray) * rng.uniform(1 - saturation, 1 + saturation) + gray
        elif op == 3 and hue:
            # Rotate the chroma plane of YIQ by the hue angle (luma is unchanged).
            a = 2 * np.pi * rng.uniform(-hue, hue)
            to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
            rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]], np.float32)
            m = np.linalg.inv(to_yiq) @ rot @ to_yiq
            img = img @ m.T.astype(np.float32)
        img = np.clip(img, 0.0, 1.0)
    return (img * 255.0 + 0.5).astype(np.uint8)


def cutmix(
    image_a: np.ndarray,
    mask_a: np.ndarray,
    image_b: np.ndarray,
    mask_b: np.ndarray,
    rng: np.random.Generator,
    alpha: float = 1.0,
):
    """Paste a random box of (image_b, mask_b) into (image_a, mask_a); the box area is 1 - lam, lam ~ Beta.

    Returns (image, mask, lam) with lam the exact fraction of pixels that still come from a.
    """
    _check_two_pairs("cutmix", image_a, mask_a, image_b, mask_b, alpha)
    h, w = mask_a.shape
    lam = float(rng.beta(alpha, alpha))
    cut = np.sqrt(1.0 - lam)
    bh, bw = int(round(h * cut)), int(round(w * cut))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = np.clip([cy - bh // 2, cy - bh // 2 + bh], 0, h)
    x0, x1 = np.clip([cx - bw // 2, cx - bw // 2 + bw], 0, w)
    image, mask = image_a.copy(), mask_a.copy()
    image[y0:y1, x0:x1] = image_b[y0:y1, x0:x1]
    mask[y0:y1, x0:x1] = mask_b[y0:y1, x0:x1]
    return image, mask, 1.0 - float((y1 - y0) * (x1 - x0)) / (h * w)


@dataclass
class Mixed:
    """Result of ``mixup``: the blended image, the dominant mask, both source masks and a's weight."""

    image: np.ndarray  # H x W x 3 uint8: lam * a + (1 - lam) * b
    mask: np.ndarray  # H x W: mask_a if lam >= 0.5 else mask_b (the dominant label)
    mask_a: np.ndarray
    mask_b: np.ndarray
    lam: float


def mixup(
    image_a: np.ndarray,
    mask_a: np.ndarray,
    image_b: np.ndarray,
    mask_b: np.ndarray,
    rng: np.random.Generator,
    alpha: float = 0.4,
) -> Mixed:
    """Blend two equal-size pairs with lam ~ Beta(alpha, alpha); see the module docstring for the labels."""
    _check_two_pairs("mixup", image_a, mask_a, image_b, mask_b, alpha)
    lam = float(rng.beta(alpha, alpha))
    img = lam * image_a.astype(np.float32) + (1 - lam) * image_b.astype(np.float32)
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return Mixed(image, (mask_a if lam >= 0.5 else mask_b).copy(), mask_a.copy(), mask_b.copy(), lam)


def soft_labels(
    mask_a: np.ndarray, mask_b: np.ndarray, lam: float, num_labels: int, ignore: int = IGNORE
) -> np.ndarray:
    """Per-pixel label weights (num_labels x H x W float32) of a mix: lam on a's label, 1 - lam on b's.

    An ignored pixel contributes no weight from its source and the other source's weight is renormalised
    to 1; a pixel ignored in both has all-zero weights (skip it in the loss).
    """
    if mask_a.shape != mask_b.shape:
        raise InputError(f"masks differ in size: {mask_a.shape} vs {mask_b.shape}")
    if not 0.0 <= lam <= 1.0:
        raise InputError(f"lam must be in [0, 1], got {lam}")
    out = np.zeros((num_labels,) + mask_a.shape, np.float32)
    va, vb = mask_a != ignore, mask_b != ignore
    for m in (mask_a, mask_b):
        bad = (m != ignore) & (m >= num_labels)
        if bad.any():
            raise InputError(f"mask holds label {int(m[bad].max())} >= num_labels={num_labels}")
    wa = np.where(va, lam, 0.0).astype(np.float32)
    wb = np.where(vb, 1.0 - lam, 0.0).astype(np.float32)
    total = wa + wb
    norm = np.where(total > 0, total, 1.0)
    wa, wb = wa / norm, wb / norm
    yy, xx = np.nonzero(va)
    np.add.at(out, (mask_a[va].astype(np.int64), yy, xx), wa[va])
    yy, xx = np.nonzero(vb)
    np.add.at(out, (mask_b[vb].astype(np.int64), yy, xx), wb[vb])
    return out


def degrade(image: np.ndarray, rng: np.random.Generator, blur: float = 0.0, blur_sigma: float = 1.5,
            jpeg: float = 0.0, jpeg_quality: int = 20, resample: float = 0.0, resample_min: float = 0.5) -> np.ndarray:
    """The image after the corruptions real photos carry, each with its own chance: a lower resolution (resized
    by a factor in [resample_min, 1] and back), a Gaussian blur (sigma uniform in (0, blur_sigma]) and JPEG
    compression (quality uniform in jpeg_quality..95). The same code as the evaluation's ``--perturb`` suite
    (``vlfss.data.perturb``); the label map is unchanged (the size is kept). No rng draw for a zero chance."""
    _check_prob("resample", resample)
    _check_prob("blur", blur)
    _check_prob("jpeg", jpeg)
    h, w = image.shape[:2]
    if resample and rng.random() < resample:
        f = float(rng.uniform(resample_min, 1.0))
        small = apply_image(Perturbation("scale", f), image)
        image = resize_image(small, (h, w))
    if blur and rng.random() < blur:
        image = apply_image(Perturbation("blur", float(rng.uniform(0.0, blur_sigma)) or 1e-3), image)
    if jpeg and rng.random() < jpeg:
        image = apply_image(Perturbation("jpeg", float(rng.integers(jpeg_quality, 96))), image)
    return image
