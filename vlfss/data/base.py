"""The dataset interface every reader implements, and the readers' file access (decoded by vlfss.data.image).

A ``SegDataset`` is a list of (image, label map) pairs with 0-based class ids: label 0 is background,
``c + 1`` is class ``c`` and 255 is ignored. Label maps are uint8; only a dataset with 255 or more
classes (FSS-1000 has 1000) returns uint16 maps, whose ignore value is 65535 (``ignore_label``).
Episodes relabel everything to uint8 with 255 ignore, so nothing downstream sees the difference.

Which classes each image holds is computed once (from metadata when the format has it, else by scanning
the label maps) and cached, optionally on disk, because episode sampling asks for it constantly and
scanning a real benchmark takes minutes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError, InputError
from .image import decode_label, decode_rgb, encode_png

__all__ = ["IGNORE_LABEL", "IMAGE_EXTENSIONS", "SegDataset", "classes_of_label", "default_cache_dir", "encode_png",
           "ignore_label_for", "normalise_split", "read_label", "read_label_bytes", "read_rgb", "read_rgb_bytes",
           "resolve_dir"]

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def default_cache_dir() -> Path:
    """Where vlfss caches generated data: $VLFSS_CACHE, else $XDG_CACHE_HOME/vlfss, else ~/.cache/vlfss.

    Resolved on each call (never at import) so tests and users can redirect it with the environment.
    """
    env = os.environ.get("VLFSS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "vlfss"
    return Path.home() / ".cache" / "vlfss"


def normalise_split(split: str, allowed: tuple[str, ...] = ("train", "val", "test")) -> str:
    """Map 'trn'/'training' to 'train' and 'validation' to 'val'; InputError for anything else."""
    s = {"trn": "train", "training": "train", "validation": "val"}.get(str(split).lower(), str(split).lower())
    if s not in allowed:
        raise InputError(f"split must be one of {list(allowed)}, got {split!r}")
    return s


# ------------------------------------------------------------------------------------------ decoding
# Every reader decodes through vlfss.data.image, the one decoder user input goes through too (its docstring
# states the convention: 16-bit by the format's range, alpha over white, EXIF orientation applied).
def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB; DataError naming the path if missing or corrupt."""
    return decode_rgb(Path(path), str(path), DataError)


def read_rgb_bytes(data: bytes, where: str) -> np.ndarray:
    """Decode encoded image bytes as RGB; ``where`` names the source in errors."""
    return decode_rgb(data, where, DataError)


def read_label(path: str | Path) -> np.ndarray:
    """Read a label-map PNG as H x W uint8; DataError naming the path if missing, corrupt or not a label map."""
    return decode_label(Path(path), str(path), DataError)


def read_label_bytes(data: bytes, where: str) -> np.ndarray:
    """Decode encoded label-map bytes; ``where`` names the source in errors."""
    return decode_label(data, where, DataError)


def ignore_label_for(num_classes: int) -> int:
    """The ignore value of a dataset's label maps: 255 for uint8 maps, 65535 for uint16 (>= 255 classes)."""
    return IGNORE_LABEL if num_classes < IGNORE_LABEL else 65535


def classes_of_label(label: np.ndarray, num_classes: int, where: str = "<mask>") -> list[int]:
    """Sorted 0-based classes with at least one pixel in ``label``; DataError on out-of-range values."""
    label = np.asarray(label)
    ignore = ignore_label_for(num_classes)
    if label.dtype == np.uint8:
        counts = np.bincount(label.ravel(), minlength=256)
        values = np.nonzero(counts)[0]
    else:
        values = np.unique(label)
    values = values[(values != 0) & (values != ignore)].astype(np.int64)
    present = values - 1
    bad = present[present >= num_classes]
    if bad.size:
        raise DataError(
            f"label map {where} holds label value(s) {(bad + 1).tolist()[:5]} but the dataset has only "
            f"{num_classes} classes (labels 1..{num_classes}; 0 background, 255 ignore)"
        )
    return present.tolist()


# ------------------------------------------------------------------------------------------ interface
class SegDataset:
    """Images with label maps over ``class_names`` (0-based ids index the list).

    A reader sets ``_ids`` (image ids in index order) and implements ``_image_path`` and ``_label_path``;
    the defaults below then give ``__len__``, ``image_id``, ``load_image`` and ``load_label``, so every
    reader checks indices and names files the same way. A reader without files or ids (rows of a table,
    arrays in memory) overrides those four instead. Readers may override ``_compute_classes`` to read which
    classes each image holds from metadata instead of scanning masks. ``index_file`` (optional) caches
    that scan as JSON, keyed by the list of image ids.
    """

    name: str = "dataset"
    class_names: list[str]
    _ids: list[str]  # image ids in index order, set by the reader

    def __init__(self, index_file: str | Path | None = None) -> None:
        self._index_file = Path(index_file) if index_file is not None else None
        self._classes: list[list[int]] | None = None
        self._by_class: dict[int, list[int]] | None = None
        self._id_to_index: dict[str, int] | None = None

    # --- per image: defaults over ``_ids`` and the two path hooks (shared so readers cannot drift apart)
    def __len__(self) -> int:
        return len(self._ids)

    def image_id(self, i: int) -> str:
        """A stable string id of image ``i`` (file stem, row id): episode files store these."""
        self._check_index(i)
        return self._ids[i]

    def load_image(self, i: int) -> np.ndarray:
        """H x W x 3 uint8 RGB image."""
        self._check_index(i)
        return read_rgb(self._image_path(i))

    def load_label(self, i: int) -> np.ndarray:
        """H x W label map: 0 background, c+1 for class c, ``ignore_label`` ignored (uint8 unless >= 255 classes)."""
        self._check_index(i)
        return read_label(self._label_path(i))

    def _image_path(self, i: int) -> Path:
        """The image file of (already checked) index ``i``, for the default ``load_image``."""
        raise NotImplementedError(f"{type(self).__name__} must implement _image_path or override load_image")

    def _label_path(self, i: int) -> Path:
        """The label-map file of (already checked) index ``i``, for the default ``load_label``."""
        raise NotImplementedError(f"{type(self).__name__} must implement _label_path or override load_label")

    # --- provided
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(image, label map) of image ``i``; DataError if their sizes differ."""
        image, label = self.load_image(i), self.load_label(i)
        if image.shape[:2] != label.shape:
            raise DataError(
                f"{self.name}: image {self.image_id(i)!r} is {image.shape[1]}x{image.shape[0]} but its label map is "
                f"{label.shape[1]}x{label.shape[0]}; image and mask must have the same size"
            )
        return image, label

    @property
    def text_names(self) -> list[str]:
        """Class names as words for text prompts (``class_names`` unless a reader knows better spellings)."""
        return list(self.class_names)

    @property
    def ignore_label(self) -> int:
        """The label value that marks ignored pixels in this dataset's label maps (255, or 65535 if uint16)."""
        return ignore_label_for(self.num_classes)

    def load_class_mask(self, i: int, c: int) -> np.ndarray:
        """H x W uint8 mask of class ``c`` in image ``i``: 1 class, 0 other, 255 ignore."""
        label = self.load_label(i)
        out = (label == int(c) + 1).astype(np.uint8)
        out[label == self.ignore_label] = IGNORE_LABEL
        return out

    def caption(self, i: int) -> str | None:
        """A caption of image ``i`` when the format has one."""
        self._check_index(i)
        return None

    def classes_in(self, i: int) -> list[int]:
        """Sorted 0-based classes with pixels in image ``i`` (from the cached index)."""
        self._check_index(i)
        return list(self._class_index()[i])

    def images_of_class(self, c: int) -> list[int]:
        """Indices of the images that contain class ``c``, ascending."""
        if not 0 <= int(c) < self.num_classes:
            raise InputError(f"{self.name}: class id {c} is out of range 0..{self.num_classes - 1}")
        if self._by_class is None:
            by: dict[int, list[int]] = {k: [] for k in range(self.num_classes)}
            for i, cs in enumerate(self._class_index()):
                for k in cs:
                    by[k].append(i)
            self._by_class = by
        return list(self._by_class[int(c)])

    def index_of(self, image_id: str) -> int:
        """The index of the image with id ``image_id``; DataError if there is none."""
        if self._id_to_index is None:
            self._id_to_index = {self.image_id(i): i for i in range(len(self))}
        try:
            return self._id_to_index[image_id]
        except KeyError:
            raise DataError(
                f"{self.name}: no image with id {image_id!r} in this dataset ({len(self)} images)"
            ) from None

    def use_index_file(self, path: str | Path | None) -> None:
        """Cache the class index in ``path`` (JSON, keyed by the image ids); None keeps it in memory only."""
        self._index_file = Path(path) if path is not None else None

    def ids(self) -> list[str]:
        return [self.image_id(i) for i in range(len(self))]

    def _check_index(self, i: int) -> None:
        if not 0 <= int(i) < len(self):
            raise InputError(f"{self.name}: image index {i} is out of range 0..{len(self) - 1}")

    def _compute_classes(self) -> list[list[int]]:
        """Scan every label map (slow on big datasets; subclasses with metadata override this)."""
        logger.info("%s: scanning %d label maps for the classes they contain", self.name, len(self))
        return [
            classes_of_label(self.load_label(i), self.num_classes, f"{self.name}:{self.image_id(i)}")
            for i in range(len(self))
        ]

    def _ids_digest(self) -> str:
        h = hashlib.sha256()
        for i in range(len(self)):
            h.update(self.image_id(i).encode("utf-8") + b"\n")
        h.update(("|".join(self.class_names)).encode("utf-8"))
        return h.hexdigest()

    def _class_index(self) -> list[list[int]]:
        if self._classes is not None:
            return self._classes
        classes = self._load_index_file() if self._index_file is not None else None
        if classes is None:
            classes = [sorted(int(c) for c in cs) for cs in self._compute_classes()]
            if len(classes) != len(self):
                raise DataError(f"{self.name}: class index has {len(classes)} entries for {len(self)} images")
            if self._index_file is not None:
                self._save_index_file(classes)
        self._classes = classes
        return classes

    def _load_index_file(self) -> list[list[int]] | None:
        path = self._index_file
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text("utf-8"))
            if data.get("digest") == self._ids_digest() and len(data["classes"]) == len(self):
                return [[int(c) for c in cs] for cs in data["classes"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("ignoring unreadable class index %s (%s); rebuilding it", path, e)
            return None
        logger.info("class index %s is for another image list; rebuilding it", path)
        return None

    def _save_index_file(self, classes: Sequence[Sequence[int]]) -> None:
        from ..io_utils import atomic_write_text  # io_utils imports torch; the readers stay torch-free

        if self._index_file is None:
            return
        try:
            atomic_write_text(self._index_file, json.dumps({"digest": self._ids_digest(), "classes": classes}))
        except OSError as e:  # a read-only cache must not stop evaluation
            logger.warning("could not write class index %s: %s", self._index_file, e)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, images={len(self)}, classes={self.num_classes})"


def resolve_dir(root: str | Path | None, what: str, expected: str) -> Path:
    """``root`` as a Path that must be an existing folder; DataError saying what layout was expected."""
    if root is None:
        raise DataError(f"{what}: no data root given; pass the dataset folder (expected layout: {expected})")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{what}: data root {path} does not exist or is not a folder (expected layout: {expected})")
    return path
