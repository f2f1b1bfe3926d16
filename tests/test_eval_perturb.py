"""The corruption suite in the harness (`vlfss eval --perturb ...`): every model row is scored again with query
and supports corrupted on the same episodes; clean rows are unchanged; the table gives the drop from clean; resume
adds a corruption without recomputing the rest; bad specs are one line, exit 2."""

# ruff: noqa: F811  (pytest fixtures imported from test_evaluation are used as arguments)
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

# the evaluation tests' synthetic benchmark and segmenter factory (same scenes, same seeded random head)
from test_evaluation import N_IMAGES, SIZE, bench, make_seg, synth_root  # noqa: E402, F401

from vlfss.cache import content_hash
from vlfss.cli import main
from vlfss.data.episodes import EpisodeSampler, load_episode
from vlfss.data.perturb import apply_episode, parse_perturbation, parse_perturbations
from vlfss.errors import InputError
from vlfss.evaluation.harness import evaluate
from vlfss.evaluation.report import markdown_table, read_jsonl, summarize

KW = dict(folds=[0], shots=[0, 1], episodes=4, seeds=[0], progress=False)


def _numbers(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("command", "episodes_file")}


def test_episode_corrupted_alike_and_deterministic(bench):
    spec = EpisodeSampler(bench.dataset, bench.novel_classes(0), 1, 2, 0, 1).specs()[0]
    ep = load_episode(bench.dataset, spec)
    noisy = apply_episode(parse_perturbation("noise:12"), ep)
    again = apply_episode(parse_perturbation("noise:12"), ep)
    for a, b, clean in zip([noisy.query_image, *noisy.support_images], [again.query_image, *again.support_images],
                           [ep.query_image, *ep.support_images]):
        assert np.array_equal(a, b) and not np.array_equal(a, clean)  # same pixels every run; every image hit
    assert not np.array_equal(noisy.support_images[0] - ep.support_images[0].astype(np.int16),
                              noisy.support_images[1] - ep.support_images[1].astype(np.int16))  # own noise each
    big = apply_episode(parse_perturbation("scale:1.5"), ep)
    assert big.query_image.shape[:2] == big.query_mask.shape == (72, 72)
    assert all(i.shape[:2] == m.shape for i, m in zip(big.support_images, big.support_masks))
    assert set(np.unique(big.query_mask)) <= set(np.unique(ep.query_mask))  # nearest: no new labels


def test_clean_rows_unchanged_and_corrupted_rows_scored_on_the_same_episodes(make_seg, bench):
    clean = evaluate(make_seg(), bench, modes="learned", **KW)
    res = evaluate(make_seg(), bench, modes="learned", perturb=("blur:1", "gray"), **KW)
    plain = [r for r in res.rows if r["perturb"] == "clean"]
    assert [_numbers(r) for r in plain] == [_numbers(r) for r in clean.rows]
    model_rows = [(r["mode"], r["input"], r["shots"]) for r in plain if r["mode"] != "baseline"]
    for p in ("blur:1", "gray"):
        rows = [r for r in res.rows if r["perturb"] == p]
        assert [(r["mode"], r["input"], r["shots"]) for r in rows] == model_rows  # no baselines: no image in them
        assert {r["episode_hash"] for r in rows} == {plain[0]["episode_hash"]}
    blurred = {r["input"]: r["miou"] for r in res.rows if r["perturb"] == "blur:1"}
    assert blurred != {r["input"]: r["miou"] for r in plain if r["mode"] == "learned"}  # the images did change

    # the report: drop = corrupted - clean, in the summary and the table
    summary = {(s["input"], s["perturb"]): s for s in summarize(res.rows)}
    s = summary[("text", "blur:1")]
    assert s["drop"] == pytest.approx(s["miou"] - summary[("text", "clean")]["miou"])
    table = markdown_table(res.rows)
    assert "| learned | text | 0 |" in table and "| clean | blur:1 | gray |" in table
    assert f"({100 * s['drop']:+.1f})" in table


def test_the_corrupted_query_is_what_the_model_sees(make_seg, bench):
    seg = make_seg()
    seen: list[str] = []
    real = seg.segment

    def spy(image, **kw):
        seen.append(content_hash(np.asarray(image)))
        return real(image, **kw)

    seg.segment = spy
    evaluate(seg, bench, modes="training-free", perturb=("jpeg:30",), baselines=False,
             **{**KW, "shots": [0], "episodes": 2})
    specs = EpisodeSampler(bench.dataset, bench.novel_classes(0), 1, 0, 0, 2).specs()
    eps = [load_episode(bench.dataset, s) for s in specs]
    jpeg = parse_perturbation("jpeg:30")
    assert seen == [content_hash(e.query_image) for e in eps] + \
        [content_hash(apply_episode(jpeg, e).query_image) for e in eps]


def test_resume_adds_a_corruption_without_recomputing_the_rest(make_seg, bench, tmp_path):
    out = str(tmp_path / "run")
    first = evaluate(make_seg(), bench, modes="training-free", out_dir=out, perturb=("gray",), **KW)
    seg = make_seg()
    calls = {"n": 0}
    real = seg.segment

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    seg.segment = counting
    res = evaluate(seg, bench, modes="training-free", out_dir=out, perturb=("gray", "scale:0.75"), resume=True,
                   **KW)
    assert calls["n"] == 4 * 3  # the new corruption's 3 rows x 4 episodes only
    assert [_numbers(r) for r in res.rows if r["perturb"] != "scale:0.75"] == [_numbers(r) for r in first.rows]
    rows, torn = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert not torn and len(rows) == len(res.rows)


def test_specs_listed_twice_or_clean_are_refused():
    with pytest.raises(InputError, match="more than once"):
        parse_perturbations(["blur:1", "blur:1.0"])
    with pytest.raises(InputError, match="unknown corruption"):
        parse_perturbations(["clean"])
    assert [p.name for p in parse_perturbations(["jpeg:30", "gray"])] == ["jpeg:30", "gray"]


@pytest.mark.parametrize("spec, message", [("jpeg:0", "JPEG quality 1..95"), ("blur:-1", "out of range for blur"),
                                           ("fog:2", "unknown corruption 'fog'"), ("noise:x", "needs a number")])
def test_cli_bad_perturb_is_one_line_exit_2(tiny_clip_name, tiny_clip_weights, synth_root, tmp_path, capsys, spec,
                                            message):
    rc = main(["eval", "--benchmark", "synthetic", "--data-root", str(synth_root), "--model", tiny_clip_name,
               "--pretrained", tiny_clip_weights, "--out", str(tmp_path / "o"), "--perturb", "gray", spec])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1 and spec in err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_cli_perturb_end_to_end(tiny_clip_name, tiny_clip_weights, synth_root, tmp_path, capsys):
    rc = main(["eval", "--benchmark", "synthetic", "--data-root", str(synth_root), "--bench-opt",
               f"n_images={N_IMAGES}", f"image_size={SIZE}", "--model", tiny_clip_name, "--pretrained",
               tiny_clip_weights, "--templates", "plain", "--fold", "0", "--shots", "1", "--episodes", "2",
               "--no-plots", "--out", str(tmp_path / "o"), "--perturb", "jpeg:30", "scale:1.5"])
    out = capsys.readouterr().out
    assert rc == 0 and "Corruptions" in out and "| clean | jpeg:30 | scale:1.5 |" in out
    rows, _ = read_jsonl(tmp_path / "o" / "results.jsonl")
    assert {r["perturb"] for r in rows} == {"clean", "jpeg:30", "scale:1.5"}


def test_adapt_steps_reach_learned_rows_with_supports_only(make_seg, bench):
    seg = make_seg()
    seen: list[tuple[str, int, int]] = []
    real = seg.segment

    def spy(image, texts=None, supports=None, mode=None, adapt_steps=0, **kw):
        seen.append((mode, len(supports[0]) if supports else 0, adapt_steps))
        return real(image, texts=texts, supports=supports, mode=mode, adapt_steps=adapt_steps, **kw)

    seg.segment = spy
    res = evaluate(seg, bench, modes="both", adapt_steps=3, baselines=False, **{**KW, "episodes": 1})
    assert {(m, k, a) for m, k, a in seen} == {("training-free", 0, 0), ("training-free", 1, 0),
                                               ("learned", 0, 0), ("learned", 1, 3)}
    assert {(r["mode"], r["shots"], r["adapt_steps"]) for r in res.rows} == {
        ("training-free", 0, 0), ("training-free", 1, 0), ("learned", 0, 0), ("learned", 1, 3)}
    # 1 support per class cannot validate adaptation: declined, the same numbers as without it
    plain = evaluate(make_seg(), bench, modes="learned", baselines=False, **{**KW, "episodes": 1})
    adapted = [r for r in res.rows if r["mode"] == "learned"]
    assert [r["miou"] for r in adapted] == [r["miou"] for r in plain.rows]
    assert adapted[0]["config_hash"] != plain.rows[0]["config_hash"]  # never resumed into a run without it
    with pytest.raises(InputError, match="adapt_steps"):
        evaluate(make_seg(), bench, adapt_steps=-1, **KW)


def test_a_noisy_image_is_the_same_in_every_episode(bench):
    """Noise follows the pixels, not the episode: an image shared by two episodes is one corrupted image (one
    encode through the feature cache)."""
    spec = EpisodeSampler(bench.dataset, bench.novel_classes(0), 1, 1, 0, 2).specs()
    eps = [load_episode(bench.dataset, s) for s in spec]
    noise = parse_perturbation("noise:12")
    first = apply_episode(noise, eps[0]).query_image
    again = apply_episode(noise, dataclasses.replace(eps[1], query_image=eps[0].query_image)).query_image
    assert np.array_equal(first, again)
