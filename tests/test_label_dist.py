"""`vlfss label` across processes: killed with SIGKILL and resumed, two torchrun (gloo) processes, and Hugging Face
datasets in and out. Each compares its published files with an uninterrupted one-process run, byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_label import tree
from vlfss.data.synthetic import SyntheticConfig, generate_scene

REPO = Path(__file__).resolve().parent.parent
N = 40
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1"}  # the same thread count in every run: the same float sums


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist") / "imgs"
    root.mkdir()
    for i in range(N):
        Image.fromarray(generate_scene(0, 2_000_000_000 + i, SyntheticConfig(image_size=96)).image).save(
            root / f"q{i:03d}.png")
    return root


def args(images: Path, out: Path, *extra: str) -> list[str]:
    return ["label", str(images), "--text", "stripes", "--text", "dots", "--out", str(out), "--batch-size", "4",
            "--precision", "fp32", "--quiet", "--workers", "1", "--confidence", *extra]


def vlfss(*a: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlfss.cli", *a], env=ENV, capture_output=True, text=True,
                          timeout=900, **kw)


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "out"
    proc = vlfss(*args(images, out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tree(out)


def _processes_of(out: Path) -> list[int]:
    """Live processes whose command line names ``out`` (the run and the decoding workers it forked)."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and str(out).encode() in (p / "cmdline").read_bytes() and \
                    (p / "stat").read_text().split(") ")[-1][0] != "Z":
                found.append(int(p.name))
        except OSError:
            continue
    return found


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_byte_identical(images, reference, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "vlfss.cli", *args(images, out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = out / ".vlfss-label" / "journal-0-of-1.jsonl"
    deadline = time.time() + 600
    while _lines(journal) < N // 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    deadline = time.time() + 30
    while _processes_of(out) and time.time() < deadline:  # its decoding workers end with it
        time.sleep(0.2)
    assert not _processes_of(out)
    assert _lines(journal) < N and not (out / "manifest.jsonl").exists()  # it really stopped half-way
    resumed = vlfss(*args(images, out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert tree(out) == reference


@pytest.mark.slow
def test_two_torchrun_processes_equal_one(images, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vlfss.cli",
           *args(images, out)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    journals = sorted(p.name for p in (out / ".vlfss-label").glob("journal-*.jsonl"))
    assert journals == ["journal-0-of-2.jsonl", "journal-1-of-2.jsonl"]
    assert all(_lines(out / ".vlfss-label" / j) > 0 for j in journals)  # both processes labelled images
    assert tree(out) == reference


@pytest.mark.slow
def test_hugging_face_dataset_in_and_out(images, tmp_path):
    import datasets

    files = sorted(images.glob("*.png"))[:6]
    feats = datasets.Features({"id": datasets.Value("string"), "picture": datasets.Image()})
    datasets.Dataset.from_dict({"id": [f.stem for f in files], "picture": [str(f) for f in files]},
                               features=feats).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "out"
    proc = vlfss("label", f"hf:{tmp_path / 'ds'}", "--text", "stripes", "--out", str(out), "--hf-dataset",
                 "--precision", "fp32", "--quiet", "--workers", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ds = datasets.load_from_disk(str(out / "hf_dataset"))
    assert ds["id"] == [f.stem for f in files]
    for row, f in zip(ds, files):
        png = np.asarray(Image.open(out / "labels" / f"{f.stem}.png"))
        assert np.array_equal(np.asarray(row["mask"]), png)
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), np.asarray(Image.open(f).convert("RGB")))
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["path"] for m in manifest] == [f"hf:{tmp_path / 'ds'}#{i}" for i in range(len(files))]
