"""The segmenter: one forward for text-only, examples-only and text+examples, 1..N classes, 0..K shots.

``Segmenter`` composes a frozen backbone (``modeling.backbones``), prompts (``modeling.prompts``), the pure maths
in ``modeling.functional`` and, in learned mode, a ``SegHead`` (cross-attention fusion + decoder). How images
become cached features is ``encoding.ImageEncoding``; masks come back at each image's original size.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cache import FeatureCache
from .config import from_dict
from .data.image import ImageLike, load_image, load_mask
from .encoding import ImageEncoding, rgb01
from .errors import InputError, ModelError
from .modeling import functional as fn
from .modeling import refine
from .modeling import training_free as tf
from .modeling.adapt import adapt_head
from .modeling.backbones import FrozenBackbone, build_backbone
from .modeling.calibrate import check_calibration
from .modeling.config import SYMMETRIES, Mode, SegmenterConfig
from .modeling.head import SegHead, SupportSide
from .modeling.head_file import default_head_path, load_head
from .modeling.prompts import PromptLearner, ensemble_text_embeddings, load_templates
from .modeling.tta import adapt_validated
from .modeling.types import ClassSpec, Encoded, SegmentationOutput, input_kind, make_output
from .request_args import NegativesArg, Support, SupportsArg, TextsArg, load_images, normalise_supports
from .request_calibration import calibrate_request

log = logging.getLogger(__name__)



@dataclass
class Request:
    """A request's class side, prepared once (``Segmenter.prepare``) and reused for any number of query images."""

    mode: str  # "training-free" or "learned", resolved
    variant: str  # dense variant the features are encoded with
    specs: list[ClassSpec]  # the classes: names, text embeddings, encoded supports
    negatives: list[tuple[Encoded, Tensor]]  # encoded negative examples
    neg_text: Tensor | None  # M x D embeddings of negative names (training-free text background)
    head: SegHead | None  # the learned head (a test-time adapted copy with adapt_steps), None in training-free mode
    state: tf.SupportState | None  # the supports' scoring state (None when the head needs no prior)
    head_support: SupportSide | None = None  # the head's class-side work (support maps, fusion keys), learned mode
    offsets: Tensor | None = None  # N per-class log-odds offsets (calibrate="supports", >= 2 supports), or None
    refine: str | None = None  # the refinement the supports chose (None: the configured one)
    robust: Request | None = None  # the same request with the robust tower's head, for queries it encoded (lazy)

    @property
    def class_names(self) -> list[str]:
        return [s.name for s in self.specs]


class Segmenter(ImageEncoding, nn.Module):
    """Frozen backbone + prompts + (optional) learned head behind one ``segment`` call."""

    def __init__(self, backbone: FrozenBackbone, cfg: SegmenterConfig | None = None,
                 head: SegHead | None = None, head_variant: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg or SegmenterConfig()
        self.backbone = backbone
        self.head = head
        defaults = backbone.defaults  # the model's own; the config's None fields resolve to them here, once
        self.variant = self.cfg.variant or defaults.variant
        self.head_variant = head_variant or self.variant
        if self.cfg.training_free.proto_features is None:  # resolve the model's default once, visibly in cfg
            tfc = dataclasses.replace(self.cfg.training_free,
                                      proto_features=defaults.proto_features)
            self.cfg = dataclasses.replace(self.cfg, training_free=tfc)  # a copy: the caller's config is untouched
        if self.cfg.refine is None:  # the model's refinement, resolved visibly in cfg (and so in the config hash)
            self.cfg = dataclasses.replace(self.cfg, refine=defaults.refine)
        if self.cfg.slide_short_side is None:  # likewise the short side slide resizes to (0: native pixels)
            n = defaults.slide_short_windows
            window = self.cfg.window or backbone.image_size
            self.cfg = dataclasses.replace(self.cfg, slide_short_side=0 if n is None else int(round(n * window)))
        if self.cfg.slide_short_side < 0:
            raise InputError(f"slide_short_side={self.cfg.slide_short_side}: use a side in pixels (e.g. 336), or 0 "
                             "for native pixels")
        tf.check_config(self.cfg.training_free, len(backbone.taps), "training_free.")
        check_calibration(self.cfg.calibrate_shrink, self.cfg.calibrate_refine)
        if self.cfg.robust_symmetry not in SYMMETRIES:
            raise InputError(f"robust_symmetry={self.cfg.robust_symmetry!r}: use one of {', '.join(SYMMETRIES)}")
        self.cache = FeatureCache(self.cfg.feature_cache_items, self.cfg.feature_cache_dir)
        template_set = self.cfg.templates or defaults.templates
        self.templates = load_templates(template_set) if backbone.has_text else []
        self.prompt_learners: dict[str, PromptLearner] = {}
        self.image_encodes = 0  # images actually run through the encoder (cache misses)
        self.degraded_encodes = 0  # of those, images the quality gate sent to the robust tower
        self.restored_encodes = 0  # of those, images restored (deblurred or smoothed) before the robust tower
        fb = backbone.robust_fallback() if self.cfg.robust_fallback else None
        self.fallback = fb[0] if fb else None  # a submodule: it follows .to(device)
        self.gate = fb[1] if fb else None
        self.restorer = fb[2] if fb and self.cfg.deblur else None
        # what cached features depend on: the model, and its fallback tower, gate, restorer and symmetry when used
        self.feature_id = backbone.model_id + (f"+fallback:{fb[0].model_id}:{fb[1].digest}" if fb else "") + \
            (f"+deblur:{self.restorer.digest}" if self.restorer is not None else "") + \
            (f"+symmetry:{self.cfg.robust_symmetry}" if fb and self.cfg.robust_symmetry != "none" else "")
        self.robust_heads: dict[int, SegHead] = {}  # id(head) -> its robust-tower pair (pair_head)

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
        if head is not None:
            seg.pair_head(head, head_path)
        return seg.to(cfg.device)

    def pair_head(self, head: SegHead, head_path: str | Path) -> None:
        """Register the robust tower's own head for ``head`` (the model's pairing of ``head_path``, if any): queries
        the robust tower encoded are then scored with it (``robust_heads``)."""
        pair = self.backbone.fallback_head_path(head_path) if self.fallback is not None else None
        if pair is not None and self.cfg.robust_heads:
            robust, variant = load_head(pair, self.fallback)
            if variant == self.head_variant:
                self.robust_heads[id(head)] = robust.to(self.backbone.device)

    @property
    def mode(self) -> str:
        """The mode ``auto`` resolves to: learned when a head is loaded, else training-free."""
        if self.cfg.mode == "auto":
            return "learned" if self.head is not None else "training-free"
        return self.cfg.mode

    def use_prompt_file(self, path: str | Path) -> list[str]:
        """Register learned prompts; their class names then use the learned context. Returns the names."""
        pl = PromptLearner.load(path, self.backbone)
        for name in pl.class_names:
            self.prompt_learners[name] = pl
        return pl.class_names

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
    def build_specs(self, texts: TextsArg, supports: SupportsArg, variant: str) -> list[ClassSpec]:
        """Normalise the user's (texts, supports) into ClassSpecs, validating every input."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts) if texts is not None else []
        sup = normalise_supports(supports, len(texts))
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

    def _encode_pairs(self, pairs: Sequence[Support], label: str, variant: str) -> list[tuple[Encoded, Tensor]]:
        """Load, check and encode (image, mask) pairs; masks come back at each image's encoder input size."""
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
        level = tf.text_level(cfg.text_threshold, self.backbone.logit_bias, self.backbone.logit_scale)
        bg = None
        if level is None:
            bg = ensemble_text_embeddings(self.backbone, cfg.background_prompts, self.templates)
        return tf.text_background(z, level, bg, neg_text)

    # ---------------------------------------------------------------------------------- public
    def prepare(self, texts: TextsArg = None, supports: SupportsArg = None,
                negatives: NegativesArg = None, mode: Mode | None = None, adapt_steps: int = 0) -> Request:
        """The class side of a request, once: text embeddings, encoded supports and negatives, the (adapted)
        head and the supports' scoring state. ``predict`` then segments any number of images with it."""
        mode = self.mode if mode in (None, "auto") else mode
        if mode == "learned" and self.head is None:
            raise ModelError("learned mode needs head weights; pass --head FILE or use --mode training-free")
        variant = self.head_variant if mode == "learned" else self.variant
        specs = self.build_specs(texts, supports, variant)
        neg_pairs = [p for p in (negatives or []) if not isinstance(p, str)]
        neg_strs = [p for p in (negatives or []) if isinstance(p, str)]
        negs = self._encode_pairs(neg_pairs, "negative", variant)
        neg_text = self.text_embeddings(neg_strs) if neg_strs else None
        head = self.head if mode == "learned" else None
        if head is not None and adapt_steps > 0:
            if self.cfg.adapt_validate:
                head, _ = adapt_validated(head, specs, negs, adapt_steps, self.cfg.adapt_lr)
            else:
                head = adapt_head(head, specs, negs, steps=adapt_steps, lr=self.cfg.adapt_lr)
        request = self.request_for(mode, variant, specs, negs, neg_text, head)
        if self.cfg.calibrate == "supports":
            with torch.no_grad():
                calibrate_request(self, request)
        return request

    def request_for(self, mode: str, variant: str, specs: list[ClassSpec], negs: list[tuple[Encoded, Tensor]],
                 neg_text: Tensor | None, head: SegHead | None) -> Request:
        """A request with the supports' side of the scoring done, once for all the query images."""
        state = head_support = None
        with torch.no_grad():
            if head is None:
                state = tf.support_state(specs, negs, self.cfg.training_free)
            else:
                head_support = head.support_side(specs, negs)
                if head.uses_prior(specs):
                    state = head.prior_state(specs, negs)
        return Request(mode, variant, specs, negs, neg_text, head, state, head_support)

    def logits(self, query: Encoded, request: Request, robust_head: bool = True) -> Tensor:
        """Per-class foreground log-odds N x H x W of one encoded query at its original size (scored with the robust
        tower's head when that tower encoded most of the query and the request's head has a pair, unless
        ``robust_head`` is false: the request's own head, as its calibration scores its supports)."""
        if robust_head:
            request = self._for_query(query, request)
        fg = self._logits(query, request)
        return fg if request.offsets is None else fg + request.offsets.to(fg)[:, None, None]

    def _for_query(self, query: Encoded, request: Request) -> Request:
        """``request``, or its robust-head twin (prepared and calibrated once, on first need)."""
        robust = self.robust_heads.get(id(request.head)) if request.head is not None else None
        if robust is None or query.robust_share < 0.5:
            return request
        if request.robust is None:
            twin = self.request_for(request.mode, request.variant, request.specs, request.negatives,
                                    request.neg_text, robust)
            if self.cfg.calibrate == "supports":
                with torch.no_grad():
                    calibrate_request(self, twin)
            request.robust = twin
        return request.robust

    def _logits(self, query: Encoded, request: Request) -> Tensor:
        specs, negs, head = request.specs, request.negatives, request.head
        with torch.no_grad():
            if head is None:
                return up(self.training_free_logits(query, specs, negs, request.neg_text, request.state), query.size)
            # the prior once per query, for the head and for the kinds it declines
            prior = head.prior(query, specs, negs, request.state) if request.state is not None else None
            fg = up(head([query], specs, negs, None if prior is None else prior[None], request.head_support)[0],
                    query.size)
            declined = [i for i, s in enumerate(specs) if input_kind(s) not in head.cfg.use_for]
            if prior is not None and declined:  # kinds the head does not answer: its training-free prior, upsampled
                fg[declined] = up(prior, query.size)[declined]  # as training-free mode does
            return fg

    def predict(self, images: Sequence[ImageLike], request: Request) -> list[SegmentationOutput]:
        """Segment images (encoded in batches, through the feature cache) with a prepared request."""
        imgs = load_images(images)
        sides = [None] if self.cfg.inference != "multiscale" else \
            [round((self.cfg.input_size or self.backbone.image_size) * r) for r in self.cfg.scales]
        encoded = [self.encode(imgs, request.variant, side) for side in sides]  # per scale, per image
        # per-class log-odds, averaged over scales at each image's own size (multiscale)
        fg = [torch.stack([self.logits(q, request) for q in qs]).mean(0) for qs in zip(*encoded)]

        def share(qs: tuple[Encoded, ...], attr: str) -> float | None:  # mean over scales; None without the gate
            return sum(getattr(q, attr) for q in qs) / len(qs) if self.gate is not None else None

        return [make_output(self.refine_logits(img, fn.nway_logits(f.unsqueeze(0))[0], request.refine),
                            request.class_names, share(qs, "robust_share"), share(qs, "restored_share"),
                            *self.how_encoded(*img.shape[:2]))
                for img, f, qs in zip(imgs, fg, zip(*encoded))]


    def refine_logits(self, image: np.ndarray, logits: Tensor, method: str | None = None) -> Tensor:
        """(N+1) x H x W logits of ``image`` after refinement ``method`` (none, PAMR, or PAMR keeping areas; None:
        the configured one; a request's own is ``Request.refine``)."""
        return self.refine_rgb01(rgb01(image), logits, method or self.cfg.refine)

    def refine_rgb01(self, image: Tensor, logits: Tensor, method: str) -> Tensor:
        if method == "none":
            return logits
        out = refine.refine_logits(image, logits, self.cfg.refine_iterations, list(self.cfg.refine_dilations),
                                   self.cfg.refine_max_side)
        return refine.keep_areas(logits, out) if method == "pamr-area" else out

    def segment(self, images: ImageLike | Sequence[ImageLike], texts: TextsArg = None,
                supports: SupportsArg = None, negatives: NegativesArg = None, mode: Mode | None = None,
                adapt_steps: int = 0) -> SegmentationOutput | list[SegmentationOutput]:
        """Segment one image (returns one output) or a list of images (returns a list).

        texts: class names/prompts (one per class). supports: for one class a list of (image, mask)
        pairs, for N classes a list of N such lists. negatives: (image, mask) pairs of things that are
        *not* the target, and/or strings naming them. adapt_steps > 0 fine-tunes a copy of the learned
        head on the support set before predicting (test-time adaptation).
        """
        single = not isinstance(images, (list, tuple))
        imgs = load_images([images] if single else images)  # bad images fail before any work
        outs = self.predict(imgs, self.prepare(texts, supports, negatives, mode, adapt_steps))
        return outs[0] if single else outs


def up(fg: Tensor, size: tuple[int, int]) -> Tensor:
    """Per-class log-odds N x h x w -> N x H x W, bilinear (the image's own size)."""
    return F.interpolate(fg.unsqueeze(0), size=size, mode="bilinear", align_corners=False)[0]


def build_segmenter(model: str = "vlfss-tiny", **kwargs: Any) -> Segmenter:
    """Convenience: ``build_segmenter("ViT-B-16", pretrained="openai", mode="training-free")``."""
    cfg = from_dict(SegmenterConfig, {"model": model, **kwargs})
    return Segmenter.from_config(cfg)


def segment(image: ImageLike, texts: TextsArg = None, supports: SupportsArg = None, model: str = "vlfss-tiny",
            **kwargs: Any) -> SegmentationOutput | list[SegmentationOutput]:
    """One-call API: build a segmenter (cached per arguments is the caller's job) and segment one image (or a
    list, as ``Segmenter.segment``). ``kwargs``: ``SegmenterConfig`` fields."""
    return build_segmenter(model, **kwargs).segment(image, texts=texts, supports=supports)
