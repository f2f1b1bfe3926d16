"""The one backbone registry: named builders with their per-model defaults, and ``build_backbone``.

``build_backbone(name, pretrained)`` resolves, in order:

* a registered name (``vlfss-tiny``: the embedded tiny CLIP trained on the synthetic world; offline);
* ``transformers:<repo-or-dir>``  a Hugging Face ``CLIPModel``;
* ``timm:<model>``                a visual-only timm model (features for prototypes; no text);
* ``hf-hub:<repo>`` / ``local-dir:<dir>`` / any open_clip model name (``ViT-B-16``...).

``pretrained`` is a tag, a checkpoint file, or ``random`` (the only way to get random weights); ``None`` means
the model's own default weights (``vlfss-tiny``: the embedded file; an open_clip name: its canonical tag, see
``open_clip_backbone``). open_clip is imported inside the listing functions: a heavy optional dependency.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...errors import ModelError
from ..config import ModelDefaults
from .base import FrozenBackbone
from .hf_clip import TransformersCLIPBackbone
from .open_clip_backbone import OpenCLIPBackbone, default_tag, register_open_clip_configs
from .timm_backbone import TimmBackbone
from .weights import RANDOM

DefaultsFit = Callable[[FrozenBackbone, ModelDefaults], ModelDefaults]


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    description: str
    builder: Callable[..., FrozenBackbone]  # (pretrained, cache_dir, device, taps) -> FrozenBackbone
    defaults: ModelDefaults  # the model's own defaults (variant, templates, prototype features)
    fit_defaults: DefaultsFit | None = None  # adjusts ``defaults`` to a built backbone (e.g. its custom taps)

    def defaults_for(self, backbone: FrozenBackbone) -> ModelDefaults:
        return self.fit_defaults(backbone, self.defaults) if self.fit_defaults else self.defaults


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(name: str, description: str, defaults: ModelDefaults = ModelDefaults(),
                      fit_defaults: DefaultsFit | None = None) -> Callable:
    """Decorator: register a builder ``(pretrained, cache_dir, device, taps) -> FrozenBackbone`` under ``name``,
    with the model's own ``defaults`` (``build_backbone`` attaches them to the backbone it builds)."""

    def deco(fn: Callable[..., FrozenBackbone]) -> Callable[..., FrozenBackbone]:
        _REGISTRY[name] = BackboneSpec(name, description, fn, defaults, fit_defaults)
        return fn

    return deco


def list_models() -> list[str]:
    """Registered backbone names, then the open_clip architectures this install knows."""
    import open_clip

    register_open_clip_configs()
    return sorted(_REGISTRY) + [f"{m}" for m in open_clip.list_models() if m not in _REGISTRY]


def describe_models(include_untagged: bool = False) -> list[tuple[str, str]]:
    """(name, description) rows for `vlfss models`; open_clip architectures without known weights only when
    ``include_untagged`` (they need a checkpoint file, or ``--pretrained random``)."""
    import open_clip

    register_open_clip_configs()
    rows = [(s.name, s.description) for s in _REGISTRY.values()]
    rows += [("transformers:<repo-or-dir>", "Hugging Face transformers CLIPModel (local folder offline)"),
             ("timm:<name>", "visual-only timm model (support examples only; no text)"),
             ("hf-hub:<repo>", "open_clip model from the Hugging Face hub (needs network)")]
    for m in open_clip.list_models():
        tags, default = open_clip.list_pretrained_tags_by_model(m), default_tag(m)
        if tags:
            others = [t for t in tags if t != default]
            rows.append((m, f"open_clip; default weights: {default}"
                            + (f"; other tags: {', '.join(others)}" if others else "")))
        elif include_untagged:
            rows.append((m, f"open_clip; no known weights (pass a checkpoint file, or --pretrained {RANDOM})"))
    return rows


def build_backbone(name: str = "vlfss-tiny", pretrained: str | None = None, cache_dir: str | None = None,
                   device: str = "cpu", taps: tuple[int, ...] | None = None) -> FrozenBackbone:
    """Build a frozen backbone by name (see the module docstring for the accepted forms)."""
    if name in _REGISTRY:
        spec = _REGISTRY[name]
        backbone = spec.builder(pretrained=pretrained, cache_dir=cache_dir, device=device, taps=taps)
        backbone.defaults = spec.defaults_for(backbone)
        return backbone
    if name.startswith("transformers:"):
        if pretrained is not None:
            raise ModelError(f"--pretrained {pretrained} is not used with {name}: its weights come from the "
                             "folder or repository; drop --pretrained")
        return TransformersCLIPBackbone(name.split(":", 1)[1], cache_dir=cache_dir, taps=taps, device=device)
    if name.startswith("timm:"):
        return TimmBackbone(name.split(":", 1)[1], pretrained, device=device)
    return OpenCLIPBackbone(name, pretrained, cache_dir=cache_dir, taps=taps, device=device)
