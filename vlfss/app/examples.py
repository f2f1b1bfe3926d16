"""Preloaded examples from the synthetic texture world, so the page works offline on first launch with the
embedded tiny CLIP. Scenes are generated (same seed, same pictures on any machine) and written as PNGs into the
app's own folder; the page loads them into the query gallery and the class editors (the mask as a paint layer).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.synthetic import CLASS_NAMES, Scene, SyntheticConfig, generate_scene
from ..io_utils import atomic_save_image

SEED = 0  # the world's seed (the demo's)
PAINT = (255, 40, 40)  # colour of a preloaded mask layer; the app reads alpha, not colour


@dataclass
class ExampleClass:
    """One class of an example: its name and one support (image file, RGBA paint-layer file, 0/1 mask)."""

    name: str
    support: Path
    layer: Path
    mask: np.ndarray


@dataclass
class AppExample:
    """A preloaded example: a title, query files, classes, and negatives (names and/or painted examples)."""

    title: str
    queries: list[Path]
    classes: list[ExampleClass]
    negative_names: str = ""
    negative: ExampleClass | None = None
    query_masks: list[np.ndarray] = field(default_factory=list)  # ground truth labels (0 bg, c+1), for tests


def _scenes(start: int, cfg: SyntheticConfig) -> Iterator[tuple[int, Scene]]:
    i = start
    while True:
        yield i, generate_scene(SEED, i, cfg)
        i += 1


def _area(scene: Scene, c: int) -> float:
    return float((scene.mask == c + 1).mean())


def _query(start: int, n_classes: int, cfg: SyntheticConfig, min_area: float = 0.08) -> Scene:
    """The first scene from ``start`` on with ``n_classes`` classes each covering at least ``min_area``."""
    for _, s in _scenes(start, cfg):
        big = [c for c in s.class_ids if _area(s, c) >= min_area]
        if len(big) >= n_classes:
            return s
    raise AssertionError("unreachable: the generator is infinite")


def _support(c: int, start: int, cfg: SyntheticConfig) -> Scene:
    for _, s in _scenes(start, cfg):
        if c in s.class_ids and _area(s, c) >= 0.05:
            return s
    raise AssertionError("unreachable")


def _layer(mask: np.ndarray) -> np.ndarray:
    """A binary mask as the editor's RGBA paint layer (transparent where unpainted)."""
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask > 0] = (*PAINT, 255)
    return rgba


def _write(folder: Path, stem: str, support: Scene, c: int) -> ExampleClass:
    from PIL import Image

    mask = (support.mask == c + 1).astype(np.uint8)
    img_path, layer_path = folder / f"{stem}_support.png", folder / f"{stem}_mask_layer.png"
    atomic_save_image(Image.fromarray(support.image), img_path)
    atomic_save_image(Image.fromarray(_layer(mask), mode="RGBA"), layer_path)
    return ExampleClass(CLASS_NAMES[c], img_path, layer_path, mask)


def _largest(scene: Scene, k: int) -> list[int]:
    return sorted(scene.class_ids, key=lambda c: -_area(scene, c))[:k]


def build_examples(folder: str | Path) -> list[AppExample]:
    """Write the examples' PNGs under ``folder`` and describe them: one class (text + a painted example), two
    classes, and one class with a painted negative."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = SyntheticConfig()
    out = []
    specs = [("one class: name + painted example", 10_000, 1, False),
             ("two classes", 11_000, 2, False),
             ("a class and a painted negative", 12_000, 2, True)]
    for k, (title, start, n, negative) in enumerate(specs):
        q = _query(start, n, cfg)
        q_path = folder / f"example{k + 1}_query.png"
        atomic_save_image(Image.fromarray(q.image), q_path)
        cls = _largest(q, n)
        wanted = cls[:1] if negative else cls
        classes = [_write(folder, f"example{k + 1}_class{j + 1}", _support(c, 20_000 + 1_000 * k + 100 * j, cfg), c)
                   for j, c in enumerate(wanted)]
        neg = _write(folder, f"example{k + 1}_negative", _support(cls[1], 30_000 + 1_000 * k, cfg), cls[1]) \
            if negative else None
        out.append(AppExample(title, [q_path], classes, negative=neg, query_masks=[q.mask]))
    return out
