"""The CLI end to end on generated images, and every bad input: one clear line, exit code 2."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import blob_scene
from vlfss.cli import main


@pytest.fixture()
def files(tmp_path, rng):
    q, _ = blob_scene(rng, 40, 56)
    s, sm = blob_scene(rng, 30, 44)
    paths = {"query": tmp_path / "query.png", "support": tmp_path / "sup.jpg", "mask": tmp_path / "sup_mask.png"}
    Image.fromarray(q).save(paths["query"])
    Image.fromarray(s).save(paths["support"], quality=95)
    Image.fromarray(sm * 255).save(paths["mask"])
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture()
def model_args(tiny_clip_name, tiny_clip_weights):
    return ["--model", tiny_clip_name, "--pretrained", tiny_clip_weights, "--templates", "plain"]


def run(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_segment_writes_all_outputs(files, model_args, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(["segment", files["query"], "--text", "a cat", "--support", files["support"],
                             files["mask"], "--text", "a dog", "--out", str(out), *model_args], capsys)
    assert code == 0, err
    for suffix in ("_labels.png", "_overlay.png", "_confidence.png", ".json"):
        assert (out / f"query{suffix}").is_file()
    summary = json.loads((out / "query.json").read_text())
    assert [c["name"] for c in summary["classes"]] == ["a cat", "a dog"]
    labels = np.asarray(Image.open(out / "query_labels.png"))
    assert labels.shape == (40, 56) and labels.max() <= 2
    assert sum(c["area_px"] for c in summary["classes"]) == int((labels > 0).sum())


def test_segment_records_how_each_image_was_encoded(files, model_args, tmp_path, capsys):
    """--inference picks the strategy; every JSON says what was done (auto: its pick; slide: the window count)."""
    big = tmp_path / "big.png"  # the tiny test model's windows are 32 px: 96 x 128 is 3 x 4 windows and more
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(big)
    for flag, want in (([], "slide"), (["--inference", "resize"], "resize"), (["--inference", "multiscale"],
                                                                               "multiscale")):
        out = tmp_path / f"out{want}"
        code, _, err = run(["segment", str(big), files["query"], "--text", "a cat", "--out", str(out),
                            *model_args, *flag, "--set", "slide_short_side=0"], capsys)
        assert code == 0, err
        got = json.loads((out / "big.json").read_text())
        assert got["inference"] == want and (got.get("windows", 0) > 1) == (want == "slide")
        small = json.loads((out / "query.json").read_text())  # 40 x 56: under auto's two windows
        assert small["inference"] == ("resize" if want == "slide" else want) and "windows" not in small
    with pytest.raises(SystemExit) as e:
        main(["segment", files["query"], "--text", "a cat", "--inference", "tiles", *model_args])
    assert e.value.code == 2 and "--inference: invalid choice: 'tiles'" in capsys.readouterr().err


def test_existing_outputs_not_overwritten(files, model_args, tmp_path, capsys):
    out = tmp_path / "o"
    assert run(["segment", files["query"], "--text", "x", "--out", str(out), *model_args], capsys)[0] == 0
    (out / "query.json").write_text("user data")
    code, _, err = run(["segment", files["query"], "--text", "x", "--out", str(out), *model_args], capsys)
    assert code == 2 and "--overwrite" in err
    assert (out / "query.json").read_text() == "user data"
    assert run(["segment", files["query"], "--text", "x", "--out", str(out), "--overwrite", *model_args],
               capsys)[0] == 0


def _bad(capsys, args, match):
    code, _, err = run(args, capsys)
    assert code == 2, err
    assert match in err, err
    assert err.count("\n") <= 2 and "Traceback" not in err


def test_missing_image(files, model_args, tmp_path, capsys):
    _bad(capsys, ["segment", str(tmp_path / "nope.png"), "--text", "x", "--out", str(tmp_path / "o"),
                  *model_args], "does not exist")


def test_corrupt_and_truncated_images(files, model_args, tmp_path, capsys):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    _bad(capsys, ["segment", str(junk), "--text", "x", "--out", str(tmp_path / "o"), *model_args], "not an image")
    data = open(files["support"], "rb").read()
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(data[: len(data) // 2])
    _bad(capsys, ["segment", str(trunc), "--text", "x", "--out", str(tmp_path / "o"), *model_args], "truncated")


def test_mask_size_mismatch(files, model_args, tmp_path, capsys):
    _bad(capsys, ["segment", files["query"], "--support", files["support"], files["query"].replace("query", "q2"),
                  "--out", str(tmp_path / "o"), *model_args], "does not exist")
    small = tmp_path / "small_mask.png"
    Image.fromarray(np.ones((5, 5), np.uint8) * 255).save(small)
    _bad(capsys, ["segment", files["query"], "--support", files["support"], str(small),
                  "--out", str(tmp_path / "o"), *model_args], "differs from its image")


def test_mask_bad_values_and_empty(files, model_args, tmp_path, capsys):
    img = np.asarray(Image.open(files["support"]))
    bad = tmp_path / "bad.png"
    Image.fromarray(np.full(img.shape[:2], 7, np.uint8)).save(bad)
    _bad(capsys, ["segment", files["query"], "--support", files["support"], str(bad),
                  "--out", str(tmp_path / "o"), *model_args], "not binary")
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros(img.shape[:2], np.uint8)).save(empty)
    _bad(capsys, ["segment", files["query"], "--support", files["support"], str(empty),
                  "--out", str(tmp_path / "o"), *model_args], "no foreground")


def test_support_without_mask_is_usage_error(files, model_args, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["segment", files["query"], "--support", files["support"]])
    assert e.value.code == 2
    assert "--support" in capsys.readouterr().err


def test_unknown_model_and_offline_weights(files, tmp_path, capsys):
    _bad(capsys, ["segment", files["query"], "--text", "x", "--model", "nope-net", "--out", str(tmp_path / "o")],
         "unknown model")
    _bad(capsys, ["segment", files["query"], "--text", "x", "--model", "RN50", "--pretrained", "openai",
                  "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o")], "--pretrained /path/to/file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output(files, model_args, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    _bad(capsys, ["segment", files["query"], "--text", "x", "--out", str(ro / "sub"), *model_args], "not writable")


def test_output_path_is_a_file(files, model_args, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    _bad(capsys, ["segment", files["query"], "--text", "x", "--out", str(f), *model_args], "not writable")


def test_long_prompt_warns(files, model_args, tmp_path, capsys):
    long = " ".join(["very"] * 40) + " cat"
    with pytest.warns(UserWarning, match="truncated"):
        code = main(["segment", files["query"], "--text", long, "--out", str(tmp_path / "o"), *model_args])
    assert code == 0


def test_models_lists_default(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "vlfss-tiny" in out and "ViT-B-16" in out


def test_demo_runs_offline_and_writes_what_it_promises(tmp_path, capsys):
    """`vlfss demo` on the shipped tiny CLIP and head: every panel and the summary are written, and each of the
    three inputs finds the object far better than marking everything (the scene's all-foreground IoU)."""
    from vlfss.data.synthetic import CLASS_NAMES, SyntheticConfig
    from vlfss.demo import _pick

    out = tmp_path / "demo"
    code, stdout, err = run(["demo", "--out", str(out)], capsys)
    assert code == 0, err
    names = ["side_by_side.png", "support.png", "confidence_text+one-shot.png", "summary.json"]
    names += [f"overlay_{k}.png" for k in ("text", "one-shot", "text+one-shot")]
    assert all((out / n).is_file() for n in names)
    summary = json.loads((out / "summary.json").read_text())
    q, _, cls = _pick(0, SyntheticConfig())
    assert summary["class"] == CLASS_NAMES[cls] and summary["mode"] == "learned"
    all_fg = float((q.mask == cls + 1).mean())  # IoU of predicting the class everywhere
    assert set(summary["results"]) == {"text", "one-shot", "text+one-shot"}
    for key, r in summary["results"].items():
        assert r["iou"] > 2 * all_fg, (key, r, all_fg)
        assert key in stdout
    panel = np.asarray(Image.open(out / "support.png"))  # every panel has the support's (scaled) size
    picture = np.asarray(Image.open(out / "side_by_side.png").convert("RGB"))
    band = picture.shape[0] - panel.shape[0]  # the titles' band above the six panels
    assert band > 0 and picture.shape[1] == 6 * panel.shape[1] + 5 * 4
    ink = picture[:band].min(axis=2) < 128
    assert all(ink[:, i * (panel.shape[1] + 4): (i + 1) * panel.shape[1] + i * 4].any() for i in range(6))
    code, _, err = run(["demo", "--out", str(out / "summary.json")], capsys)  # a file where a folder must go
    assert code == 2 and "summary.json" in err
