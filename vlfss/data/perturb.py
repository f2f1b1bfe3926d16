"""Image corruptions for the robustness suite: ``jpeg:Q``, ``blur:SIGMA``, ``noise:SIGMA``, ``scale:F``, ``gray``.

Each is a pure function of a uint8 RGB image (and, for ``scale``, its label map) and is deterministic for a given
seed, so every row of an evaluation sees the same corrupted episodes. Specs are parsed once with clear errors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from ..errors import InputError
from .episodes import Episode

KINDS = {"jpeg": "JPEG quality 1..95", "blur": "Gaussian blur sigma in pixels, > 0", "noise":
         "sensor noise sigma in 0..255 grey levels, > 0", "scale": "resize factor, 0.1..4", "gray": "no value"}


@dataclass(frozen=True)
class Perturbation:
    """One corruption: ``kind`` (a KINDS key) and its ``value`` (None for gray)."""

    kind: str
    value: float | None = None

    @property
    def name(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


def parse_perturbation(spec: str) -> Perturbation:
    """``"jpeg:30"`` -> Perturbation("jpeg", 30.0); one-line InputError naming the spec and the allowed values."""
    kind, _, raw = str(spec).partition(":")
    allowed = ", ".join(f"{k} ({v})" for k, v in KINDS.items())
    if kind not in KINDS:
        raise InputError(f"--perturb {spec!r}: unknown corruption {kind!r}; use one of {allowed}")
    if kind == "gray":
        if raw:
            raise InputError(f"--perturb {spec!r}: gray takes no value; write 'gray'")
        return Perturbation("gray")
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"--perturb {spec!r}: {kind} needs a number ({KINDS[kind]}), e.g. {kind}:2") from None
    ok = {"jpeg": 1 <= value <= 95 and value == int(value), "blur": value > 0, "noise": value > 0,
          "scale": 0.1 <= value <= 4}[kind]
    if not ok or not np.isfinite(value):
        raise InputError(f"--perturb {spec!r}: {value:g} is out of range for {kind} ({KINDS[kind]})")
    return Perturbation(kind, value)


def apply_image(p: Perturbation, image: np.ndarray, seed: int = 0) -> np.ndarray:
    """The corrupted H' x W' x 3 uint8 image (H', W' differ from H, W only for ``scale``)."""
    img = Image.fromarray(image)
    if p.kind == "jpeg":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(p.value))
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).copy()
    if p.kind == "blur":
        return np.asarray(img.filter(ImageFilter.GaussianBlur(radius=float(p.value)))).copy()
    if p.kind == "noise":
        rng = np.random.default_rng(seed)
        noisy = image.astype(np.float32) + rng.normal(0.0, float(p.value), image.shape)
        return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
    if p.kind == "scale":
        h, w = image.shape[:2]
        size = (max(1, round(w * p.value)), max(1, round(h * p.value)))
        return np.asarray(img.resize(size, Image.BICUBIC)).copy()
    grey = np.asarray(img.convert("L"))
    return np.repeat(grey[..., None], 3, axis=2).copy()


def apply_label(p: Perturbation, label: np.ndarray) -> np.ndarray:
    """The label map that goes with ``apply_image`` (nearest-neighbour resize for ``scale``; unchanged otherwise)."""
    if p.kind != "scale":
        return label
    h, w = label.shape
    size = (max(1, round(w * p.value)), max(1, round(h * p.value)))
    return np.asarray(Image.fromarray(label).resize(size, Image.NEAREST)).copy()


def parse_perturbations(specs: Sequence[str]) -> tuple[Perturbation, ...]:
    """Each spec parsed (see ``parse_perturbation``); a spec given twice is an error (rows would collide)."""
    out = tuple(parse_perturbation(s) for s in specs)
    names = [p.name for p in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"--perturb lists {', '.join(dup)} more than once; give each corruption once")
    if "clean" in names:
        raise InputError("--perturb 'clean' is scored anyway; list corruptions only")
    return out


def apply_episode(p: Perturbation, ep: Episode) -> Episode:
    """The episode with ``p`` applied to the query and every support alike (labels follow ``scale``).

    Noise is seeded by the image's own pixels, so an image gets the same noise in every episode, row and run: a
    support shared by many episodes is one corrupted image, encoded once through the feature cache."""
    def img(image: np.ndarray) -> np.ndarray:
        return apply_image(p, image, seed=pixel_seed(image) if p.kind == "noise" else 0)

    return dataclasses.replace(
        ep, query_image=img(ep.query_image), query_mask=apply_label(p, ep.query_mask),
        support_images=[img(x) for x in ep.support_images],
        support_masks=[apply_label(p, m) for m in ep.support_masks])


def pixel_seed(image: np.ndarray) -> int:
    """A seed from an image's bytes (identical pixels, identical seed)."""
    return int.from_bytes(hashlib.sha1(np.ascontiguousarray(image).tobytes()).digest()[:8], "little")
