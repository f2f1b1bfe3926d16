"""Non-blind deblurring of encoder inputs: Wiener deconvolution with a Gaussian point-spread function.

Blur, JPEG and resampling remove the fine detail a small CLIP tells its classes apart by. Much of it is attenuated,
not gone: a Gaussian blur of sigma s multiplies frequency f (cycles per pixel) by exp(-2 pi^2 s^2 f^2), and
dividing by that (regularised where it is tiny, Wiener's filter) brings the detail back above the quantisation
noise. JPEG's artefacts are the opposite case, false detail, for which a light Gaussian smoothing is the fit's other
candidate (for the embedded model it did not pay). Pure functions on normalised encoder batches, and the
``Restorer`` that picks the (signed) sigma image by image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ModelError
from .quality_gate import mlp_apply, read_fitted, write_fitted


def gaussian_otf(h: int, w: int, sigma: Tensor) -> Tensor:
    """B x h x (w // 2 + 1) transfer functions of Gaussian blurs with per-image ``sigma`` (B), for ``rfft2``."""
    fy = torch.fft.fftfreq(h, dtype=torch.float32, device=sigma.device).view(1, -1, 1)
    fx = torch.fft.rfftfreq(w, dtype=torch.float32, device=sigma.device).view(1, 1, -1)
    s2 = sigma.float().view(-1, 1, 1) ** 2
    return torch.exp(-2 * math.pi ** 2 * s2 * (fx ** 2 + fy ** 2))


def wiener_deblur(images: Tensor, sigma: Tensor, k: float, low: Tensor | None = None,
                  high: Tensor | None = None, pad: int = 16) -> Tensor:
    """B x C x H x W images deblurred by a Gaussian of per-image ``sigma`` (B, pixels; 0 leaves an image as it is,
    and a negative sigma smooths it instead, by a Gaussian blur of -sigma).

    ``k`` is the noise-to-signal ratio of Wiener's filter (smaller sharpens more and rings more). Smoothing is for
    artefacts that are themselves false detail, such as JPEG's block edges and ringing. Images are
    reflect-padded by ``pad`` so the FFT's wrap-around does not bleed one border into the other; ``low`` / ``high``
    (C values) clamp the result to the input's valid range (e.g. the normalised 0 and 1)."""
    b, c, h, w = images.shape
    p = min(pad, h - 1, w - 1)
    x = F.pad(images.float(), (p, p, p, p), mode="reflect") if p > 0 else images.float()
    sigma = sigma.to(images.device)
    otf = gaussian_otf(x.shape[-2], x.shape[-1], sigma.abs())
    filt = torch.where(sigma.view(-1, 1, 1) < 0, otf, otf / (otf ** 2 + k)).unsqueeze(1)
    out = torch.fft.irfft2(torch.fft.rfft2(x) * filt, s=x.shape[-2:])[..., p:p + h, p:p + w]
    if low is not None and high is not None:
        out = torch.maximum(torch.minimum(out, high.view(1, -1, 1, 1)), low.view(1, -1, 1, 1))
    return torch.where(sigma.view(-1, 1, 1, 1) != 0, out.to(images.dtype), images)


RESTORER_FORMAT = "vlfss-restorer-v1"
RESTORER_TENSORS = ("mean", "std", "weight1", "bias1", "weight2", "bias2")
KINDS = ("other", "upsampled", "blurred", "downsampled")  # what the restorer tells apart (other: JPEG, ...)


@dataclass
class Restorer:
    """Which deblur to apply to an image the quality gate flagged, before the robust tower encodes it.

    An MLP reads the gate's features, the image's spectrum (``spectrum_features``) and its block edges
    (``block_features``, which tell JPEG from blur) and says what kind of degradation the image shows (``KINDS``)
    and, for a blur, its sigma. Each kind has its measured best response (``eval/train_restorer.py``, on training
    scenes: the one whose robust-tower features come closest to the clean scene's sharp ones): an upsampled image is
    deblurred by ``up_sigma``, a blurred one by its sigma less ``blur_offset``, a downsampled one by ``down_sigma``
    (the interpolation's attenuation below the smaller size's Nyquist frequency; the detail above it is gone), and
    anything else, such as JPEG, by ``other_sigma`` (negative: a light smoothing of the blocks' edges). A call less
    sure than ``confidence`` is left as it is.
    """

    mean: Tensor  # F
    std: Tensor  # F
    weight1: Tensor  # H x F
    bias1: Tensor  # H
    weight2: Tensor  # 5 x H: the kinds' logits, then the blur sigma
    bias2: Tensor  # 5
    k: float  # Wiener noise-to-signal ratio
    up_sigma: float
    blur_offset: float
    confidence: float
    backbone: str  # the model id whose taps it reads (as the gate's)
    digest: str = ""
    down_sigma: float = 0.0  # files fitted before these responses existed leave those kinds alone
    other_sigma: float = 0.0
    blocks: bool = False  # reads ``block_features`` too (files fitted before them do not)

    def inputs(self, features: Tensor, images: Tensor) -> Tensor:
        """B x F MLP inputs: the gate's features, the spectrum's and (if fitted with them) the block edges'."""
        parts = [features.float(), spectrum_features(images).to(features.device)]
        if self.blocks:
            parts.append(block_features(images).to(features.device))
        return torch.cat(parts, dim=1)

    def predict(self, features: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B x 4 kind probabilities, B blur sigmas) for B x F gate features of B normalised images."""
        f = self.inputs(features, images)
        if f.shape[1] != self.mean.numel():
            raise ModelError(f"restorer for {self.backbone} reads {self.mean.numel()} features, got "
                             f"{f.shape[1]}: the model's taps differ from the ones it was fitted on")
        out = mlp_apply(f, self.mean, self.std, self.weight1, self.bias1, self.weight2, self.bias2)
        return out[:, :len(KINDS)].softmax(1), out[:, len(KINDS)]

    def sigma(self, features: Tensor, images: Tensor) -> Tensor:
        """B signed sigmas for flagged images' gate features and normalised inputs: > 0 deblur by it, < 0 smooth
        by its size, 0 leave the image alone (``wiener_deblur``)."""
        prob, blur = self.predict(features, images)
        p, kind = prob.max(1)
        kind = torch.where(p >= self.confidence, kind, -1).cpu()  # -1: unsure
        response = torch.tensor([self.other_sigma, self.up_sigma, 0.0, self.down_sigma])[kind.clamp(min=0)]
        blur = (blur.float().cpu() - self.blur_offset).clamp(min=0)
        out = torch.where(kind == KINDS.index("blurred"), blur, response)
        return torch.where(kind < 0, 0.0, out)

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        write_fitted(path, RESTORER_FORMAT, {k: getattr(self, k) for k in RESTORER_TENSORS},
                     {**{k: getattr(self, k) for k in SCALARS + RESPONSES}, "blocks": self.blocks, **(extra or {})})


SCALARS = ("k", "up_sigma", "blur_offset", "confidence", "backbone")
RESPONSES = ("down_sigma", "other_sigma")  # absent from files fitted before them: 0, no response


def load_restorer(path: str | Path) -> Restorer:
    """A restorer saved by ``Restorer.save``; one clear error for anything else."""
    try:
        tensors, meta, digest = read_fitted(path, RESTORER_FORMAT, RESTORER_TENSORS)
        if len(tensors["bias2"]) != len(KINDS) + 1:  # the kinds' logits and the blur sigma
            raise ValueError(f"{len(tensors['bias2'])} outputs, not {len(KINDS) + 1}")
        return Restorer(**tensors, **{k: meta[k] for k in SCALARS}, digest=digest,
                        **{k: float(meta.get(k, 0.0)) for k in RESPONSES}, blocks=bool(meta.get("blocks", False)))
    except Exception as e:  # missing, not safetensors, or another kind of file
        raise ModelError(f"restorer {path} does not load ({type(e).__name__}: {str(e)[:120]}); "
                         "reinstall vlfss or refit it with eval/train_restorer.py") from None


def spectrum_features(images: Tensor, bins: int = 16) -> Tensor:
    """B x 2*bins features of the blur and blockiness an image's spectrum shows: the log power of its grey levels
    (Hann-windowed) in ``bins`` rings of spatial frequency up to 0.5 cycles/pixel, relative to its total, and how
    much of each ring's power lies on the two axes (JPEG's 8 x 8 blocks put theirs there)."""
    g = images.float().mean(1)
    g = g - g.mean(dim=(-2, -1), keepdim=True)
    h, w = g.shape[-2:]
    win = torch.outer(torch.hann_window(h, periodic=False, device=g.device),
                      torch.hann_window(w, periodic=False, device=g.device))
    power = torch.fft.rfft2(g * win).abs() ** 2
    fy = torch.fft.fftfreq(h, device=g.device).view(-1, 1).abs()
    fx = torch.fft.rfftfreq(w, device=g.device).view(1, -1)
    ring = torch.clamp((torch.sqrt(fx ** 2 + fy ** 2) / 0.5 * bins).long(), max=bins)  # bins: the corners, dropped
    axis = ((fx < 0.5 / w) | (fy < 0.5 / h)).expand_as(ring)
    total = power.flatten(1).sum(1, keepdim=True) + 1e-12
    onehot = F.one_hot(ring.flatten(), bins + 1)[:, :bins].float()  # (h * w') x bins
    p = power.flatten(1)
    band = p @ onehot
    on_axis = (p * axis.flatten().float()) @ onehot
    return torch.cat([torch.log(band / total + 1e-12), on_axis / (band + 1e-12)], dim=1)


def block_features(images: Tensor, period: int = 8) -> Tensor:
    """B x 2*period features of JPEG's block edges: the mean absolute step between neighbouring grey levels at each
    of the ``period`` column (then row) phases, as log ratios to their mean, sorted (so the blocks' offset in the
    image does not matter: a window of a larger photo starts anywhere). A compressed image steps most at one phase,
    its blocks' edges; a blurred or resampled one has no favourite."""
    g = images.float().mean(1)
    out = []
    for d in (g[..., :, 1:] - g[..., :, :-1], (g[..., 1:, :] - g[..., :-1, :]).transpose(-1, -2)):
        n = d.shape[-1] // period * period
        if n == 0:  # narrower than one block: nothing to see
            out.append(torch.zeros(len(g), period, device=g.device))
            continue
        step = d[..., :n].abs().reshape(len(g), d.shape[-2], n // period, period).mean(dim=(1, 2))  # B x period
        out.append(torch.log(step / step.mean(-1, keepdim=True).clamp(min=1e-12) + 1e-6).sort(-1, descending=True)[0])
    return torch.cat(out, dim=1)
