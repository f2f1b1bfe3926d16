"""Frozen backbones behind one interface, and the one registry that builds them.

Modules: ``base`` (the ``FrozenBackbone`` interface, ``TextParts``, the dense path shared by CLIP ViTs),
``weights`` (where weights come from; ``random``; failing fast offline), ``registry`` (``register_backbone``,
``build_backbone``, ``list_models``, ``describe_models``), one module per adapter (``open_clip_backbone``,
``hf_clip`` for transformers, ``timm_backbone``) and ``tiny`` (the embedded tiny CLIP, registered as
``vlfss-tiny``). Everything users and the rest of vlfss need is exported here.
"""

from __future__ import annotations

from .base import ASSETS, FrozenBackbone, TextParts, ViTBackbone
from .hf_clip import TransformersCLIPBackbone
from .open_clip_backbone import OpenCLIPBackbone, default_tag, register_open_clip_configs, resolve_pretrained
from .registry import BackboneSpec, build_backbone, describe_models, list_models, register_backbone
from .timm_backbone import TimmBackbone
from .tiny import TINY_MODEL, TINY_WEIGHTS, OutOfVocabularyWarning, TinyCLIPBackbone, in_world
from .weights import RANDOM

__all__ = [
    "ASSETS", "RANDOM", "TINY_MODEL", "TINY_WEIGHTS", "BackboneSpec", "FrozenBackbone", "OpenCLIPBackbone",
    "OutOfVocabularyWarning", "TextParts", "TimmBackbone", "TinyCLIPBackbone", "TransformersCLIPBackbone",
    "ViTBackbone", "build_backbone", "default_tag", "describe_models", "in_world", "list_models",
    "register_backbone", "register_open_clip_configs", "resolve_pretrained",
]
