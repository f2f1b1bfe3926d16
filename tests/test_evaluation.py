"""Evaluation harness: maths on hand-made cases, the harness against a numpy brute force, same episodes for
every mode, one encode per image, outputs, episode files, resume, CLI errors, protocols, the README script.

Fold class lists are checked where they are defined: PASCAL-5i in tests/test_data_pascal.py
(test_folds_equal_published_lists), both COCO-20i conventions in tests/test_data_coco.py, FSS-1000's
520/240/240 split in tests/test_data_fss.py; here we check that the protocols and the CLI select them.
1 vs 2 processes under torchrun: tests/test_evaluation_dist.py.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlfss.cache import content_hash
from vlfss.cli import main
from vlfss.cli.eval import parse_job
from vlfss.data import build_benchmark
from vlfss.data.episodes import EpisodeSampler, load_episode, load_episodes, save_episodes
from vlfss.data.synthetic_store import materialize_synthetic
from vlfss.errors import DataError, InputError, ModelError
from vlfss.evaluation.calibration import (
    FIXED_POINT,
    calibration_counts,
    expected_calibration_error,
    reject_least_confident,
    reject_masks,
)
from vlfss.evaluation.harness import evaluate
from vlfss.evaluation.options import EvalOptions
from vlfss.evaluation.provenance import config_hash, module_digest
from vlfss.evaluation.report import markdown_table, read_jsonl
from vlfss.evaluation.runner import complete_job
from vlfss.evaluation.stats import RowStats, patch_grid_oracle, resize_labels, resize_probs
from vlfss.modeling.head_file import new_head, save_head
from vlfss.segmenter import Segmenter, SegmenterConfig

N_IMAGES, SIZE = 160, 48
EVAL_DIR = Path(__file__).resolve().parent.parent / "eval"


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    materialize_synthetic(root, "test", N_IMAGES, 0, "hf", SIZE)
    return root


@pytest.fixture(scope="module")
def bench(synth_root):
    return build_benchmark("synthetic", synth_root, "test", 0, n_images=N_IMAGES, image_size=SIZE)


@pytest.fixture()
def make_seg(tiny_backbone):
    """Fresh segmenters (own feature cache) with a seeded random learned head."""

    def make(head_variant: str | None = None) -> Segmenter:
        torch.manual_seed(0)
        return Segmenter(tiny_backbone, SegmenterConfig(templates="plain"), head=new_head(tiny_backbone),
                         head_variant=head_variant)

    return make


def _metrics_only(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("command", "episodes_file")}


# ------------------------------------------------------------------------------------------ pure maths
def test_ece_hand_made():
    conf = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.58, 0.58, 0.58, 0.58])
    correct = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0], dtype=torch.bool)
    # bin (0.8667, 0.9333]: acc 0.75 vs conf 0.9; bin (0.5333, 0.6]: acc 0.25 vs conf 0.58; each half the pixels
    assert expected_calibration_error(conf, correct, 15) == pytest.approx(0.5 * 0.15 + 0.5 * 0.33, abs=1e-6)
    counts = calibration_counts(conf, correct, 15)
    assert counts[:, 0].tolist() == [0] * 8 + [4] + [0] * 4 + [4, 0]
    assert counts[13, 2] == 3 and counts[8, 2] == 1
    assert abs(int(counts[13, 1]) / FIXED_POINT - 3.6) < 1e-5  # confidence sums in fixed point
    assert expected_calibration_error(torch.ones(5), torch.ones(5, dtype=torch.bool)) == 0.0
    assert expected_calibration_error(torch.full((4,), 0.5), torch.tensor([1, 0, 1, 0]).bool()) == pytest.approx(0)
    assert calibration_counts(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]).bool(), 4)[:, 0].tolist() == [1, 0, 0, 1]
    with pytest.raises(InputError):
        calibration_counts(conf, correct, 0)


def test_reject_least_confident():
    conf = torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.5, 0.8]])
    valid = torch.tensor([[True, True, True], [False, True, True]])  # the least confident pixel is ignored
    assert torch.equal(reject_least_confident(conf, valid, 0.0), valid)
    keep = reject_least_confident(conf, valid, 0.4)  # round(0.4 * 5) = 2: 0.2 and the first 0.5
    assert keep.tolist() == [[True, False, False], [False, True, True]]
    assert int(reject_least_confident(conf, valid, 1.0).sum()) == 0
    with pytest.raises(InputError):
        reject_least_confident(conf, valid, 1.5)


def test_reject_masks_match_one_fraction_at_a_time():
    g = torch.Generator().manual_seed(0)
    conf = torch.randint(0, 5, (9, 7), generator=g).float() / 4  # many ties
    valid = torch.rand(9, 7, generator=g) > 0.2
    fractions = (0.0, 0.1, 0.33, 0.5, 1.0)
    for frac, keep in zip(fractions, reject_masks(conf, valid, fractions), strict=True):
        expected = valid.clone().reshape(-1)
        idx = torch.nonzero(valid.reshape(-1)).flatten()
        k = int(round(frac * len(idx)))
        expected[idx[torch.sort(conf.reshape(-1)[idx], stable=True).indices[:k]]] = False
        assert torch.equal(keep, expected.reshape(valid.shape)), frac


def test_patch_grid_oracle_hand_made():
    t = torch.tensor([[1, 1, 0, 0],
                      [1, 0, 0, 0],
                      [0, 0, 255, 255],
                      [0, 0, 255, 1]])
    # 2x2 cells: top-left 3/4 class 1 -> 1; bottom-right 1 valid pixel of class 1 -> 1; others 0
    want = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
    assert torch.equal(patch_grid_oracle(t, (2, 2), 2), want)
    aligned = torch.zeros(6, 6, dtype=torch.long)
    aligned[:3, 3:] = 1
    assert torch.equal(patch_grid_oracle(aligned, (2, 2), 2), aligned)  # grid-aligned truth is reproduced


def test_resize_helpers():
    t = torch.tensor([[0, 1], [255, 1]])
    r = resize_labels(t, (4, 4))
    assert set(r.unique().tolist()) == {0, 1, 255} and r[0, 0] == 0 and r[3, 0] == 255
    p = torch.rand(3, 40, 30).softmax(0)
    q = resize_probs(p, (8, 6))
    assert q.shape == (3, 8, 6) and torch.allclose(q.sum(0), torch.ones(8, 6), atol=1e-5)
    assert resize_probs(p, (40, 30)) is p


def test_row_stats_hand_computed_with_ignore_and_shards_missing_a_class():
    t0, p0 = torch.tensor([[1, 1, 0, 255]]), torch.tensor([[1, 0, 1, 1]])  # class 0: inter 1, union 3
    t1, p1 = torch.tensor([[1, 0, 0, 0]]), torch.tensor([[1, 1, 0, 0]])  # class 1: inter 1, union 2
    c0, c1 = torch.tensor([[0.9, 0.6, 0.7, 0.1]]), torch.tensor([[0.95, 0.55, 0.8, 0.99]])
    whole = RowStats(3, (0.0, 0.5), 15)
    whole.update(p0, t0, [0], 0, c0, 1 - c0)
    whole.update(p1, t1, [1], 1, c1, 1 - c1)
    a, b = RowStats(3, (0.0, 0.5), 15), RowStats(3, (0.0, 0.5), 15)
    a.update(p0, t0, [0], 0, c0, 1 - c0)  # shard a never sees class 1, shard b never sees class 0
    b.update(p1, t1, [1], 1, c1, 1 - c1)
    merged = b.merge(a).all_reduce()  # all_reduce without a process group: a copy
    names = ["c0", "c1", "c2"]
    m = whole.metrics(names, [0, 1, 2])
    assert merged.metrics(names, [0, 1, 2]) == m
    assert m["miou"] == pytest.approx((1 / 3 + 1 / 2) / 2)  # class 2 never drawn: left out
    assert m["classes_scored"] == 2 and set(m["per_class"]) == {"c0", "c1"}
    assert m["fb_iou"] == pytest.approx((2 / 5 + 2 / 5) / 2)  # bg 2/5, fg 2/5 from summed counts
    assert m["per_class"]["c0"]["precision"] == pytest.approx(1 / 2) and m["per_class"]["c0"]["recall"] == 1 / 2
    assert m["pixel_accuracy"] == pytest.approx(4 / 7)  # 7 valid pixels, 4 right
    correct = torch.tensor([True, False, False, True, False, True, True])
    conf = torch.tensor([0.9, 0.6, 0.7, 0.95, 0.55, 0.8, 0.99])
    assert m["ece"] == pytest.approx(expected_calibration_error(conf, correct, 15))
    assert m["entropy_correct"] == pytest.approx(float((1 - conf[correct]).mean()), abs=1e-6)
    # reject 50%: ep0 drops 0.6 and 0.7 of its 3 valid (round 1.5 = 2), ep1 drops 0.55 and 0.8
    rc = {p["reject"]: p for p in m["risk_coverage"]}
    assert rc[0.0]["miou"] == m["miou"] and rc[0.5]["coverage"] == pytest.approx(3 / 7)
    assert rc[0.5]["miou"] == pytest.approx((1.0 + 1.0) / 2)


# ------------------------------------------------------------------------------------------ harness
def _brute_force(preds, targets, classes):
    """numpy: per class sum inter / sum union over its episodes; FB-IoU from summed fg/bg counts."""
    inter, union = {}, {}
    fb = np.zeros((2, 2))
    for p, t, c in zip(preds, targets, classes, strict=True):
        v = t != 255
        pf, tf = (p == 1) & v, (t == 1) & v
        inter[c] = inter.get(c, 0) + (pf & tf).sum()
        union[c] = union.get(c, 0) + (pf | tf).sum()
        pb, tb = (p == 0) & v, (t == 0) & v
        fb += [[(pb & tb).sum(), (pb | tb).sum()], [(pf & tf).sum(), (pf | tf).sum()]]
    miou = np.mean([inter[c] / union[c] for c in sorted(inter)])
    return miou, (fb[0, 0] / fb[0, 1] + fb[1, 0] / fb[1, 1]) / 2


def test_harness_matches_numpy_brute_force(make_seg, bench):
    seg = make_seg()
    res = evaluate(seg, bench, folds=[0], shots=[0, 1], episodes=8, seeds=[3], modes="training-free",
                   progress=False)
    sampler = EpisodeSampler(bench.dataset, bench.novel_classes(0), 1, 1, 3, 8)
    for inp, k in (("text", 0), ("examples", 1), ("text+examples", 1)):
        preds, targets, classes = [], [], []
        for spec in sampler.specs():
            ep = load_episode(bench.dataset, spec)
            sup = [[(ep.support_images[0], ep.support_masks[0])]] if k else None
            out = seg.segment(ep.query_image, texts=ep.texts if "text" in inp else None, supports=sup,
                              mode="training-free")
            preds.append(out.labels.numpy())
            targets.append(ep.query_mask)
            classes.append(ep.class_ids[0])
        (row,) = res.get("training-free", inp, k)
        miou, fb = _brute_force(preds, targets, classes)
        assert row["miou"] == pytest.approx(miou, abs=1e-12) and row["fb_iou"] == pytest.approx(fb, abs=1e-12)
        assert row["episodes"] == 8
    allfg = res.get("baseline", "all-foreground", 0)[0]
    miou, _ = _brute_force([np.ones_like(t) for t in targets], targets, classes)
    assert allfg["miou"] == pytest.approx(miou, abs=1e-12)
    # the oracle: the truth pooled to the encoder's patch grid (48 px -> 32 px input, 8 px patches: 4 x 4)
    grid = tuple(s // seg.backbone.patch_size for s in seg.encoder_size(*targets[0].shape))
    oracles = [patch_grid_oracle(torch.from_numpy(t).long(), grid, 2).numpy() for t in targets]
    oracle = res.get("baseline", "oracle-patch-grid", 0)[0]
    assert oracle["miou"] == pytest.approx(_brute_force(oracles, targets, classes)[0], abs=1e-12)


def test_same_episodes_for_every_mode_and_one_encode_per_image(make_seg, bench):
    seg = make_seg()
    calls: dict[tuple, list] = {}
    real = seg.segment

    def spy(image, texts=None, supports=None, mode=None, **kw):
        k = len(supports[0]) if supports else 0
        key = (mode, "text" if supports is None else ("examples" if texts is None else "text+examples"), k)
        sup = [content_hash(np.asarray(s[0])) for s in supports[0]] if supports else []
        calls.setdefault(key, []).append((content_hash(np.asarray(image)), sup))
        return real(image, texts=texts, supports=supports, mode=mode, **kw)

    seg.segment = spy
    res = evaluate(seg, bench, folds=[1], shots=[0, 1, 2], episodes=6, seeds=[0], modes="both", progress=False)
    assert len(calls) == 10  # 2 modes x (text, 2 x examples, 2 x text+examples)
    queries = {key: [q for q, _ in v] for key, v in calls.items()}
    first = next(iter(queries.values()))
    assert len(first) == 6 and all(q == first for q in queries.values())
    for mode in ("training-free", "learned"):  # 1-shot supports are the first of the 2-shot ones
        for inp in ("examples", "text+examples"):
            one, two = calls[(mode, inp, 1)], calls[(mode, inp, 2)]
            assert [s for _, s in one] == [s[:1] for _, s in two]
    assert len({r["episode_hash"] for r in res.rows}) == 1
    # features shared by both modes and all rows: one encode per distinct image
    assert res.cache["variants"] == [seg.variant]
    c = res.cache  # each distinct image misses the cache once; every later use of it is a hit
    assert seg.image_encodes == c["image_encodes"] == c["distinct_images"] == c["misses"]
    assert c["hits"] > 0 and c["hit_rate"] == round(c["hits"] / (c["hits"] + c["misses"]), 4)


def test_head_on_another_variant_costs_one_more_encode(make_seg, bench):
    seg = make_seg(head_variant="plain")
    assert seg.variant != "plain"
    res = evaluate(seg, bench, folds=[0], shots=[1], episodes=4, seeds=[0], modes="both", progress=False,
                   baselines=False)
    assert sorted(res.cache["variants"]) == sorted([seg.variant, "plain"])
    assert seg.image_encodes == 2 * res.cache["distinct_images"]
    assert {r["variant"] for r in res.rows if r["mode"] == "learned"} == {"plain"}


def test_one_head_per_fold(make_seg, bench):
    """Fold i is scored with fold i's head (trained without fold i's classes); rows record which."""
    seg = make_seg()
    torch.manual_seed(1)
    other = new_head(seg.backbone)
    res = evaluate(seg, bench, folds=[0, 1], shots=[1], episodes=3, seeds=[0], modes="learned", progress=False,
                   baselines=False, fold_heads={1: other})
    digests = {r["fold"]: r["head"] for r in res.rows}
    assert digests == {0: module_digest(seg.head), 1: module_digest(other)}
    alone = evaluate(make_seg(), bench, folds=[1], shots=[1], episodes=3, seeds=[0], modes="learned",
                     progress=False, baselines=False, fold_heads={1: other})
    solo = Segmenter(seg.backbone, SegmenterConfig(templates="plain"), head=other)
    direct = evaluate(solo, bench, folds=[1], shots=[1], episodes=3, seeds=[0], modes="learned", progress=False,
                      baselines=False)
    fold1 = [_metrics_only(r) for r in res.rows if r["fold"] == 1]
    assert fold1 == [_metrics_only(r) for r in alone.rows]
    assert [r["miou"] for r in fold1] == [r["miou"] for r in direct.rows]
    assert seg.head is not other  # the segmenter's own head is back after the run


def test_cli_head_per_fold(cli_args, tiny_backbone, tmp_path, capsys):
    variant = Segmenter(tiny_backbone, SegmenterConfig(templates="plain")).variant
    for fold in (0, 2):
        torch.manual_seed(fold)
        save_head(new_head(tiny_backbone), tmp_path / f"h{fold}.safetensors", tiny_backbone.model_id, variant)
    args = ["eval", "--benchmark", "synthetic", "--shots", "1", "--episodes", "2", "--mode", "learned",
            "--head", str(tmp_path / "h{fold}.safetensors"), *cli_args]
    assert main([*args, "--fold", "0", "2", "--out", str(tmp_path / "o")]) == 0
    rows, _ = read_jsonl(tmp_path / "o" / "results.jsonl")
    assert len({r["head"] for r in rows if r["mode"] == "learned"}) == 2
    capsys.readouterr()
    assert main([*args, "--fold", "0", "1", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "h1.safetensors" in err and "train the fold's head" in err


def test_outputs_written_readable_and_episode_files_reused(make_seg, bench, tmp_path):
    out = tmp_path / "a"
    seg = make_seg()
    inference = seg.cfg.inference
    res = evaluate(seg, bench, folds=[0, 2], shots=[0, 1], episodes=3, seeds=[0, 1], modes="both",
                   out_dir=str(out), progress=False)
    rows, torn = read_jsonl(out / "results.jsonl")
    assert not torn and len(rows) == 2 * 2 * (2 * 3 + 2) and rows == res.rows
    for r in rows:
        assert {"miou", "fb_iou", "per_class", "episode_ci", "ece", "risk_coverage", "command", "model", "versions",
                "episode_hash", "config_hash", "precision", "recall", "f1"} <= set(r)
        assert {"python", "torch", "open_clip_torch"} <= set(r["versions"])
        assert r["inference"] == inference  # the strategy is in every row
    table = (out / "table.md").read_text()
    assert "| fold 0 | fold 2 | mean |" in table and "learned | text+examples | 1 |" in table and " ± " in table
    assert table == markdown_table(rows)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["rows"]) == 2 * 3 + 2 and summary["feature_cache"]["hit_rate"] > 0
    for name in ("miou_vs_shots", "per_class", "risk_coverage"):
        with Image.open(out / f"{name}.png") as im:
            assert im.format == "PNG" and im.size[0] > 100
    files = sorted((out / "episodes").glob("*.json"))
    assert len(files) == 4
    specs, meta = load_episodes(files[0], benchmark="synthetic")
    assert len(specs) == 3 and meta["shots"] == 1 and files[0].name == "synthetic-test-fold0-seed0-3ep-1shot.json"
    # a second model run on the very same episodes: same hashes and, for the same model, the same numbers
    res2 = evaluate(make_seg(), bench, folds=[0, 2], shots=[0, 1], modes="both", episode_files=[str(f) for f in files],
                    out_dir=str(tmp_path / "b"), progress=False)
    assert [_metrics_only(r) for r in res2.rows] == [_metrics_only(r) for r in res.rows]


def test_episode_file_errors(make_seg, bench, tmp_path):
    specs = EpisodeSampler(bench.dataset, bench.novel_classes(0), 1, 1, 0, 3).specs()
    other = tmp_path / "pascal.json"
    save_episodes(other, specs, {"benchmark": "pascal5i", "fold": 0, "seed": 0})
    with pytest.raises(DataError, match="for benchmark 'pascal5i', not 'synthetic'"):
        evaluate(make_seg(), bench, shots=[1], episode_files=[str(other)], progress=False)
    wrong_fold = tmp_path / "fold1.json"
    save_episodes(wrong_fold, specs, {"benchmark": "synthetic", "fold": 1, "seed": 0})
    with pytest.raises(DataError, match="not novel in fold 1"):
        evaluate(make_seg(), bench, shots=[1], episode_files=[str(wrong_fold)], progress=False)
    good = tmp_path / "fold0.json"
    save_episodes(good, specs, {"benchmark": "synthetic", "fold": 0, "seed": 0})
    with pytest.raises(DataError, match="cannot serve 5"):
        evaluate(make_seg(), bench, shots=[5], episode_files=[str(good)], progress=False)
    with pytest.raises(DataError, match="no episodes file for fold"):
        evaluate(make_seg(), bench, folds=[2], shots=[1], episode_files=[str(good)], progress=False)


def test_bad_arguments(make_seg, bench, tiny_backbone):
    seg = make_seg()
    with pytest.raises(InputError, match="fold must be 0..3"):
        evaluate(seg, bench, folds=[4], progress=False)
    with pytest.raises(InputError, match="unknown mode"):
        evaluate(seg, bench, folds=[0], modes="zero-shot", progress=False)
    with pytest.raises(InputError, match="episodes"):
        evaluate(seg, bench, folds=[0], episodes=0, progress=False)
    with pytest.raises(DataError, match="fewer than 31 images"):
        evaluate(seg, bench, folds=[0], shots=[30], episodes=2, progress=False)
    with pytest.raises(ModelError, match="learned mode needs a trained head"):
        evaluate(Segmenter(tiny_backbone, SegmenterConfig(templates="plain")), bench, folds=[0], modes="both")
    with pytest.raises(InputError, match="unknown evaluate option"):
        evaluate(seg, bench, folds=[0], colour="red")


def test_resume_after_interruption(make_seg, bench, tmp_path):
    kw = dict(folds=[0, 1], shots=[0, 1], episodes=4, seeds=[0], modes="training-free", progress=False)
    full = evaluate(make_seg(), bench, **kw).rows
    out = tmp_path / "run"
    seg = make_seg()
    real, n = seg.segment, {"calls": 0}

    def dies(*a, **k):
        n["calls"] += 1
        if n["calls"] > 4 * 3 + 5:  # fold 0 done (4 episodes x 3 rows), fold 1 half-way
            raise KeyboardInterrupt
        return real(*a, **k)

    seg.segment = dies
    with pytest.raises(KeyboardInterrupt):
        evaluate(seg, bench, out_dir=str(out), **kw)
    rows, torn = read_jsonl(out / "results.jsonl")
    assert not torn and [(r["fold"], r["input"]) for r in rows] == [(0, i) for i in
                                                                    ("text", "examples", "text+examples",
                                                                     "all-foreground", "oracle-patch-grid")]
    with open(out / "results.jsonl", "ab") as f:  # a torn last line, as a kill mid-write could leave
        f.write(b'{"miou": 0.5, "fold": 1, "mo')
    with pytest.raises(InputError, match="--resume"):
        evaluate(make_seg(), bench, out_dir=str(out), **kw)
    seg2 = make_seg()
    real2, count = seg2.segment, {"calls": 0}

    def counting(*a, **k):
        count["calls"] += 1
        return real2(*a, **k)

    seg2.segment = counting
    res = evaluate(seg2, bench, out_dir=str(out), resume=True, **kw)
    assert count["calls"] == 4 * 3  # fold 1 only
    assert [_metrics_only(r) for r in res.rows] == [_metrics_only(r) for r in full]
    rows, torn = read_jsonl(out / "results.jsonl")
    assert not torn and len(rows) == len(full)
    again = evaluate(make_seg(), bench, out_dir=str(out), resume=True, **kw)  # nothing left to do
    assert [_metrics_only(r) for r in again.rows] == [_metrics_only(r) for r in full]
    other = make_seg()
    other.cfg.training_free.text_weight = 2.0
    with pytest.raises(InputError, match="another configuration"):
        evaluate(other, bench, out_dir=str(out), resume=True, **kw)


def test_config_hash_covers_what_decides_the_numbers(tiny_backbone):
    """Rows resume only into a run that computes the same thing: every setting that changes a prediction changes
    the hash; where the run happens (device, caches) does not."""
    def chash(**kw) -> str:
        cfg = SegmenterConfig(**{"templates": "plain", **kw})
        return config_hash(Segmenter(tiny_backbone, cfg), "synthetic", "test", EvalOptions())

    base = chash()
    for kw in ({"inference": "slide"}, {"input_size": 48}, {"refine": "pamr"}, {"autocast_bf16": True},
               {"templates": "synthetic"}, {"variant": "plain"}, {"scales": [1.0, 2.0]}):
        assert chash(**kw) != base, kw
    assert chash(feature_cache_items=7, feature_cache_dir="/tmp/x", device="cpu", cache_dir="/tmp/y") == base
    assert config_hash(Segmenter(tiny_backbone, SegmenterConfig(templates="plain")), "synthetic", "test",
                       EvalOptions(resized_labels=True)) != base


def test_resized_labels(make_seg, bench):
    res = evaluate(make_seg(), bench, folds=[0], shots=[0], episodes=3, seeds=[0], resized_labels=True,
                   progress=False)
    orig = evaluate(make_seg(), bench, folds=[0], shots=[0], episodes=3, seeds=[0], progress=False)
    assert {r["resolution"] for r in res.rows} == {"resized"} and {r["resolution"] for r in orig.rows} == {"original"}
    assert res.rows[0]["config_hash"] != orig.rows[0]["config_hash"]
    assert res.rows[0]["episode_hash"] == orig.rows[0]["episode_hash"]
    # the synthetic 48 px labels are scored at the 32 px encoder input (nearest), whose patch grid is 4 x 4
    seg = make_seg()
    targets, classes = [], []
    for spec in EpisodeSampler(bench.dataset, bench.novel_classes(0), 1, 0, 0, 3).specs():
        ep = load_episode(bench.dataset, spec)
        targets.append(resize_labels(torch.from_numpy(ep.query_mask).long(), seg.encoder_size(*ep.query_mask.shape)))
        classes.append(ep.class_ids[0])
    assert {tuple(t.shape) for t in targets} == {(32, 32)}
    oracles = [patch_grid_oracle(t, (4, 4), 2).numpy() for t in targets]
    targets = [t.numpy() for t in targets]
    oracle = res.get("baseline", "oracle-patch-grid", 0)[0]
    assert oracle["miou"] == pytest.approx(_brute_force(oracles, targets, classes)[0], abs=1e-12)
    allfg = res.get("baseline", "all-foreground", 0)[0]
    assert allfg["miou"] == pytest.approx(_brute_force([np.ones_like(t) for t in targets], targets, classes)[0],
                                          abs=1e-12)


# ------------------------------------------------------------------------------------------ CLI and scripts
@pytest.fixture()
def cli_args(tiny_clip_name, tiny_clip_weights, synth_root):
    return ["--model", tiny_clip_name, "--pretrained", tiny_clip_weights, "--templates", "plain",
            "--data-root", str(synth_root), "--bench-opt", f"n_images={N_IMAGES}", f"image_size={SIZE}"]


def test_cli_eval_end_to_end(cli_args, tmp_path, capsys):
    rc = main(["eval", "--benchmark", "synthetic", "--fold", "0", "--shots", "0", "1", "--episodes", "3",
               "--out", str(tmp_path / "o"), *cli_args])
    out = capsys.readouterr().out
    assert rc == 0 and "| training-free | text+examples | 1 |" in out and "hit rate" in out
    rows, _ = read_jsonl(tmp_path / "o" / "results.jsonl")
    assert rows[0]["command"].startswith("vlfss eval --benchmark synthetic")
    assert main(["eval", "--benchmark", "synthetic", "--fold", "0", "--shots", "0", "--episodes", "3",
                 "--out", str(tmp_path / "o"), *cli_args]) == 2  # results exist, no --resume
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--benchmark", "nope"], "unknown benchmark 'nope'"),
    (["--benchmark", "synthetic", "--fold", "7"], "fold must be 0..3"),
    (["--benchmark", "synthetic", "--fold", "x"], "fold numbers or 'all'"),
    (["--benchmark", "synthetic", "--shots", "0", "40", "--episodes", "2"], "fewer than 41 images"),
    (["--benchmark", "synthetic", "--mode", "learned"], "no learned head is shipped"),
    (["--benchmark", "synthetic", "--mode", "all"], "unknown mode"),
    (["--benchmark", "synthetic", "--split-convention", "consecutive"], "coco20i only"),
    (["--benchmark", "synthetic", "--head", "missing.safetensors"], "do not exist"),
    (["--benchmark", "synthetic", "--episodes", "ten"], "invalid int value"),
    (["--benchmark", "synthetic", "--episodes-file", "missing.json"], "does not exist"),
])
def test_cli_bad_input(cli_args, tmp_path, capsys, extra, message):
    try:
        rc = main(["eval", "--out", str(tmp_path / "o"), *cli_args, *extra])
    except SystemExit as e:  # a usage error argparse finds (a bad int) exits while parsing
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("vlfss: error:")


@pytest.mark.parametrize("name", ["pascal5i", "coco20i", "fss1000"])
def test_cli_missing_data_root(name, tmp_path, capsys):
    assert main(["eval", "--benchmark", name, "--data-root", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "expected layout" in err


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"eval_{name}", EVAL_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_protocols_parse_and_select_the_published_folds():
    bm = _load_script("benchmarks")
    p = bm.PROTOCOLS
    assert p["pascal5i"].episodes == 1000 and p["pascal5i"].folds == (0, 1, 2, 3)
    assert p["pascal5i-10seeds"].seeds == tuple(range(10))
    assert p["fss1000"].split == "test" and p["fss1000"].folds == (0,)
    assert p["synthetic"].episodes == 1000 and p["synthetic"].shots == (0, 1, 5)
    for name, proto in p.items():
        req = complete_job(parse_job(bm.eval_argv(name, "/data")))
        assert req.benchmark == proto.benchmark and req.episodes == proto.episodes and req.folds == list(proto.folds)
        assert req.split == proto.split and req.options.query_sampling == proto.query_sampling
    # the reader options pick the published class lists (checked in tests/test_data_coco.py)
    assert complete_job(parse_job(bm.eval_argv("coco20i"))).bench_options == {"convention": "interleaved"}
    req = complete_job(parse_job(bm.eval_argv("coco20i-consecutive")))
    assert req.bench_options == {"convention": "consecutive"} and req.options.benchmark_meta == req.bench_options
    from vlfss.data.coco import coco_fold_classes
    from vlfss.data.pascal import pascal_fold_classes

    assert [c + 1 for c in coco_fold_classes(1, "consecutive")] == list(range(21, 41))
    assert [c + 1 for c in coco_fold_classes(1, "interleaved")] == list(range(2, 81, 4))
    assert pascal_fold_classes(2) == [10, 11, 12, 13, 14]


@pytest.mark.slow
def test_readme_table_smoke(tiny_clip_name, tiny_clip_weights, tiny_backbone, synth_root, tmp_path):
    torch.manual_seed(0)
    from vlfss.modeling.backbones import build_backbone

    bb = build_backbone(tiny_clip_name, tiny_clip_weights)
    head = tmp_path / "head.safetensors"
    save_head(new_head(bb), head, bb.model_id, Segmenter(bb, SegmenterConfig(templates="plain")).variant)
    rt = _load_script("readme_table")
    md = tmp_path / "table.md"
    rc = rt.main(["--episodes", "4", "--model", tiny_clip_name, "--pretrained", tiny_clip_weights, "--head", str(head),
                  "--templates", "plain", "--data-root", str(synth_root), "--bench-opt", f"n_images={N_IMAGES}",
                  f"image_size={SIZE}", "--output", str(md), "--work-dir", str(tmp_path / "w"), "--quiet"])
    assert rc == 0
    text = md.read_text()
    assert text.startswith(rt.MARK)
    assert "| fold 0 | fold 1 | fold 2 | fold 3 | mean |" in text
    for row in ("| training-free | text | 0 |", "| learned | text+examples | 5 |", "| baseline | oracle-patch-grid |"):
        assert row in text
    assert "--episodes 4" in text and (tmp_path / "w" / "miou_vs_shots.png").is_file()
