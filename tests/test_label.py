"""`vlfss label` end to end on synthetic scenes with the embedded tiny model: outputs, resume, shares, bad input."""

from __future__ import annotations

import errno
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from vlfss.cli import main
from vlfss.data.synthetic import CLASS_NAMES, SyntheticConfig, generate_scene
from vlfss.errors import InputError
from vlfss.labeling import label
from vlfss.labeling.sources import resolve_sources

N_IMAGES = 10
FAST = {"workers": 0, "progress": False, "precision": "fp32"}  # fp32: the same numbers on every CPU


def _scene(index: int):
    return generate_scene(0, index, SyntheticConfig(image_size=96))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """N_IMAGES test-split scenes in a folder (some in a subfolder) and one support example from the val split."""
    root = tmp_path_factory.mktemp("label")
    for i in range(N_IMAGES):
        d = root / "imgs" / ("sub" if i % 4 == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_scene(2_000_000_000 + i).image).save(d / f"s{i:02d}.png")
    sup = _scene(1_000_000_000)
    c = sup.class_ids[0]
    Image.fromarray(sup.image).save(root / "sup.png")
    Image.fromarray(((sup.mask == c + 1) * 255).astype(np.uint8)).save(root / "sup_mask.png")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "s00.png")  # a mask of the wrong size
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_dict({"a": [1]}).save_to_disk(str(root / "noimg"))  # a dataset without images
    return {"root": root, "imgs": root / "imgs", "text": CLASS_NAMES[c],
            "supports": [[(str(root / "sup.png"), str(root / "sup_mask.png"))]]}


@pytest.fixture(scope="module")
def seg():
    from vlfss.segmenter import build_segmenter

    return build_segmenter(feature_cache_items=0)


@pytest.fixture(scope="module")
def reference(world, seg, tmp_path_factory):
    """One uninterrupted one-process run (batch size 3) that the resumed and shared runs must equal."""
    out = tmp_path_factory.mktemp("reference") / "out"
    run(world, seg, out, batch_size=3)
    return tree(out)


def tree(out) -> dict[str, bytes]:
    """Every published file under ``out`` (the journals of the working state left out)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".vlfss-label" not in p.parts}


def run(world, seg, out, **kw):
    return label(world["imgs"], out, texts=[world["text"]], supports=world["supports"], segmenter=seg,
                 **{**FAST, **kw})


def test_labels_equal_segment_and_coco_round_trips(world, seg, tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    out = tmp_path / "out"
    s = run(world, seg, out, batch_size=N_IMAGES, overlay=True, confidence=True)
    assert (s.done, s.failed, s.skipped, s.complete) == (N_IMAGES, 0, 0, True)
    items = resolve_sources([world["imgs"]]).items
    # the same request through Segmenter.segment, the same images in one batch: the same labels
    ref = seg.segment([it.path for it in items], texts=[world["text"]], supports=world["supports"])
    for it, o in zip(items, ref):
        png = Image.open(out / "labels" / f"{it.name}.png")
        assert png.mode == "P" and np.array_equal(np.asarray(png), o.labels.numpy())
        assert (out / "overlays" / f"{it.name}.png").is_file() and (out / "confidence" / f"{it.name}.png").is_file()
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["path"] for m in manifest] == [it.path for it in items]
    assert all(m["status"] == "done" and 0 <= m["uncertainty"] <= 1 for m in manifest)
    assert all(m["inference"] == seg.how_encoded(m["height"], m["width"])[0] for m in manifest)  # how, recorded
    gt = COCO(str(out / "coco.json"))
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == [world["text"]]
    assert len(gt.getImgIds()) == N_IMAGES
    n_ann = 0
    for img in gt.loadImgs(gt.getImgIds()):
        labels = np.asarray(Image.open(out / "labels" / (img["file_name"].rsplit(".", 1)[0] + ".png")))
        for ann in gt.loadAnns(gt.getAnnIds(imgIds=[img["id"]])):
            m = mask_utils.decode(ann["segmentation"])
            assert np.array_equal(m, labels == ann["category_id"]) and ann["area"] == m.sum()
            n_ann += 1
    assert n_ann == sum(1 for m in manifest if m["classes"][0]["area_px"]) > 0
    results = [{k: v for k, v in a.items() if k != "bbox"} for a in json.loads((out / "coco.json").read_text())
               ["annotations"]]
    assert len(gt.loadRes(results).getAnnIds()) == n_ann  # usable as COCOeval results


def test_rerun_skips_what_is_done_and_refuses_other_options(world, seg, reference, tmp_path):
    out = tmp_path / "out"
    run(world, seg, out, batch_size=3)
    first = tree(out)
    assert first == reference  # deterministic
    again = run(world, seg, out, batch_size=3)
    assert (again.done, again.skipped) == (0, N_IMAGES) and tree(out) == first
    with pytest.raises(InputError, match=r"other options \(.*classes.*--overwrite"):
        label(world["imgs"], out, texts=["something else"], segmenter=seg, **FAST)
    with pytest.raises(InputError, match="overlay: false -> true"):
        run(world, seg, out, overlay=True)
    assert tree(out) == first  # refusals touch nothing
    other = label(world["imgs"], out, texts=["something else"], segmenter=seg, overwrite=True, **FAST)
    assert other.done == N_IMAGES and json.loads((out / "run.json").read_text())["options"]["classes"] == [
        "something else"]


def test_a_changed_or_added_image_is_labelled_again(world, seg, tmp_path):
    imgs = tmp_path / "imgs"
    shutil.copytree(world["imgs"], imgs)
    out = tmp_path / "out"
    label(imgs, out, texts=[world["text"]], segmenter=seg, batch_size=4, **FAST)
    Image.fromarray(_scene(2_000_000_100).image).save(imgs / "s03.png")  # new content, same name
    Image.fromarray(_scene(2_000_000_101).image).save(imgs / "zz.png")  # a new image
    s = label(imgs, out, texts=[world["text"]], segmenter=seg, batch_size=4, **FAST)
    assert (s.done, s.skipped) == (2, N_IMAGES - 1)
    fresh = tmp_path / "fresh"
    label(imgs, fresh, texts=[world["text"]], segmenter=seg, batch_size=4, **FAST)
    assert tree(out) == tree(fresh)


def test_unreadable_images_are_recorded_and_the_run_goes_on(world, seg, tmp_path):
    imgs = tmp_path / "imgs"
    shutil.copytree(world["imgs"], imgs)
    (imgs / "garbage.png").write_bytes(b"this is not a png")
    good = (imgs / "s01.png").read_bytes()
    (imgs / "truncated.png").write_bytes(good[: len(good) // 3])
    out = tmp_path / "out"
    s = label(imgs, out, texts=[world["text"]], segmenter=seg, batch_size=4, **FAST)
    assert (s.done, s.failed, s.complete) == (N_IMAGES, 2, True)
    bad = {m["name"]: m for line in (out / "manifest.jsonl").read_text().splitlines() if (m := json.loads(line))
           and m["status"] == "failed"}
    assert set(bad) == {"garbage", "truncated"}
    assert "not an image file" in bad["garbage"]["reason"] and "truncated" in bad["truncated"]["reason"]
    assert not (out / "labels" / "garbage.png").exists()
    assert len(json.loads((out / "coco.json").read_text())["images"]) == N_IMAGES


def test_shares_merge_to_the_one_process_run(world, seg, reference, tmp_path):
    split = tmp_path / "split"
    first = run(world, seg, split, batch_size=3, shard="0/2")
    assert not first.complete and not (split / "manifest.jsonl").exists()
    second = run(world, seg, split, batch_size=3, shard="1/2")
    assert second.complete and first.done + second.done == N_IMAGES
    assert tree(split) == reference


def test_a_full_disk_stops_cleanly_and_the_rerun_finishes(world, seg, reference, tmp_path, monkeypatch):
    import vlfss.labeling.writers as writers

    real, calls = writers.atomic_save_image, []

    def full_after_four(image, path):
        calls.append(path)
        if len(calls) > 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(image, path)

    out = tmp_path / "out"
    monkeypatch.setattr(writers, "atomic_save_image", full_after_four)
    with pytest.raises(InputError, match="No space left on device.*rerun the same command"):
        run(world, seg, out, batch_size=3, writers=1)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written
    assert len(list((out / "labels").rglob("*.png"))) == 4 and not (out / "manifest.jsonl").exists()
    monkeypatch.setattr(writers, "atomic_save_image", real)
    s = run(world, seg, out, batch_size=3, writers=1)
    assert s.complete and s.skipped == 4
    assert tree(out) == reference


# ---------------------------------------------------------------------------------------------- CLI
def cli(args, capsys):
    code = main(["label", *map(str, args)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_labels_and_suggests(world, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = cli([world["imgs"], "--text", world["text"], "--support", *world["supports"][0][0], "--out", out,
                        "--suggest", "3", "--precision", "fp32", "--workers", "1", "--batch-size", "4"], capsys)
    assert code == 0, err
    assert f"labelled {N_IMAGES}, skipped 0, failed 0" in err and "images/s" in err
    chosen = (out / "suggest.txt").read_text().splitlines()
    assert len(chosen) == 3 == len(set(chosen)) and all(p.startswith(str(world["imgs"])) for p in chosen)
    manifest = {m["path"]: m for m in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    top = max(manifest.values(), key=lambda m: m["uncertainty"])
    assert chosen[0] == top["path"]  # the first pick is the least sure image
    sheet = Image.open(out / "suggest.png")
    assert sheet.width > 3 * 96 and sheet.height > 96


@pytest.mark.parametrize("args, message", [
    (["{root}/nothing-here", "--text", "x"], "SOURCE {root}/nothing-here does not exist"),
    (["{imgs}", "--text", "x", "--shard", "3"], "--shard '3': expected I/N with 0 <= I < N"),
    (["{imgs}", "--text", "x", "--shard", "1/2", "--overwrite"], "--overwrite with --shard"),
    (["{imgs}", "--text", "x", "--batch-size", "0"], "batch-size must be an integer >= 1"),
    (["{imgs}", "--support", "{root}/sup.png", "{root}/s00.png"], "differs from its image"),
    (["hf:{root}/noimg", "--text", "x"], "no image column; its columns are ['a']"),
])
def test_cli_bad_input_is_one_clear_line(world, tmp_path, capsys, args, message):
    fmt = {"root": world["root"], "imgs": world["imgs"]}
    code, _, err = cli([a.format(**fmt) for a in args] + ["--out", tmp_path / "out"], capsys)
    assert code == 2 and err.count("\n") == 1 and message.format(**fmt) in err, err


def test_cli_unwritable_output_fails_before_work(world, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli([world["imgs"], "--text", "x", "--out", blocker / "out"], capsys)
    assert code == 2 and "not writable" in err and err.count("\n") == 1


@pytest.mark.slow
def test_multiscale_and_refinement_are_labelled_as_segment_does(world, tmp_path):
    from vlfss.segmenter import build_segmenter

    seg = build_segmenter(feature_cache_items=0, inference="multiscale", refine="pamr")
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    imgs.mkdir()
    for p in sorted(world["imgs"].glob("*.png"))[:3]:
        shutil.copy(p, imgs / p.name)
    label(imgs, out, texts=[world["text"]], supports=world["supports"], segmenter=seg, batch_size=3, **FAST)
    items = resolve_sources([imgs]).items
    ref = seg.segment([it.path for it in items], texts=[world["text"]], supports=world["supports"])
    for it, o in zip(items, ref):
        assert np.array_equal(np.asarray(Image.open(out / "labels" / f"{it.name}.png")), o.labels.numpy())
