"""How the segmenter turns images into frozen features: sizes, strategies, batches, the cache, the robust fallback.

``ImageEncoding`` is the part of ``Segmenter`` that runs the encoder; it reads the segmenter's ``cfg``,
``backbone``, ``cache``, ``feature_id`` and robust ``fallback`` / ``gate``, and counts ``image_encodes`` and
``degraded_encodes``. Images keep their aspect: the long side goes to ``input_size`` (sides rounded to the patch
size), or large images are cut into windows (``inference=slide``); features are cached per image content.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .cache import FeatureCache, content_hash
from .modeling import slide
from .modeling.backbones.base import FrozenBackbone
from .modeling.config import SegmenterConfig
from .modeling.fallback import dense_with_fallback
from .modeling.quality_gate import QualityGate
from .modeling.restore import Restorer
from .modeling.types import Encoded

log = logging.getLogger("vlfss.segmenter")


class ImageEncoding:
    """Encoding methods of ``Segmenter`` (a mixin: the attributes it reads are set in ``Segmenter.__init__``)."""

    cfg: SegmenterConfig
    backbone: FrozenBackbone
    cache: FeatureCache
    feature_id: str  # what cached features depend on (the model, and its fallback tower and gate when used)
    fallback: FrozenBackbone | None  # the robust tower for images the gate flags (vlfss-tiny), else None
    gate: QualityGate | None
    restorer: Restorer | None  # picks the deblur of flagged images (SegmenterConfig.deblur)
    image_encodes: int  # images actually run through the encoder (cache misses)
    degraded_encodes: int  # of those, images the gate sent to the robust tower
    restored_encodes: int  # of those, images the restorer filtered (deblurred or smoothed) before the robust tower

    def encoder_size(self, h: int, w: int, side: int | None = None) -> tuple[int, int]:
        """Long side -> ``side`` (default input_size), sides rounded to multiples of the patch size (>= one patch)."""
        side = side or self.cfg.input_size or self.backbone.image_size
        p = self.backbone.patch_size
        s = side / max(h, w)
        return max(p, int(round(h * s / p)) * p), max(p, int(round(w * s / p)) * p)

    def _to_input(self, image: np.ndarray, size: tuple[int, int]) -> Tensor:
        """The encoder's normalised 3 x H' x W' input for an RGB uint8 image, resized to ``size``."""
        x = rgb01(image).unsqueeze(0)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.backbone.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.backbone.std).view(1, 3, 1, 1)
        return ((x - mean) / std)[0]

    def window_geometry(self) -> tuple[int, int]:
        """(window, stride) in pixels for slide inference, validated and aligned to the patch size."""
        return slide.window_geometry(self.cfg.window or self.backbone.image_size, self.cfg.stride,
                                     self.backbone.patch_size)

    def strategy(self, h: int, w: int) -> str:
        """How an h x w image is encoded: "slide" or "resize" (multiscale encodes each scale by resizing)."""
        s = self.cfg.inference
        if s == "auto":  # against the size the image would be resized to (input_size when set, else the window)
            side = self.cfg.input_size or self.window_geometry()[0]
            return "slide" if max(h, w) >= self.cfg.auto_slide_factor * side else "resize"
        return "slide" if s == "slide" else "resize"

    def how_encoded(self, h: int, w: int) -> tuple[str, int]:
        """(strategy, windows) an h x w image is encoded with: resize / slide / multiscale, and slide's window count
        (0 otherwise); what every output records."""
        if self.cfg.inference == "multiscale":
            return "multiscale", 0
        boxes = self._plan(h, w, None)[2]
        return ("slide", len(boxes)) if boxes is not None else ("resize", 0)

    def _plan(self, h: int, w: int, side: int | None) -> tuple[tuple[int, int], str, list[tuple[int, int]] | None]:
        """(canvas size, cache tag, windows or None) for an h x w image."""
        if side is not None or self.strategy(h, w) == "resize":
            return self.encoder_size(h, w, side), "", None
        window, stride = self.window_geometry()
        if self.cfg.slide_short_side:
            r = self.cfg.slide_short_side / min(h, w)
            h, w = max(1, round(h * r)), max(1, round(w * r))
        canvas = slide.slide_canvas(h, w, window, self.backbone.patch_size)
        return canvas, f"|slide{window}/{stride}", slide.window_boxes(*canvas, window, stride)

    def _encode_batch(self, batch: Tensor, variant: str) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
        """Frozen dense features of a normalised batch: (taps, z) float32, and two B x 0/1 flags: encoded by the
        robust tower, restored first (deblurred or smoothed)."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.autocast_bf16
                            and self.backbone.device.type == "cpu"):
            batch = batch.to(self.backbone.device)
            flags = restored = torch.zeros(len(batch), dtype=torch.bool)
            if self.fallback is None:
                feats = self.backbone.dense(batch, variant)
            else:
                feats, flags, sigmas = dense_with_fallback(self.backbone, self.fallback, self.gate, batch, variant,
                                                           self.restorer, self.cfg.robust_symmetry)
                restored = sigmas != 0
                n, d = int(flags.sum()), int(restored.sum())
                if n:
                    self.degraded_encodes += n
                    self.restored_encodes += d
                    log.info("%d of %d images look degraded (blur, JPEG or resampling): encoded by %s, %d restored "
                             "first (sigma %s; negative: smoothed)", n, len(flags), self.fallback.model_id, d,
                             ", ".join(f"{s:.2f}" for s in sigmas[restored].tolist()) or "-")
        return [t.float() for t in feats.taps], feats.z.float(), flags.float(), restored.float()

    def _encode_slide(self, x: Tensor, boxes: list[tuple[int, int]],
                      variant: str) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
        """One image's windows in one batch, stitched into one feature grid for the whole canvas: (taps, z) as a
        batch of one (1 x C x h x w each), and the shares of its windows the robust tower encoded and restored."""
        window, p = self.window_geometry()[0], self.backbone.patch_size
        taps, z, flags, restored = self._encode_batch(slide.cut_windows(x, boxes, window), variant)
        cells = [(y // p, xx // p) for y, xx in boxes]
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        return ([slide.stitch(t, cells, grid)[None] for t in taps], slide.stitch(z, cells, grid)[None],
                flags.mean().reshape(1), restored.mean().reshape(1))

    def encode(self, images: Sequence[np.ndarray], variant: str | None = None,
               side: int | None = None) -> list[Encoded]:
        """Features of RGB uint8 images, from the cache where possible. Resized images of one size run as one batch;
        a slid image's windows run as one batch. ``side``: resize to this long side (multiscale)."""
        variant = variant or self.variant
        out: list[Encoded | None] = [None] * len(images)
        todo: dict[tuple[int, int], list[tuple[int, str, Tensor]]] = {}
        slides: list[tuple[int, str, Tensor, list[tuple[int, int]]]] = []
        n_taps = len(self.backbone.taps)
        for i, img in enumerate(images):
            size, tag, boxes = self._plan(*img.shape[:2], side)
            key = FeatureCache.key(self.feature_id, variant + tag, size, content_hash(img))
            hit = self.cache.get(key)
            x = self._to_input(img, size)
            if hit is not None:
                out[i] = Encoded(taps=[hit[f"tap{j}"] for j in range(n_taps)], z=hit["z"], rgb=x,
                                 size=tuple(img.shape[:2]), robust_share=float(hit.get("robust_share", 0.0)),
                                 restored_share=float(hit.get("restored_share", 0.0)))
            elif boxes is not None:
                slides.append((i, key, x, boxes))
            else:
                todo.setdefault(size, []).append((i, key, x))
        done = [(items, self._encode_batch(torch.stack([x for _, _, x in items]), variant))
                for items in todo.values()]
        done += [([(i, key, x)], self._encode_slide(x, b, variant)) for i, key, x, b in slides]
        for items, (taps, z, shares, restores) in done:
            self.image_encodes += len(items)
            for j, (i, key, x) in enumerate(items):
                entry = {f"tap{t}": taps[t][j].clone() for t in range(n_taps)}
                entry["z"] = z[j].clone()
                entry["robust_share"] = shares[j].clone()
                entry["restored_share"] = restores[j].clone()
                self.cache.put(key, entry)
                out[i] = Encoded(taps=[entry[f"tap{t}"] for t in range(n_taps)], z=entry["z"], rgb=x,
                                 size=tuple(images[i].shape[:2]), robust_share=float(shares[j]),
                                 restored_share=float(restores[j]))
        return out  # type: ignore[return-value]

    def _support_mask(self, mask: np.ndarray, size: tuple[int, int]) -> Tensor:
        m = torch.from_numpy(mask)[None, None].float()
        return F.interpolate(m, size=size, mode="nearest")[0, 0].to(torch.uint8)


def rgb01(image: np.ndarray) -> Tensor:
    """H x W x 3 uint8 -> 3 x H x W float in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1) / 255.0
