"""Dataset labelling: a whole folder or dataset from a few examples, batched, resumable, sharded over processes,
written as label PNGs, COCO RLE and a manifest, with the images worth labelling next (see docs/label.md).

Modules: ``config`` (LabelConfig, --shard), ``sources`` (SOURCE -> sorted items), ``precision`` (bf16 or fp32 for
the hardware), ``state`` (run.json, journals), ``loop`` (one process's batched pass), ``writers`` (files),
``suggest`` (active learning), ``finalize`` (published files), ``run`` (``label``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import LabelConfig

__all__ = ["LabelConfig", "LabelSummary", "label"]

if TYPE_CHECKING:  # pragma: no cover
    from .run import LabelSummary, label


def __getattr__(name: str) -> Any:
    """``label`` and ``LabelSummary`` load torch: imported when first used, so the CLI's --help stays light."""
    if name in ("label", "LabelSummary"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'vlfss.labeling' has no attribute {name!r}")
