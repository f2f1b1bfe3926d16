"""Reader for Hugging Face ``datasets``: an in-memory ``Dataset`` or a ``save_to_disk`` folder.

Columns: ``image`` and ``mask`` (``datasets.Image`` features; the mask is a label map, 0 background,
c+1 for class c, 255 ignore), optional ``id`` (string), ``caption`` (string) and ``class_ids`` (0-based
classes present). Class names come from the ``class_names`` argument, else from the ``class_ids``
feature when it is a list of ``ClassLabel`` (the way the synthetic benchmark stores them).
Only ``load_from_disk`` is used: this reader never contacts the hub.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .base import SegDataset, read_label, read_label_bytes, read_rgb, read_rgb_bytes

logger = logging.getLogger(__name__)

LAYOUT = (
    "a datasets.Dataset (or a Dataset/DatasetDict saved with save_to_disk) with Image columns 'image' and 'mask' "
    "and optional 'id', 'caption', 'class_ids'"
)


def _class_label_names(feature: Any) -> list[str] | None:
    """Names of a ``List(ClassLabel)`` / ``Sequence(ClassLabel)`` feature, else None."""
    from datasets import ClassLabel

    inner = getattr(feature, "feature", None)
    if isinstance(inner, ClassLabel):
        return list(inner.names)
    if isinstance(feature, list) and feature and isinstance(feature[0], ClassLabel):
        return list(feature[0].names)
    return None


def load_hf_source(source: Any, split: str | None, what: str = "hf dataset"):
    """A ``datasets.Dataset`` from a Dataset, a DatasetDict (+ ``split``) or a ``save_to_disk`` folder."""
    import datasets

    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise DataError(f"{what}: {path} does not exist or is not a folder; expected {LAYOUT}")
        try:
            source = datasets.load_from_disk(str(path))
        except FileNotFoundError as e:
            raise DataError(f"{what}: {path} is not a save_to_disk folder ({e}); expected {LAYOUT}") from None
        except (ValueError, OSError) as e:
            raise DataError(f"{what}: cannot load {path} with datasets.load_from_disk: {e}") from None
    if isinstance(source, datasets.DatasetDict):
        if split is None:
            if len(source) != 1:
                raise DataError(f"{what}: the DatasetDict has splits {sorted(source)}; pass split=")
            split = next(iter(source))
        if split not in source:
            raise DataError(f"{what}: no split {split!r}; available splits: {sorted(source)}")
        source = source[split]
    if not isinstance(source, datasets.Dataset):
        raise DataError(f"{what}: expected {LAYOUT}, got {type(source).__name__}")
    return source


class HFDataset(SegDataset):
    """A ``SegDataset`` over a Hugging Face dataset (see the module docstring)."""

    def __init__(
        self,
        source: Any,
        split: str | None = None,
        class_names: Sequence[str] | None = None,
        name: str = "hf",
        index_file: str | Path | None = None,
    ) -> None:
        from datasets import Image

        super().__init__(index_file)
        self.name = name
        self.source = str(source) if isinstance(source, (str, Path)) else f"<{type(source).__name__}>"
        ds = load_hf_source(source, split, f"{name} dataset")
        missing = [c for c in ("image", "mask") if c not in ds.column_names]
        if missing:
            raise DataError(f"{name} dataset {self.source}: missing column(s) {missing} (has {ds.column_names}); "
                            f"expected {LAYOUT}")
        for col in ("image", "mask"):
            if not isinstance(ds.features[col], Image):
                raise DataError(f"{name} dataset {self.source}: column {col!r} must be a datasets.Image feature, "
                                f"got {ds.features[col]}")
        if class_names is None and "class_ids" in ds.column_names:
            class_names = _class_label_names(ds.features["class_ids"])
        if not class_names:
            raise DataError(f"{name} dataset {self.source}: no class names; pass class_names=[...] or store "
                            "'class_ids' as a List(ClassLabel(names=[...])) feature")
        self.class_names = [str(n) for n in class_names]
        # Decode ourselves so errors name the row, and so reading a mask never decodes the image.
        self._images = ds.select_columns(["image"]).cast_column("image", Image(decode=False))
        self._masks = ds.select_columns(["mask"]).cast_column("mask", Image(decode=False))
        cols = [c for c in ("id", "caption", "class_ids") if c in ds.column_names]
        small = ds.select_columns(cols).to_dict() if cols else {}
        n = len(ds)
        self._ids = [str(x) for x in small["id"]] if "id" in small else [str(i) for i in range(n)]
        if len(set(self._ids)) != n:
            raise DataError(f"{name} dataset {self.source}: the 'id' column has duplicate values")
        self._captions = small.get("caption")
        self._class_ids = small.get("class_ids")
        if self._class_ids is not None:
            for i, cids in enumerate(self._class_ids):
                if cids is None or any(not 0 <= int(c) < self.num_classes for c in cids):
                    raise DataError(f"{name} dataset {self.source}: row {i} class_ids {cids!r} are not 0-based ids "
                                    f"below {self.num_classes}")

    def _decode(self, cell: dict, col: str, i: int, label: bool) -> np.ndarray:
        where = f"{self.source} row {i} column {col!r}"
        if cell is None:
            raise DataError(f"{self.name} dataset: {where} is empty")
        data, path = cell.get("bytes"), cell.get("path")
        if data is not None:
            return read_label_bytes(data, where) if label else read_rgb_bytes(data, where)
        if path:
            return read_label(path) if label else read_rgb(path)
        raise DataError(f"{self.name} dataset: {where} has neither bytes nor a path")

    def load_image(self, i: int) -> np.ndarray:
        self._check_index(i)
        return self._decode(self._images[int(i)]["image"], "image", i, label=False)

    def load_label(self, i: int) -> np.ndarray:
        self._check_index(i)
        return self._decode(self._masks[int(i)]["mask"], "mask", i, label=True)

    def caption(self, i: int) -> str | None:
        self._check_index(i)
        if self._captions is None or self._captions[i] is None:
            return None
        return str(self._captions[i])

    def _compute_classes(self) -> list[list[int]]:
        if self._class_ids is not None:
            return [sorted({int(c) for c in cids}) for cids in self._class_ids]
        return super()._compute_classes()
