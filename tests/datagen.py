"""Tiny on-the-fly datasets in each on-disk layout, for the data/episode/metric tests (nothing downloads)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vlfss.data.base import SegDataset


def scene(rng: np.random.Generator, classes: Sequence[int], h: int = 24, w: int = 32, ignore_border: bool = True):
    """A random image whose label map has one rectangle per class (label c+1) and a 255 border ring."""
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = np.zeros((h, w), np.uint8)
    for c in classes:
        y, x = int(rng.integers(1, h - 6)), int(rng.integers(1, w - 6))
        label[y:y + 5, x:x + 5] = c + 1
    if ignore_border:
        label[0, :] = 255
    return image, label


def save_png(path: Path, array: np.ndarray, mode: str | None = None, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if palette:
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
        img.putdata(array.ravel().tolist())  # indices as given
    img.save(path)


def save_jpg(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95)


class MemoryDataset(SegDataset):
    """An in-memory SegDataset (fast episode tests); counts label reads to check caching."""

    def __init__(self, images, labels, class_names, name="mem", index_file=None):
        super().__init__(index_file)
        self.name = name
        self.class_names = list(class_names)
        self._images, self._labels = images, labels
        self.label_reads = 0

    def __len__(self):
        return len(self._labels)

    def image_id(self, i):
        self._check_index(i)
        return f"img{i:03d}"

    def load_image(self, i):
        self._check_index(i)
        return self._images[i]

    def load_label(self, i):
        self._check_index(i)
        self.label_reads += 1
        return self._labels[i]


def memory_dataset(n: int = 40, num_classes: int = 6, seed: int = 0, max_per_image: int = 3) -> MemoryDataset:
    """``n`` random scenes over ``num_classes`` classes, each image holding 1..max_per_image classes."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        k = int(rng.integers(1, max_per_image + 1))
        cls = rng.choice(num_classes, size=k, replace=False).tolist()
        img, lab = scene(rng, cls)
        images.append(img)
        labels.append(lab)
    return MemoryDataset(images, labels, [f"class{c}" for c in range(num_classes)])
