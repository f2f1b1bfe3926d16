"""vlfss: vision-language prompt-driven few-shot segmentation over a frozen CLIP.

Public API only; nothing heavy runs at import (torch and open_clip load when first used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "segment", "Segmenter", "SegmenterConfig", "SegmentationOutput", "build_segmenter", "build_model",
    "build_backbone", "list_models", "evaluate", "fit", "tune_prompts", "label",
]

if TYPE_CHECKING:  # pragma: no cover
    from .labeling import label
    from .modeling.backbones import build_backbone, list_models
    from .modeling.types import SegmentationOutput
    from .segmenter import Segmenter, SegmenterConfig, build_segmenter, segment

_LAZY = {
    "segment": "segmenter", "Segmenter": "segmenter", "SegmenterConfig": "segmenter",
    "SegmentationOutput": "modeling.types", "build_segmenter": "segmenter", "build_backbone": "modeling.backbones",
    "list_models": "modeling.backbones", "evaluate": "evaluation.harness", "fit": "engine.train",
    "tune_prompts": "engine.prompt_tuning", "label": "labeling",
}


def build_model(*args: Any, **kwargs: Any):
    """Alias of :func:`build_segmenter`."""
    from .segmenter import build_segmenter

    return build_segmenter(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'vlfss' has no attribute {name!r}")
