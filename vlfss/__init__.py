"""vlfss: vision-language prompt-driven few-shot segmentation over a frozen CLIP.

Public API only; nothing heavy runs at import (torch and open_clip load when first used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "segment", "Segmenter", "SegmenterConfig", "SegmentationOutput", "build_segmenter", "build_model",
    "build_backbone", "list_models", "evaluate", "fit", "tune_prompts",
]

if TYPE_CHECKING:  # pragma: no cover
    from .backbones import build_backbone, list_models
    from .model import SegmentationOutput, Segmenter, SegmenterConfig, build_segmenter, segment

_LAZY = {
    "segment": "model", "Segmenter": "model", "SegmenterConfig": "model", "SegmentationOutput": "model",
    "build_segmenter": "model", "build_backbone": "backbones", "list_models": "backbones",
    "evaluate": "evaluation", "fit": "training", "tune_prompts": "training",
}


def build_model(*args: Any, **kwargs: Any):
    """Alias of :func:`build_segmenter`."""
    from .model import build_segmenter

    return build_segmenter(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'vlfss' has no attribute {name!r}")
