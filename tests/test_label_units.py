"""The labelling run's parts on their own: SOURCE resolution, --shard, precision choice, suggestion scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlfss.errors import DataError, InputError
from vlfss.labeling.config import LabelConfig, check_label_config, parse_shard
from vlfss.labeling.loop import chunks
from vlfss.labeling.precision import cpu_flags, resolve_precision
from vlfss.labeling.sources import parse_hf, resolve_sources
from vlfss.labeling.state import Journal, read_refs
from vlfss.labeling.suggest import candidates, select_diverse, uncertainty


def _png(path, value=0, size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------------- sources
def test_folder_is_searched_recursively_sorted_and_named_relative(tmp_path):
    _png(tmp_path / "d" / "b.png")
    _png(tmp_path / "d" / "sub" / "a.jpg")
    _png(tmp_path / "d" / ".hidden" / "x.png")
    (tmp_path / "d" / "notes.txt").write_text("not an image")
    src = resolve_sources([tmp_path / "d"])
    assert [it.name for it in src.items] == ["b", "sub/a"]
    assert [it.file_name for it in src.items] == ["b.png", "sub/a.jpg"]
    assert src.root == str(tmp_path / "d")


def test_glob_list_file_and_colliding_stems(tmp_path):
    for name in ("a.png", "a.jpg", "c.png"):
        _png(tmp_path / "imgs" / name)
    src = resolve_sources([str(tmp_path / "imgs" / "*.png")])
    assert [it.name for it in src.items] == ["a", "c"]
    lst = tmp_path / "list.txt"
    lst.write_text("# my images\nimgs/a.png\n\nimgs/a.jpg\n" + str(tmp_path / "imgs" / "c.png") + "\n")
    src = resolve_sources([lst])
    assert [it.name for it in src.items] == ["a.jpg", "a.png", "c"]  # a.png and a.jpg keep their extensions


def test_output_folder_inside_the_source_is_left_out(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "out" / "labels" / "a.png")
    assert [it.name for it in resolve_sources([tmp_path], exclude=tmp_path / "out").items] == ["a"]


@pytest.mark.parametrize("make, message", [
    (lambda p: str(p / "missing"), "does not exist"),
    (lambda p: (p / "empty").mkdir() or str(p / "empty"), "holds no image files"),
    (lambda p: str(p / "*.nothing"), "matched no files"),
    (lambda p: (p / "l.txt").write_text("# nothing\n") and str(p / "l.txt"), "lists no image paths"),
])
def test_missing_or_empty_source_is_one_clear_error(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        resolve_sources([make(tmp_path)])


def test_hf_source_finds_or_names_its_image_column(tmp_path):
    import datasets

    img = _png(tmp_path / "x.png").read_bytes()
    ds = datasets.Dataset.from_dict({"id": ["r0", "r1"], "photo": [{"bytes": img, "path": None}] * 2,
                                     "text": ["a", "b"]}, features=datasets.Features(
        {"id": datasets.Value("string"), "photo": datasets.Image(), "text": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "ds"))
    src = resolve_sources([f"hf:{tmp_path / 'ds'}"])
    assert [it.name for it in src.items] == ["r0", "r1"] and src.columns == ["photo"]
    assert src.read(src.items[1]) == img
    with pytest.raises(DataError, match=r"no column 'image'; its columns are \['id', 'photo', 'text'\]"):
        resolve_sources([f"hf:{tmp_path / 'ds'}"], image_column_name="image")
    datasets.Dataset.from_dict({"a": [1], "b": ["x"]}).save_to_disk(str(tmp_path / "noimg"))
    with pytest.raises(DataError, match=r"no image column; its columns are \['a', 'b'\]"):
        resolve_sources([f"hf:{tmp_path / 'noimg'}"])


def test_hf_argument_parsing():
    assert parse_hf("hf:/data/set:test") == ("/data/set", "test")
    assert parse_hf("hf:user/name") == ("user/name", None)
    assert parse_hf("hf:user/name:train") == ("user/name", "train")


# --------------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/3", "0/0", "1/2/3"])
def test_malformed_shard_names_the_expected_form(text):
    with pytest.raises(InputError, match="expected I/N with 0 <= I < N"):
        parse_shard(text)


def test_shards_partition_whole_batches():
    n, b = 23, 4
    shares = [chunks(n, b, r, 3) for r in range(3)]
    flat = sorted(i for s in shares for c in s for i in c)
    assert flat == list(range(n))
    assert all(c[0] % b == 0 for s in shares for c in s)  # batches are the same whatever the world size
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) == (0, 1)


def test_bad_options_are_named():
    with pytest.raises(InputError, match="batch-size"):
        check_label_config(LabelConfig(batch_size=0))
    with pytest.raises(InputError, match="precision"):
        check_label_config(LabelConfig(precision="fp16"))


# --------------------------------------------------------------------------------------- precision
def test_auto_precision_follows_the_hardware():
    never = lambda: pytest.fail("measured without bf16 units")  # noqa: E731
    assert resolve_precision("auto", "cpu", flags={"avx2", "fma"}, measure=never).name == "fp32"
    assert resolve_precision("auto", "cpu", flags={"avx512_bf16"}, measure=lambda: 2.0).name == "bf16"
    slow = resolve_precision("auto", "cpu", flags={"avx512_bf16"}, measure=lambda: 0.3)
    assert slow.name == "fp32" and "0.30x" in slow.reason
    assert resolve_precision("auto", "cpu", flags={"amx_bf16"}, measure=lambda: 3.0).name == "bf16"
    assert resolve_precision("fp32", "cpu", flags={"amx_bf16"}).name == "fp32"
    assert resolve_precision("bf16", "cpu", flags=set()).name == "bf16"


def test_cpu_flags_reads_the_flags_line(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor: 0\nflags\t\t: fpu avx512f avx512_bf16\n\nprocessor: 1\nflags : fpu amx_bf16\n")
    assert {"avx512_bf16", "amx_bf16", "fpu"} <= cpu_flags(f)
    assert cpu_flags(tmp_path / "missing") == set()


# ------------------------------------------------------------------------------------------- suggest
def test_uncertainty_is_low_for_a_sure_prediction_and_high_for_a_doubtful_object():
    h = w = 20
    labels = torch.zeros(h, w, dtype=torch.long)
    labels[5:10, 5:10] = 1
    sure = torch.zeros(2, h, w)
    sure[0], sure[1] = 0.99, 0.01
    sure[0, 5:10, 5:10], sure[1, 5:10, 5:10] = 0.01, 0.99
    doubt = sure.clone()
    doubt[:, 5:10, 5:10] = 0.5

    def ent(p):
        return -(p * p.clamp_min(1e-12).log()).sum(0) / np.log(2)

    a, b = uncertainty(sure, labels, ent(sure)), uncertainty(doubt, labels, ent(doubt))
    assert a < 0.2 < 0.5 < b
    # the doubt is about the object: a large confident background does not dilute it
    big = torch.zeros(2, 4 * h, 4 * w)
    big[0] = 0.99
    big[1] = 0.01
    big[:, 5:10, 5:10] = 0.5
    big_labels = torch.zeros(4 * h, 4 * w, dtype=torch.long)
    big_labels[5:10, 5:10] = 1
    assert uncertainty(big, big_labels, ent(big)) > 3 * float(ent(big).mean())


def test_diverse_selection_skips_near_duplicates():
    scores = [0.9, 0.89, 0.88, 0.5]
    feats = np.array([[1, 0, 0], [1, 0.01, 0], [0, 1, 0], [0, 0, 1]], float)
    assert select_diverse(scores, feats, 2, diversity=0.0) == [0, 1]
    assert select_diverse(scores, feats, 2, diversity=0.5) == [0, 2]
    assert select_diverse(scores, feats, 10, diversity=0.5)[:2] == [0, 2]
    assert len(select_diverse(scores, feats, 10, diversity=0.5)) == 4
    assert candidates([0.1, 0.3, 0.3, 0.2], 1)[:3] == [1, 2, 3]


# ------------------------------------------------------------------------------------------- journal
def test_journal_survives_a_torn_last_line(tmp_path):
    (tmp_path / ".vlfss-label").mkdir()
    path = tmp_path / ".vlfss-label" / "journal-0-of-1.jsonl"
    j = Journal(path)
    j.append({"path": "a", "status": "failed", "hash": "1"})
    j.append({"path": "a", "status": "done", "hash": "2"})
    j.append({"path": "b", "status": "done", "hash": "3"})
    j.close()
    with open(path, "ab") as f:
        f.write(b'{"path": "c", "status": "do')  # killed mid-write
    refs = read_refs(tmp_path)
    assert set(refs) == {"a", "b"} and refs["a"].hash == "2"
    j = Journal(path)  # reopening cuts the torn line, so the next record is a line of its own
    j.append({"path": "c", "status": "done", "hash": "4"})
    j.close()
    assert set(read_refs(tmp_path)) == {"a", "b", "c"}
    assert all(line.startswith("{") for line in path.read_text().splitlines())


def test_hf_hub_name_offline_is_one_clear_error():
    with pytest.raises(DataError, match=r"offline\? save it elsewhere with Dataset.save_to_disk"):
        resolve_sources(["hf:someone/not-a-dataset:train"])
