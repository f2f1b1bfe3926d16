"""Per-image outputs (label PNG, overlay, confidence, the record) and the run's published files (manifest.jsonl,
coco.json, the Hugging Face dataset), every file written through a temporary name and renamed.

A label PNG is a palette image whose pixel values are the labels (0 background, i for the i-th class). The COCO
file is in the dataset format (``info``, ``categories``, ``images``, ``annotations``) that CVAT, FiftyOne and
supervision import and ``pycocotools.coco.COCO`` loads; each (image, class) with at least one pixel is one
annotation with an RLE ``segmentation`` (``counts`` as ASCII), ``area``, ``bbox`` ``[x, y, w, h]`` and
``score`` = the class's mean confidence; ``COCO.loadRes`` takes its ``annotations`` list as results.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils  # core dependency: COCO RLE is the interchange format of labelling
from torch import Tensor

from ..io_utils import atomic_save_image
from ..modeling.types import make_output
from ..viz import heatmap, label_png, overlay
from .sources import Item
from .suggest import uncertainty

MAX_CLASSES = 254  # label PNGs are 8-bit; 255 stays free for "ignore" as in the datasets


@dataclass(frozen=True)
class OutputOptions:
    """Which per-image files to write."""

    overlay: bool = False
    confidence: bool = False


def rle_of(mask: np.ndarray) -> tuple[str, list[float]]:
    """A binary H x W mask -> (COCO RLE ``counts`` as an ASCII string, bbox [x, y, w, h])."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return rle["counts"].decode("ascii"), [round(float(v), 2) for v in mask_utils.toBbox(rle)]


class ImageWriter:
    """Writes one image's files and returns its record (run in worker threads; holds no mutable state)."""

    def __init__(self, out: Path, class_names: list[str], options: OutputOptions) -> None:
        self.out = out
        self.names = list(class_names)
        self.options = options

    def write(self, item: Item, digest: str, image: np.ndarray, logits: Tensor,
              how: tuple[str, int] | None = None) -> dict[str, Any]:
        """``logits``: (N+1) x H x W, background first (``loop.image_logits``); ``how``: (strategy, windows) the
        image was encoded with (``Segmenter.how_encoded``), recorded with it."""
        out = make_output(logits, self.names)
        labels = out.labels.numpy().astype(np.uint8)
        from PIL import Image

        atomic_save_image(label_png(labels), self.out / "labels" / f"{item.name}.png")
        if self.options.overlay:
            atomic_save_image(Image.fromarray(overlay(image, labels)), self.out / "overlays" / f"{item.name}.png")
        if self.options.confidence:
            atomic_save_image(Image.fromarray(heatmap(out.confidence.numpy())),
                              self.out / "confidence" / f"{item.name}.png")
        conf = out.confidence
        classes = []
        for i, name in enumerate(self.names):
            m = out.masks[i]
            area = int(m.sum())
            c = {"label": i + 1, "name": name, "area_px": area, "area_frac": round(area / labels.size, 5),
                 "mean_confidence": round(float(conf[m].mean()), 4) if area else 0.0}
            if area:
                c["rle"], c["bbox"] = rle_of(m.numpy())
            classes.append(c)
        return {"path": item.path, "name": item.name, "hash": digest, "status": "done",
                "height": int(labels.shape[0]), "width": int(labels.shape[1]), "classes": classes,
                "mean_confidence": round(float(conf.mean()), 4), "mean_entropy": round(float(out.entropy.mean()), 4),
                "uncertainty": round(uncertainty(out.probs, out.labels, out.entropy), 4),
                **({"inference": how[0], **({"windows": how[1]} if how[1] else {})} if how else {})}


def failed_record(item: Item, digest: str | None, reason: str) -> dict[str, Any]:
    return {"path": item.path, "name": item.name, "hash": digest, "status": "failed", "reason": reason}


def manifest_line(record: dict[str, Any]) -> str:
    """The published manifest's line of a record: without the journal's timestamp and RLE strings."""
    r = {k: v for k, v in record.items() if k != "t"}
    if "classes" in r:
        r["classes"] = [{k: v for k, v in c.items() if k != "rle"} for c in r["classes"]]
    return json.dumps(r) + "\n"


# --------------------------------------------------------------------------------------- run outputs
@contextlib.contextmanager
def atomic_stream(path: Path) -> Iterator[Any]:
    """A text file written in pieces under a temporary name, renamed over ``path`` only when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_manifest(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with atomic_stream(path) as f:
        for r in records:
            f.write(manifest_line(r))


def write_coco(path: Path, class_names: list[str], records: Callable[[], Iterable[tuple[int, Item, dict]]],
               info: dict[str, Any]) -> None:
    """coco.json streamed from ``records()`` ((image id, item, record) of done images, in id order; read twice)."""
    cats = [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(class_names)]
    with atomic_stream(path) as f:
        f.write('{"info": ' + json.dumps(info) + ', "licenses": [], "categories": ' + json.dumps(cats))
        f.write(', "images": [')
        for k, (image_id, item, r) in enumerate(records()):
            f.write((", " if k else "") + json.dumps({"id": image_id, "file_name": item.file_name,
                                                     "height": r["height"], "width": r["width"]}))
        f.write('], "annotations": [')
        ann_id = 0
        for image_id, _, r in records():
            for c in r["classes"]:
                if not c["area_px"]:
                    continue
                ann_id += 1
                ann = {"id": ann_id, "image_id": image_id, "category_id": c["label"],
                       "segmentation": {"size": [r["height"], r["width"]], "counts": c["rle"]},
                       "area": c["area_px"], "bbox": c["bbox"], "iscrowd": 0, "score": c["mean_confidence"]}
                f.write((", " if ann_id > 1 else "") + json.dumps(ann))
        f.write("]}\n")


def write_hf_dataset(path: Path, rows: Callable[..., Iterator[dict[str, Any]]], class_names: list[str],
                     gen_kwargs: dict[str, Any]) -> None:
    """``datasets.save_to_disk`` of the (id, image, mask, classes) rows ``rows(**gen_kwargs)`` yields, built in a
    temporary folder and renamed into place."""
    import shutil

    import datasets  # heavy optional-at-use import: only runs that ask for a dataset pay for it
    from datasets import ClassLabel, Features, Image, List, Value

    features = Features({"id": Value("string"), "image": Image(), "mask": Image(),
                         "classes": List(ClassLabel(names=list(class_names)))})
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        was_on = not datasets.utils.are_progress_bars_disabled()
        datasets.utils.disable_progress_bars()
        try:
            ds = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(tmp / "cache"),
                                                 gen_kwargs=gen_kwargs)
            ds.save_to_disk(str(tmp / "data"))
        finally:
            if was_on:
                datasets.utils.enable_progress_bars()
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp / "data", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def hf_row(item: Item, image_bytes: bytes, label_file: Path, record: dict[str, Any]) -> dict[str, Any]:
    """One row of the Hugging Face dataset output: the encoded image as given, the label PNG, the classes."""
    present = [c["label"] - 1 for c in record["classes"] if c["area_px"]]
    return {"id": item.name, "image": {"bytes": image_bytes, "path": None},
            "mask": {"bytes": label_file.read_bytes(), "path": None}, "classes": present}
