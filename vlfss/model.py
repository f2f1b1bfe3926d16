"""The segmenter: one forward for text-only, examples-only and text+examples, 1..N classes, 0..K shots.

``Segmenter`` composes a frozen backbone (``backbones``), prompts (``prompts``), the pure maths in
``functional`` and, in learned mode, a ``SegHead`` (cross-attention fusion + decoder). Images keep their
aspect: the long side is resized to ``input_size`` (sides rounded to the patch size), features are cached
per image content, and masks come back at each image's original size.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as fn
from . import training_free as tf
from .backbones import FrozenBackbone, build_backbone
from .cache import FeatureCache, content_hash
from .decoder import Decoder
from .errors import InputError, ModelError
from .fusion import CrossAttentionFusion
from .imageio import ImageLike, load_image, load_mask
from .io_utils import atomic_save_safetensors
from .prompts import PromptLearner, ensemble_text_embeddings, load_templates

log = logging.getLogger(__name__)

HEAD_FORMAT = "vlfss-head/1"
INPUT_KINDS = ("text", "shots", "text+shots")  # what a class is given as: a name, examples, or both
Mode = Literal["auto", "training-free", "learned"]


# ------------------------------------------------------------------------------------------ configs
@dataclass
class TrainingFreeConfig:
    """How similarity maps become log-odds in training-free mode."""

    text_weight: float = 1.0  # weight of the text log-odds when examples are given too
    proto_weight: float = 1.0  # weight of the prototype log-odds
    text_scale: float | None = None  # cosine -> logit multiplier for text; None: the model's logit scale
    text_threshold: float | None = None  # background cosine for text; None: -bias/scale (SigLIP) or bg prompts
    background_prompts: list[str] = field(default_factory=lambda: ["background", "a plain background"])
    proto_temperature: float = 0.05  # (cos_fg - cos_bg) / T for prototypes compared by cosine
    num_prototypes: int = 1  # >1: k-means foreground prototypes over the support foreground
    num_bg_prototypes: int = 1  # >1: k-means background prototypes per support (1: the masked mean)
    calibrate_text: bool = True  # text+examples: fit the text log-odds on the supports and add its evidence
    calibration_l2: float = 1e-2  # ridge penalty of that fit (on the standardised cosine)
    shot_pooling: Literal["mean", "max"] = "mean"  # K shots' foreground prototypes: their mean, or the best match
    proto_features: str | None = None  # what prototypes match on: "z" (text-aligned), "tap<i>" (encoder tap i);
    # None: the model's default (mid-level taps generalise to novel classes better, as in PFENet/HSNet)
    cell_norm: bool = True  # prototypes average L2-normalised cells, so every cell votes equally (not by its norm)
    metric: Literal["cosine", "mahalanobis"] = "mahalanobis"  # how query cells compare to prototypes: cosine / T,
    # or the Gaussian log-likelihood ratio under the supports' pooled, shrunk covariance (LDA; Simple CNAPS)
    shrinkage: float = 0.9  # mahalanobis: weight of the scaled identity in the covariance (chosen on the val split)
    mahalanobis_scale: float = 0.1  # mahalanobis: log-odds = scale * Gaussian log-likelihood ratio, which counts
    # C correlated channels as independent evidence and is far too sure (chosen on the val split, text+examples)


@dataclass
class HeadConfig:
    """Size of the learned fusion module and decoder."""

    dim: int = 64  # token width inside the fusion module
    heads: int = 4  # attention heads
    layers: int = 2  # cross-attention layers
    hidden: int = 64  # decoder channels
    max_support_cells: int = 256  # support foreground cells kept as keys per class (strided if more)
    residual_prior: bool = True  # the decoder's output is added to the training-free log-odds (it learns a correction)
    use_for: list[str] = field(default_factory=lambda: list(INPUT_KINDS))  # input kinds (text, shots, text+shots)
    # the head answers; for the others learned mode returns the training-free log-odds (training sets this to the
    # kinds where the head beat the training-free model on validation, with TrainConfig.fallback_to_training_free)
    prior_proto_features: str | None = None  # the prior's training_free.proto_features (None: the model's default)
    prior_shot_pooling: Literal["mean", "max"] = "mean"  # the prior's training_free.shot_pooling
    prior_cell_norm: bool = True  # the prior's training_free.cell_norm
    prior_metric: Literal["cosine", "mahalanobis"] = "mahalanobis"  # the prior's training_free.metric
    prior_shrinkage: float = 0.9  # the prior's training_free.shrinkage
    prior_mahalanobis_scale: float = 0.1  # the prior's training_free.mahalanobis_scale
    prior_input: bool = True  # the decoder also reads the prior's log-odds, so its correction can depend on them
    agnostic_kinds: list[str] = field(default_factory=lambda: ["shots", "text+shots"])  # input kinds the head
    # sees only through similarity maps and the prior (no raw features: the fused tokens and encoder skips are zero
    # for them), so what it learns on base classes is class-agnostic and carries over to novel ones (HSNet, PFENet)


@dataclass
class SegmenterConfig:
    """Everything that decides what the segmenter computes."""

    model: str = "vlfss-tiny"  # backbone name (see `vlfss models`)
    pretrained: str | None = None  # open_clip tag or local weights file; None: the model's default
    cache_dir: str | None = None  # where hub downloads go (open_clip / transformers)
    device: str = "cpu"
    mode: Mode = "auto"  # auto: learned when head weights exist, else training-free
    head_path: str | None = None  # learned head (safetensors); None: the one shipped for the model, if any
    variant: str | None = None  # last-block variant for text-aligned features; None: the model's default
    templates: str | None = None  # template set (prompts/templates/<name>.txt) or a file; None: the model's default
    input_size: int | None = None  # encoder long side in pixels; None: the model's native size
    autocast_bf16: bool = False  # run the encoder under bfloat16 autocast (fast only on CPUs with bf16 units)
    feature_cache_items: int = 256  # in-memory feature cache size
    feature_cache_dir: str | None = None  # optional on-disk feature cache
    training_free: TrainingFreeConfig = field(default_factory=TrainingFreeConfig)
    head: HeadConfig = field(default_factory=HeadConfig)


# ------------------------------------------------------------------------------------------- output
@dataclass
class SegmentationOutput:
    """Per-image result at the image's original size."""

    class_names: list[str]  # N names; label i+1 is class_names[i], 0 is background
    logits: Tensor  # (N+1) x H x W
    probs: Tensor  # (N+1) x H x W, softmax over background + classes
    labels: Tensor  # H x W long, argmax of probs
    masks: Tensor  # N x H x W bool, labels == i+1
    confidence: Tensor  # H x W, max probability
    entropy: Tensor  # H x W, normalised entropy (0 certain, 1 uniform)

    def summary(self) -> dict[str, Any]:
        """Classes, areas (pixels and fraction) and mean confidence, for JSON."""
        total = int(self.labels.numel())
        classes = []
        for i, name in enumerate(self.class_names):
            m = self.masks[i]
            area = int(m.sum())
            classes.append({"label": i + 1, "name": name, "area_px": area, "area_frac": round(area / total, 5),
                            "mean_confidence": round(float(self.confidence[m].mean()) if area else 0.0, 4)})
        return {"height": int(self.labels.shape[0]), "width": int(self.labels.shape[1]), "classes": classes,
                "mean_confidence": round(float(self.confidence.mean()), 4),
                "mean_entropy": round(float(self.entropy.mean()), 4)}


def make_output(logits: Tensor, class_names: list[str]) -> SegmentationOutput:
    """(N+1) x H x W logits -> SegmentationOutput."""
    probs = logits.float().softmax(0)
    labels = probs.argmax(0)
    n = len(class_names)
    masks = torch.stack([labels == i + 1 for i in range(n)]) if n else torch.zeros(0, *labels.shape, dtype=torch.bool)
    return SegmentationOutput(class_names=list(class_names), logits=logits, probs=probs, labels=labels, masks=masks,
                              confidence=probs.max(0).values,
                              entropy=fn.normalised_entropy(probs.unsqueeze(0))[0])


# ------------------------------------------------------------------------------------ internal data
@dataclass
class Encoded:
    """Cached features of one image at encoder resolution."""

    taps: list[Tensor]  # each C x h x w
    z: Tensor  # D x h x w
    rgb: Tensor  # 3 x H' x W' normalised encoder input (for the decoder's RGB stem)
    size: tuple[int, int]  # original H, W


@dataclass
class ClassSpec:
    """One class of a request: its name, text embedding and encoded support examples."""

    name: str
    text: Tensor | None  # D normalised
    supports: list[tuple[Encoded, Tensor]]  # (features, mask at encoder input size H' x W' in {0,1,255})


def input_kind(spec: ClassSpec) -> str:
    """``text``, ``shots`` or ``text+shots``: what the class was given as (one of INPUT_KINDS)."""
    if spec.supports:
        return "text+shots" if spec.text is not None else "shots"
    return "text"


# -------------------------------------------------------------------------------------------- head
class SegHead(nn.Module):
    """Learned fusion + decoder: per (query, class) pair, a foreground log-odds map at 4x patch resolution.

    With ``cfg.residual_prior`` the decoder's output is added to the training-free log-odds (``prior``) and its
    last layer starts at zero, so an untrained head is the training-free model and training learns corrections.
    """

    def __init__(self, tap_dim: int, num_taps: int, embed_dim: int, cfg: HeadConfig, prior_bg_prompts: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.tap_dim, self.num_taps, self.embed_dim = tap_dim, num_taps, embed_dim
        tf.check_proto_features(cfg.prior_proto_features or "z", num_taps)
        tf.check_shot_pooling(cfg.prior_shot_pooling, "head.prior_shot_pooling")
        for key in ("use_for", "agnostic_kinds"):
            bad = [k for k in getattr(cfg, key) if k not in INPUT_KINDS]
            if bad:
                raise InputError(f"head.{key}={list(getattr(cfg, key))!r}: {bad[0]!r} is not an input kind; use any "
                                 f"of {', '.join(INPUT_KINDS)}")
        tf.check_metric(cfg.prior_metric, cfg.prior_shrinkage, cfg.prior_mahalanobis_scale, "head.prior_")
        # What the training-free prior needs from the backbone (new_head fills them; saved with the weights):
        # text logit scale, text background level (-bias/scale for SigLIP models, where prior_has_level is 1;
        # else the max cosine to background prompt embeddings).
        self.register_buffer("prior_scale", torch.tensor(100.0))
        self.register_buffer("prior_level", torch.tensor(0.0))
        self.register_buffer("prior_has_level", torch.tensor(0.0))
        self.register_buffer("prior_bg_text", torch.zeros(prior_bg_prompts, embed_dim))  # M x D
        support_dim = tap_dim * num_taps + embed_dim
        self.fusion = CrossAttentionFusion(support_dim, embed_dim, support_dim, cfg.dim, cfg.heads, cfg.layers)
        # text, (fg, bg, max-corr) per level, 2 availability flags, the prior's log-odds
        self.sim_channels = 1 + 3 * (num_taps + 1) + 2 + int(cfg.prior_input)
        self.decoder = Decoder(cfg.dim, self.sim_channels, tap_dim, num_taps, cfg.hidden)
        self.text_scale = nn.Parameter(torch.tensor(10.0))
        if cfg.residual_prior:  # zero-initialised last layer: an untrained head predicts the training-free log-odds
            nn.init.zeros_(self.decoder.head.weight)
            nn.init.zeros_(self.decoder.head.bias)

    def config_dict(self) -> dict:
        return {"tap_dim": self.tap_dim, "num_taps": self.num_taps, "embed_dim": self.embed_dim,
                "head": asdict(self.cfg), "prior_bg_prompts": int(self.prior_bg_text.shape[0])}

    def prior_config(self) -> TrainingFreeConfig:
        """The training-free settings of the prior: defaults but for the prototype features, shot pooling, cell
        normalisation and metric the head was trained with, recorded in its config."""
        return TrainingFreeConfig(proto_features=self.cfg.prior_proto_features or "z",
                                  shot_pooling=self.cfg.prior_shot_pooling, cell_norm=self.cfg.prior_cell_norm,
                                  metric=self.cfg.prior_metric, shrinkage=self.cfg.prior_shrinkage,
                                  mahalanobis_scale=self.cfg.prior_mahalanobis_scale)

    def uses_prior(self, specs: list[ClassSpec]) -> bool:
        """Whether ``forward`` needs the training-free prior for these classes (as residual base, decoder input or
        the answer to a kind the head declines)."""
        return (self.cfg.residual_prior or self.cfg.prior_input
                or any(input_kind(s) not in self.cfg.use_for for s in specs))

    def prior_state(self, specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]]) -> tf.SupportState:
        """The prior's support-side work (covariance, prototypes, text fits), to share over query images."""
        return tf.support_state(specs, negatives, self.prior_config())

    def prior(self, query: Encoded, specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]],
              state: tf.SupportState | None = None) -> Tensor:
        """The training-free log-odds N x h x w that the decoder's output corrects (``prior_config``); ``state``:
        ``prior_state(specs, negatives)`` when the caller has it."""
        level = float(self.prior_level) if float(self.prior_has_level) else None
        bg = self.prior_bg_text if len(self.prior_bg_text) else None
        text_bg = tf.text_background(query.z.unsqueeze(0), level, bg, None)
        return tf.training_free_logits(query, specs, negatives, self.prior_config(), float(self.prior_scale),
                                       text_bg, state)

    @staticmethod
    def _levels(e: Encoded) -> list[Tensor]:
        return [*e.taps, e.z]  # per level C_l x h x w

    def pair_inputs(self, query: Encoded, spec: ClassSpec, negatives: list[tuple[Encoded, Tensor]],
                    with_keys: bool = True):
        """Similarity channels (S x h x w) and fusion keys (L x d; None unless ``with_keys``) for one pair."""
        q_levels = self._levels(query)
        h, w = q_levels[0].shape[-2:]
        sims = []
        if spec.text is not None:
            zq = F.normalize(query.z, dim=0)
            sims.append(torch.einsum("dhw,d->hw", zq, spec.text.to(zq.dtype)).unsqueeze(0) * self.text_scale / 10)
        else:
            sims.append(q_levels[0].new_zeros(1, h, w))
        fg_proto = bg_proto = None
        cells: list[Tensor] = []
        neg = None
        if spec.supports:
            for li, ql in enumerate(q_levels):
                feats = torch.stack([self._levels(e)[li] for e, _ in spec.supports])  # K x C x hs x ws
                masks = torch.stack([m for _, m in spec.supports])
                fg_w, bg_w = fn.mask_weights(masks, tuple(feats.shape[-2:]))
                fgp = fn.masked_average_pool(feats, fg_w).mean(0, keepdim=True)
                bgp = fn.masked_average_pool(feats, bg_w).mean(0, keepdim=True)
                sims.append(fn.cosine_map(ql.unsqueeze(0), fgp)[0])
                sims.append(fn.cosine_map(ql.unsqueeze(0), bgp)[0])
                fg_cells = feats.permute(0, 2, 3, 1)[fg_w > 0.25]  # M x C
                if fg_cells.shape[0]:
                    corr = fn.cosine_map(ql.unsqueeze(0), fg_cells)[0].max(0).values.unsqueeze(0)
                else:
                    corr = ql.new_zeros(1, h, w)
                sims.append(corr)
        if spec.supports and with_keys:  # prototypes and cells over all levels, for the fusion's keys
            flat = [torch.cat([lv for lv in self._levels(e)], 0) for e, _ in spec.supports]  # S x h x w each
            masks = torch.stack([m for _, m in spec.supports])
            feats = torch.stack(flat)
            fg_w, bg_w = fn.mask_weights(masks, tuple(feats.shape[-2:]))
            fg_proto = fn.masked_average_pool(feats, fg_w).mean(0)
            bg_proto = fn.masked_average_pool(feats, bg_w).mean(0)
            allc = feats.permute(0, 2, 3, 1)[fg_w > 0.25]
            if allc.shape[0] > self.cfg.max_support_cells:
                stride = -(-allc.shape[0] // self.cfg.max_support_cells)
                allc = allc[::stride]
            cells = [allc]
            if negatives:
                nf = torch.stack([torch.cat(self._levels(e), 0) for e, _ in negatives])
                nm = torch.stack([m for _, m in negatives])
                nfg, _ = fn.mask_weights(nm, tuple(nf.shape[-2:]))
                neg = fn.masked_average_pool(nf, nfg)
        if not spec.supports:
            sims.extend([q_levels[0].new_zeros(1, h, w)] * (3 * len(q_levels)))
        flags = torch.stack([torch.full((h, w), float(spec.text is not None)),
                             torch.full((h, w), float(bool(spec.supports)))]).to(sims[0])
        keys = self.fusion.build_keys(spec.text, fg_proto, bg_proto, cells, neg) if with_keys else None
        return torch.cat(sims + [flags], 0), keys

    def forward(self, queries: list[Encoded], specs: list[ClassSpec],
                negatives: list[tuple[Encoded, Tensor]] | None = None, prior: Tensor | None = None) -> Tensor:
        """Foreground log-odds B x N x h4 x w4 for all queries (same encoder size) and classes. ``prior``
        (B x N x h x w): ``self.prior`` of the queries when the caller has it already."""
        sims, keys, qtok, taps, rgb = [], [], [], [], []
        reads_raw = [input_kind(s) not in self.cfg.agnostic_kinds for s in specs]
        for q in queries:
            qcat = torch.cat(self._levels(q), 0)  # S x h x w
            for spec, r in zip(specs, reads_raw):
                s, k = self.pair_inputs(q, spec, negatives or [], with_keys=r)
                sims.append(s)
                keys.append(k)
                qtok.append(qcat.flatten(1).T)
                taps.append(q.taps)
                rgb.append(q.rgb)
        h, w = queries[0].z.shape[-2:]
        n = len(specs)
        device = queries[0].z.device
        # pairs (query-major) that read raw features (fusion tokens, encoder skips); the class-agnostic others read
        # only similarity maps, the prior and the RGB stem, so the fusion runs for the raw ones only
        raw = torch.tensor(reads_raw * len(queries), device=device)
        fused = qtok[0].new_zeros(len(keys), self.fusion.dim, h, w)
        rows = [i for i, r in enumerate(raw.tolist()) if r]
        if rows:
            f = self.fusion(torch.stack([qtok[i] for i in rows]), [keys[i] for i in rows])  # R x hw x d
            fused[rows] = f.transpose(1, 2).reshape(len(rows), -1, h, w)
        tap_stacks = [torch.stack([t[i] for t in taps]) for i in range(self.num_taps)]
        answered = torch.tensor([input_kind(s) in self.cfg.use_for for s in specs], device=device)
        if prior is None and self.uses_prior(specs):
            state = self.prior_state(specs, negatives or [])  # once for all the queries
            prior = torch.stack([self.prior(q, specs, negatives or [], state) for q in queries])  # B x N x h x w
        sims = torch.stack(sims)
        if self.cfg.prior_input:  # log-odds squashed to a conv-friendly range
            sims = torch.cat([sims, torch.tanh(prior.reshape(-1, 1, h, w).to(sims.dtype) / 4)], 1)
        out = self.decoder(fused, sims, tap_stacks, torch.stack(rgb), None if bool(raw.all()) else raw)
        out = out.view(len(queries), n, *out.shape[-2:])
        if self.cfg.residual_prior or not bool(answered.all()):
            prior = F.interpolate(prior.to(out.dtype), size=out.shape[-2:], mode="bilinear", align_corners=False)
            if self.cfg.residual_prior:
                out = out + prior
            out = torch.where(answered[None, :, None, None], out, prior)  # kinds the head does not answer
        return out

    def save(self, path: str | Path, backbone_id: str, variant: str, extra: dict | None = None) -> Path:
        meta = {"format": HEAD_FORMAT, "backbone": backbone_id, "variant": variant, **self.config_dict(),
                **(extra or {})}
        atomic_save_safetensors({k: v.detach().cpu() for k, v in self.state_dict().items()}, path,
                                metadata={"vlfss": json.dumps(meta)})
        return Path(path)


def read_head_file(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(metadata, state dict) of a head checkpoint, with clear errors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"head weights {path} do not exist; train one with `vlfss train` or use "
                         "--mode training-free")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("vlfss", "{}"))
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ModelError(f"head weights {path} are not a readable safetensors file ({type(e).__name__})") from None
    if meta.get("format") != HEAD_FORMAT:
        raise ModelError(f"{path} is not a vlfss head checkpoint")
    return meta, state


# ------------------------------------------------------------------------------------- segmenter
Support = tuple[ImageLike, ImageLike]


class Segmenter(nn.Module):
    """Frozen backbone + prompts + (optional) learned head behind one ``segment`` call."""

    def __init__(self, backbone: FrozenBackbone, cfg: SegmenterConfig | None = None,
                 head: SegHead | None = None, head_variant: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg or SegmenterConfig()
        self.backbone = backbone
        self.head = head
        default_variant = getattr(backbone, "default_variant", "clearclip" if backbone.has_text else "plain")
        self.variant = self.cfg.variant or default_variant
        self.head_variant = head_variant or self.variant
        if self.cfg.training_free.proto_features is None:  # resolve the model's default once, visibly in cfg
            tfc = dataclasses.replace(self.cfg.training_free,
                                      proto_features=getattr(backbone, "default_proto_features", "z"))
            self.cfg = dataclasses.replace(self.cfg, training_free=tfc)  # a copy: the caller's config is untouched
        tf.check_proto_features(self.cfg.training_free.proto_features, len(backbone.taps))
        tf.check_shot_pooling(self.cfg.training_free.shot_pooling, "training_free.shot_pooling")
        t = self.cfg.training_free
        tf.check_metric(t.metric, t.shrinkage, t.mahalanobis_scale, "training_free.")
        self.cache = FeatureCache(self.cfg.feature_cache_items, self.cfg.feature_cache_dir)
        template_set = self.cfg.templates or getattr(backbone, "default_templates", "default")
        self.templates = load_templates(template_set) if backbone.has_text else []
        self.prompt_learners: dict[str, PromptLearner] = {}
        self.image_encodes = 0  # images actually run through the encoder (cache misses)

    # ---------------------------------------------------------------------------------- building
    @classmethod
    def from_config(cls, cfg: SegmenterConfig) -> Segmenter:
        """Build the backbone and, unless training-free, load the learned head."""
        backbone = build_backbone(cfg.model, cfg.pretrained, cfg.cache_dir, cfg.device)
        head, head_variant = None, None
        head_path = cfg.head_path or default_head_path(cfg.model)
        if cfg.mode == "learned" and head_path is None:
            raise ModelError(f"no learned head is shipped for {cfg.model!r}; pass --head FILE or use "
                             "--mode training-free")
        if cfg.mode != "training-free" and head_path is not None:
            if cfg.mode == "learned" or Path(head_path).is_file():
                head, head_variant = load_head(head_path, backbone)
        seg = cls(backbone, cfg, head, head_variant)
        return seg.to(cfg.device)

    @property
    def mode(self) -> str:
        if self.cfg.mode == "auto":
            return "learned" if self.head is not None else "training-free"
        return self.cfg.mode

    def use_prompt_file(self, path: str | Path) -> list[str]:
        """Register learned prompts; their class names then use the learned context. Returns the names."""
        pl = PromptLearner.load(path, self.backbone)
        for name in pl.class_names:
            self.prompt_learners[name] = pl
        return pl.class_names

    # ---------------------------------------------------------------------------------- encoding
    def encoder_size(self, h: int, w: int) -> tuple[int, int]:
        """Long side -> input_size, sides rounded to multiples of the patch size (at least one patch)."""
        side = self.cfg.input_size or self.backbone.image_size
        p = self.backbone.patch_size
        s = side / max(h, w)
        return max(p, int(round(h * s / p)) * p), max(p, int(round(w * s / p)) * p)

    def _to_input(self, image: np.ndarray, size: tuple[int, int]) -> Tensor:
        x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0) / 255.0
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.backbone.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.backbone.std).view(1, 3, 1, 1)
        return ((x - mean) / std)[0]

    def encode(self, images: Sequence[np.ndarray], variant: str | None = None) -> list[Encoded]:
        """Features of RGB uint8 images, from the cache where possible; misses of one size run as one batch."""
        variant = variant or self.variant
        out: list[Encoded | None] = [None] * len(images)
        todo: dict[tuple[int, int], list[tuple[int, str, Tensor]]] = {}
        for i, img in enumerate(images):
            size = self.encoder_size(*img.shape[:2])
            key = FeatureCache.key(self.backbone.model_id, variant, size, content_hash(img))
            hit = self.cache.get(key)
            x = self._to_input(img, size)
            if hit is not None:
                out[i] = Encoded(taps=[hit[f"tap{j}"] for j in range(len(self.backbone.taps))], z=hit["z"], rgb=x,
                                 size=tuple(img.shape[:2]))
            else:
                todo.setdefault(size, []).append((i, key, x))
        for items in todo.values():
            batch = torch.stack([x for _, _, x in items]).to(self.backbone.device)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.autocast_bf16
                                and self.backbone.device.type == "cpu"):
                feats = self.backbone.dense(batch, variant)
            self.image_encodes += len(items)
            for j, (i, key, x) in enumerate(items):
                entry = {f"tap{t}": feats.taps[t][j].float().clone() for t in range(len(feats.taps))}
                entry["z"] = feats.z[j].float().clone()
                self.cache.put(key, entry)
                out[i] = Encoded(taps=[entry[f"tap{t}"] for t in range(len(feats.taps))], z=entry["z"], rgb=x,
                                 size=tuple(images[i].shape[:2]))
        return out  # type: ignore[return-value]

    def _support_mask(self, mask: np.ndarray, size: tuple[int, int]) -> Tensor:
        m = torch.from_numpy(mask)[None, None].float()
        return F.interpolate(m, size=size, mode="nearest")[0, 0].to(torch.uint8)

    def text_embeddings(self, names: list[str]) -> Tensor:
        """N x D class embeddings: learned prompts where registered, else the template ensemble."""
        if not self.backbone.has_text:
            raise InputError(f"model {self.backbone.model_id} has no text encoder; give support examples, not text")
        rows = []
        for name in names:
            if name in self.prompt_learners:
                pl = self.prompt_learners[name]
                rows.append(pl.embeddings()[pl.class_names.index(name)])
            else:
                rows.append(ensemble_text_embeddings(self.backbone, [name], self.templates)[0])
        return torch.stack(rows)

    # ---------------------------------------------------------------------------------- requests
    def build_specs(self, texts: Sequence[str | None] | str | None, supports, variant: str) -> list[ClassSpec]:
        """Normalise the user's (texts, supports) into ClassSpecs, validating every input."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts) if texts is not None else []
        sup = _normalise_supports(supports, len(texts))
        n = max(len(texts), len(sup))
        if n == 0:
            raise InputError("nothing to segment: give --text and/or --support examples")
        if texts and sup and len(texts) != len(sup):
            raise InputError(f"{len(texts)} texts but support examples for {len(sup)} classes; give one support "
                             "list per text (an empty list for a text-only class)")
        texts = texts or [None] * n
        sup = sup or [[] for _ in range(n)]
        specs = []
        emb_names = [t for t in texts if t]
        emb = dict(zip(emb_names, self.text_embeddings(emb_names))) if emb_names else {}
        for ci, (t, pairs) in enumerate(zip(texts, sup)):
            if not t and not pairs:
                raise InputError(f"class {ci + 1} has neither text nor support examples")
            encoded = self._encode_pairs(pairs, f"class {ci + 1} support", variant)
            specs.append(ClassSpec(name=t or f"class{ci + 1}", text=emb.get(t) if t else None, supports=encoded))
        return specs

    def _encode_pairs(self, pairs, label: str, variant: str) -> list[tuple[Encoded, Tensor]]:
        imgs, masks = [], []
        for k, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InputError(f"{label} {k + 1}: expected an (image, mask) pair")
            img = load_image(pair[0], f"{label} {k + 1} image")
            name = f"{label} {k + 1} mask" + (f" ({pair[1]})" if isinstance(pair[1], (str, Path)) else "")
            masks.append(load_mask(pair[1], img.shape, name))
            imgs.append(img)
        enc = self.encode(imgs, variant) if imgs else []
        return [(e, self._support_mask(m, tuple(e.rgb.shape[-2:]))) for e, m in zip(enc, masks)]

    # ---------------------------------------------------------------------------------- scoring
    def training_free_logits(self, query: Encoded, specs: list[ClassSpec],
                             negatives: list[tuple[Encoded, Tensor]], neg_text: Tensor | None = None,
                             state: tf.SupportState | None = None) -> Tensor:
        """Per-class foreground log-odds N x h x w: text on Z, prototypes on ``training_free.proto_features``.
        ``state``: ``tf.support_state(specs, negatives, self.cfg.training_free)``, shared over query images."""
        cfg = self.cfg.training_free
        scale = cfg.text_scale if cfg.text_scale is not None else self.backbone.logit_scale
        return tf.training_free_logits(query, specs, negatives, cfg, scale,
                                       self._text_background(query.z.unsqueeze(0), neg_text), state)

    def _text_background(self, z: Tensor, neg_text: Tensor | None) -> Tensor | float:
        """Background cosine level for text: fixed threshold, SigLIP bias, or max over background prompts."""
        cfg = self.cfg.training_free
        level = cfg.text_threshold
        if level is None and self.backbone.logit_bias is not None:
            level = -self.backbone.logit_bias / self.backbone.logit_scale
        bg = None
        if level is None:
            bg = ensemble_text_embeddings(self.backbone, cfg.background_prompts, self.templates)
        return tf.text_background(z, level, bg, neg_text)

    # ---------------------------------------------------------------------------------- public
    def segment(self, images: ImageLike | Sequence[ImageLike], texts: Sequence[str | None] | str | None = None,
                supports=None, negatives=None, mode: Mode | None = None, adapt_steps: int = 0,
                ) -> SegmentationOutput | list[SegmentationOutput]:
        """Segment one image (returns one output) or a list of images (returns a list).

        texts: class names/prompts (one per class). supports: for one class a list of (image, mask)
        pairs, for N classes a list of N such lists. negatives: (image, mask) pairs of things that are
        *not* the target, and/or strings naming them. adapt_steps > 0 fine-tunes a copy of the learned
        head on the support set before predicting (test-time adaptation).
        """
        single = not isinstance(images, (list, tuple))
        imgs = [load_image(x, f"image {i + 1}" if not isinstance(x, (str, Path)) else str(x))
                for i, x in enumerate([images] if single else images)]
        mode = mode or self.mode
        if mode == "auto":
            mode = self.mode
        if mode == "learned" and self.head is None:
            raise ModelError("learned mode needs head weights; pass --head FILE or use --mode training-free")
        variant = self.head_variant if mode == "learned" else self.variant
        specs = self.build_specs(texts, supports, variant)
        neg_pairs = [p for p in (negatives or []) if not isinstance(p, str)]
        neg_strs = [p for p in (negatives or []) if isinstance(p, str)]
        negs = self._encode_pairs(neg_pairs, "negative", variant)
        neg_text = self.text_embeddings(neg_strs) if neg_strs else None
        queries = self.encode(imgs, variant)
        head = self.head
        if mode == "learned" and adapt_steps > 0:
            from .adapt import adapt_head

            head = adapt_head(self, specs, negs, steps=adapt_steps)
        outs = []
        declined = [i for i, s in enumerate(specs) if mode == "learned" and input_kind(s) not in head.cfg.use_for]
        with_prior = mode == "learned" and head.uses_prior(specs)
        with torch.no_grad():  # the supports' side of the scoring, once for all the query images
            if mode != "learned":
                state = tf.support_state(specs, negs, self.cfg.training_free)
            elif with_prior:
                state = head.prior_state(specs, negs)
        for q in queries:
            with torch.no_grad():
                if mode == "learned":  # the prior once per query, for the head and for the kinds it declines
                    prior = head.prior(q, specs, negs, state) if with_prior else None
                    fg = up(head([q], specs, negs, None if prior is None else prior[None])[0], q.size)
                    if prior is not None:  # kinds the head does not answer: its training-free prior, upsampled
                        fg[declined] = up(prior, q.size)[declined]  # as training-free mode does
                else:
                    fg = up(self.training_free_logits(q, specs, negs, neg_text, state), q.size)
            outs.append(make_output(fn.nway_logits(fg.unsqueeze(0))[0], [s.name for s in specs]))
        return outs[0] if single else outs


def up(fg: Tensor, size: tuple[int, int]) -> Tensor:
    """Per-class log-odds N x h x w -> N x H x W, bilinear (the image's own size)."""
    return F.interpolate(fg.unsqueeze(0), size=size, mode="bilinear", align_corners=False)[0]


def _normalise_supports(supports, n_texts: int) -> list[list]:
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


# -------------------------------------------------------------------------------------- heads
def default_head_path(model: str) -> str | None:
    """The learned head shipped for a model, if any."""
    from .backbones import ASSETS

    p = ASSETS / f"head-{model}.safetensors"
    return str(p) if p.is_file() else None


def load_head(path: str | Path, backbone: FrozenBackbone) -> tuple[SegHead, str]:
    """Load a head checkpoint for ``backbone`` (refused when trained on another backbone)."""
    meta, state = read_head_file(path)
    if meta["backbone"] != backbone.model_id:
        raise ModelError(f"head {path} was trained on {meta['backbone']!r}, not {backbone.model_id!r}; "
                         "train a head for this backbone or use --mode training-free")
    cfg = dict(meta["head"])
    cfg.setdefault("residual_prior", False)  # heads saved before the residual prior existed predict on their own
    cfg.setdefault("prior_proto_features", "z")  # ... and before the prior could match prototypes on a tap
    cfg.setdefault("prior_shot_pooling", "max")  # ... or average the shots' prototypes
    cfg.setdefault("prior_cell_norm", False)  # ... or average normalised cells
    cfg.setdefault("prior_metric", "cosine")  # ... or compare cells by Mahalanobis distance
    cfg.setdefault("prior_input", False)  # ... or read the prior as an input
    cfg.setdefault("agnostic_kinds", [])  # ... or see some input kinds only through similarity maps
    head = new_head(backbone, HeadConfig(**cfg))  # the prior's buffers come from the backbone ...
    try:
        missing, unexpected = head.load_state_dict(state, strict=False)  # ... unless the file has them
    except RuntimeError:  # tensor shapes differ: another head size or backbone width
        missing, unexpected = ["shapes differ"], []
    if unexpected or any(not k.startswith("prior_") for k in missing):
        raise ModelError(f"head weights {path} do not fit a {meta['head']} head for {backbone.model_id} "
                         f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    head.eval()
    return head, meta["variant"]


def new_head(backbone: FrozenBackbone, cfg: HeadConfig | None = None) -> SegHead:
    """An untrained head sized for ``backbone``."""
    width = getattr(backbone, "width", backbone.embed_dim)
    bg = None
    if backbone.has_text and backbone.logit_bias is None:  # background level from prompts, as training-free does
        templates = load_templates(getattr(backbone, "default_templates", "default"))
        bg = ensemble_text_embeddings(backbone, TrainingFreeConfig().background_prompts, templates)
    cfg = cfg or HeadConfig()
    if cfg.prior_proto_features is None:  # the file records the concrete choice
        cfg = dataclasses.replace(cfg, prior_proto_features=getattr(backbone, "default_proto_features", "z"))
    head = SegHead(width, len(backbone.taps), backbone.embed_dim, cfg, 0 if bg is None else len(bg))
    with torch.no_grad():
        head.prior_scale.fill_(float(backbone.logit_scale))
        if backbone.logit_bias is not None:
            head.prior_level.fill_(-float(backbone.logit_bias) / float(backbone.logit_scale))
            head.prior_has_level.fill_(1.0)
        if bg is not None:
            head.prior_bg_text.copy_(bg)
    return head


def build_segmenter(model: str = "vlfss-tiny", **kwargs: Any) -> Segmenter:
    """Convenience: ``build_segmenter("ViT-B-16", pretrained="openai", mode="training-free")``."""
    from .config import from_dict

    cfg = from_dict(SegmenterConfig, {"model": model, **kwargs})
    return Segmenter.from_config(cfg)


def segment(image: ImageLike, texts=None, supports=None, model: str = "vlfss-tiny", **kwargs: Any):
    """One-call API: build a segmenter (cached per arguments is the caller's job) and segment one image."""
    return build_segmenter(model, **kwargs).segment(image, texts=texts, supports=supports)
