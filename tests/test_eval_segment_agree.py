"""`vlfss eval` and `vlfss segment` give the same prediction for the same image and class.

Both commands run with their defaults on the embedded tiny CLIP (its own template set, its shipped head): the
harness scores one synthetic episode, and `segment` is run on the episode's query image (written to a PNG) with
the episode's class name and support. A 1-way, 1-episode row's mIoU, FB-IoU and pixel accuracy are ratios of
pixel counts of that one prediction, so they equal the counts of `segment`'s label map exactly. This is the
check that would have caught `eval --templates` defaulting to another template set than `segment`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlfss.cli import main
from vlfss.data import build_benchmark
from vlfss.data.episodes import load_episode, load_episodes
from vlfss.data.synthetic_store import materialize_synthetic
from vlfss.evaluation.report import read_jsonl

N_IMAGES, SIZE = 60, 96  # the tiny CLIP's native input size


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth96")
    materialize_synthetic(root, "test", N_IMAGES, 0, "hf", SIZE)
    return root


def _eval_one_episode(root: Path, mode: str, out: Path) -> tuple[dict, dict]:
    """`vlfss eval` (defaults) on one fold-0 episode: (rows by input, the episode's arrays and class name)."""
    rc = main(["eval", "--benchmark", "synthetic", "--data-root", str(root), "--bench-opt", f"n_images={N_IMAGES}",
               f"image_size={SIZE}", "--fold", "0", "--shots", "0", "1", "--episodes", "1", "--mode", mode,
               "--no-baselines", "--no-plots", "--quiet", "--out", str(out)])
    assert rc == 0
    rows, _ = read_jsonl(out / "results.jsonl")
    (episodes_file,) = (out / "episodes").glob("*.json")
    (spec,), _ = load_episodes(episodes_file)
    bench = build_benchmark("synthetic", root, "test", 0, n_images=N_IMAGES, image_size=SIZE)
    ep = load_episode(bench.dataset, spec)
    return {r["input"]: r for r in rows}, {"query": ep.query_image, "mask": ep.query_mask, "text": ep.texts[0],
                                           "support": ep.support_images[0], "support_mask": ep.support_masks[0]}


def _segment(files: dict[str, Path], text: str, inp: str, mode: str, out: Path, *extra: str) -> np.ndarray:
    """`vlfss segment` (defaults) on the query PNG with the row's input; returns its label map."""
    args = ["segment", str(files["query"]), "--mode", mode, "--out", str(out), "--quiet", *extra]
    if inp in ("text", "text+examples"):
        args += ["--text", text]
    if inp in ("examples", "text+examples"):
        args += ["--support", str(files["support"]), str(files["support_mask"])]
    assert main(args) == 0
    return np.asarray(Image.open(out / "query_labels.png"))


def _counts(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """1-way scores of one prediction: class IoU, FB-IoU and pixel accuracy (label 255 ignored)."""
    valid = target != 255
    ious = []
    for c in (0, 1):
        p, t = (pred == c) & valid, (target == c) & valid
        ious.append(int((p & t).sum()) / int((p | t).sum()))
    return {"miou": ious[1], "fb_iou": (ious[0] + ious[1]) / 2,
            "pixel_accuracy": int(((pred == target) & valid).sum()) / int(valid.sum())}


@pytest.mark.parametrize("mode", ["training-free", "learned"])
def test_eval_and_segment_agree(synth_root, tmp_path, mode):
    rows, ep = _eval_one_episode(synth_root, mode, tmp_path / "eval")
    files = {k: tmp_path / f"{k}.png" for k in ("query", "support", "support_mask")}
    for k, path in files.items():
        Image.fromarray(ep[k]).save(path)
    assert rows.keys() == {"text", "examples", "text+examples"}
    for inp, row in rows.items():
        labels = _segment(files, ep["text"], inp, mode, tmp_path / inp)
        assert labels.shape == ep["mask"].shape
        want = _counts(labels, ep["mask"])
        got = {k: row[k] for k in want}
        assert got == pytest.approx(want, abs=1e-12), inp
    if mode == "training-free":  # the check is sensitive to the template set: another set, another prediction
        ours = _segment(files, ep["text"], "text", mode, tmp_path / "ours")
        other = _segment(files, ep["text"], "text", mode, tmp_path / "other", "--templates", "default")
        assert not np.array_equal(ours, other)
