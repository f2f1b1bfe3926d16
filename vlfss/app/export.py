"""The app's downloads: a palette label PNG per query image and one COCO JSON with RLE masks for all of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..io_utils import atomic_save_image, atomic_write_text
from ..modeling.types import SegmentationOutput
from ..viz import label_png


def rle(mask: np.ndarray) -> dict:
    """COCO run-length encoding of a binary H x W mask, JSON-ready (``counts`` as ASCII)."""
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}


def coco_dict(names: list[str], outputs: list[SegmentationOutput], class_names: list[str]) -> dict:
    """COCO instances-style dict: one image per query, one category per class, one annotation per non-empty
    class mask (segmentation as RLE, area, bbox, and the mean confidence inside the mask as ``score``)."""
    from pycocotools import mask as mask_utils

    images, annotations = [], []
    for i, (name, out) in enumerate(zip(names, outputs)):
        h, w = (int(s) for s in out.labels.shape)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        for c in range(len(class_names)):
            m = out.masks[c].numpy()
            if not m.any():
                continue
            seg = rle(m)
            enc = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": c + 1, "segmentation": seg,
                "area": int(mask_utils.area(enc)), "bbox": [float(v) for v in mask_utils.toBbox(enc)],
                "iscrowd": 0, "score": round(float(out.confidence[out.masks[c]].mean()), 4)})
    categories = [{"id": c + 1, "name": n} for c, n in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_downloads(folder: Path, names: list[str], outputs: list[SegmentationOutput]) -> list[Path]:
    """``<stem>_labels.png`` per image (pixel value = label, VOC palette) and ``segmentation_coco.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, stems = [], set()
    for name, out in zip(names, outputs):
        stem = Path(name).stem or "image"
        while stem in stems:  # two uploads with one name: keep both
            stem += "_"
        stems.add(stem)
        p = folder / f"{stem}_labels.png"
        atomic_save_image(label_png(out.labels.numpy()), p)
        paths.append(p)
    coco = folder / "segmentation_coco.json"
    atomic_write_text(coco, json.dumps(coco_dict(names, outputs, outputs[0].class_names if outputs else [])))
    return [*paths, coco]
