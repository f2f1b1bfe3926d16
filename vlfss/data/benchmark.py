"""A benchmark: one split of a dataset plus the fold definition that says which classes are novel.

Meta-training samples episodes from ``base_classes(fold)`` on the train split; evaluation samples them
from ``novel_classes(fold)`` on the val/test split. ``episode_classes()`` picks the right set for the split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from .base import SegDataset


def consecutive_folds(num_classes: int, num_folds: int) -> list[list[int]]:
    """Split classes 0..num_classes-1 into ``num_folds`` consecutive chunks (PASCAL-5i style)."""
    if not 1 <= int(num_folds) <= int(num_classes):
        raise InputError(f"num_folds must be 1..{num_classes} (the number of classes), got {num_folds}")
    return [c.tolist() for c in np.array_split(np.arange(num_classes), num_folds)]


class Benchmark:
    """``dataset`` (a SegDataset for ``split``) with its folds; ``bases`` overrides "all classes minus novel"."""

    def __init__(
        self,
        name: str,
        dataset: SegDataset,
        split: str,
        fold: int,
        folds: Sequence[Sequence[int]],
        bases: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.name = name
        self.dataset = dataset
        self.split = split
        self._folds = [list(map(int, f)) for f in folds]
        self._bases = [list(map(int, b)) for b in bases] if bases is not None else None
        for f in self._folds:
            if any(not 0 <= c < dataset.num_classes for c in f):
                raise InputError(f"{name}: fold classes {f} are not all in 0..{dataset.num_classes - 1}")
        self.fold = self._check_fold(fold)

    @property
    def num_folds(self) -> int:
        return len(self._folds)

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset.class_names)

    def _check_fold(self, fold: int | None) -> int:
        if fold is None:
            return self.fold
        if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= int(fold) < self.num_folds:
            raise InputError(f"{self.name}: fold must be 0..{self.num_folds - 1}, got {fold!r}")
        return int(fold)

    def novel_classes(self, fold: int | None = None) -> list[int]:
        """0-based classes held out in ``fold`` (default: this benchmark's fold)."""
        return list(self._folds[self._check_fold(fold)])

    def base_classes(self, fold: int | None = None) -> list[int]:
        """0-based classes trained on in ``fold``: every class that is not novel there (unless overridden)."""
        f = self._check_fold(fold)
        if self._bases is not None:
            return list(self._bases[f])
        novel = set(self._folds[f])
        return [c for c in range(self.dataset.num_classes) if c not in novel]

    def episode_classes(self, fold: int | None = None) -> list[int]:
        """Base classes on the train split, novel classes on val/test."""
        return self.base_classes(fold) if self.split == "train" else self.novel_classes(fold)

    def __repr__(self) -> str:
        return f"Benchmark(name={self.name!r}, split={self.split!r}, fold={self.fold}, dataset={self.dataset!r})"
