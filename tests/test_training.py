"""Meta-training: episode plan, views, learning, modes, checkpoints and resume, output-dir and config errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlfss.config import load_config
from vlfss.engine.config import KINDS, TrainConfig
from vlfss.engine.objective import TrainModule, episode_loss, fomaml_backward
from vlfss.engine.train import build_data, fit
from vlfss.engine.validate import fallback_kinds, predict_labels, read_json, validate
from vlfss.engine.views import ViewBank, load_planned_episode, plan_episode, prepare_episode
from vlfss.errors import ConfigError, InputError
from vlfss.modeling.backbones import TINY_WEIGHTS

TRAIN_IMAGES, VAL_IMAGES, SIZE = 100, 60, 48


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic benchmark (train + val) materialised once for all training tests."""
    from vlfss.data.synthetic_store import materialize_synthetic

    root = tmp_path_factory.mktemp("synth")
    materialize_synthetic(root, "train", TRAIN_IMAGES, 0, "hf", SIZE, workers=1)
    materialize_synthetic(root, "val", VAL_IMAGES, 0, "hf", SIZE, workers=1)
    return root


def overrides(name: str, weights: str | None, root: Path, out: Path, *extra: str) -> list[str]:
    """A tiny, fast training config on the tiny random-weights CLIP."""
    return [f"segmenter.model={name}", f"segmenter.pretrained={weights or 'null'}", "segmenter.templates=plain",
            "segmenter.head.dim=32", "segmenter.head.hidden=32",
            f"data.data_root={root}", f"data.options={{image_size: {SIZE}}}",
            f"data.train_options={{n_images: {TRAIN_IMAGES}}}", f"data.val_options={{n_images: {VAL_IMAGES}}}",
            "episodes.max_shots=2", f"out_dir={out}", "steps=4", "epoch_steps=1000", "val.episodes=0",
            "checkpoint_every=2", "progress=false", "warmup=2", "batch_episodes=2", *extra]


@pytest.fixture()
def make_cfg(tiny_clip_name, tiny_clip_weights, synth_root, tmp_path):
    def make(*extra: str, out: Path | None = None) -> TrainConfig:
        return load_config(TrainConfig, None, overrides(tiny_clip_name, tiny_clip_weights, synth_root,
                                                        out or tmp_path / "run", *extra))
    return make


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


# ------------------------------------------------------------------------------------------ pure parts
def test_plan_is_a_function_of_seed_step_slot_and_mixes_every_kind():
    cfg = TrainConfig()
    plans = [plan_episode(cfg, s, b) for s in range(60) for b in range(cfg.batch_episodes)]
    assert plans == [plan_episode(cfg, s, b) for s in range(60) for b in range(cfg.batch_episodes)]
    assert {p.kind for p in plans} == set(KINDS)
    assert {p.n_way for p in plans} == {1, 2, 3}
    assert all((p.shots == 0) == (p.kind == "text") and 0 <= p.shots <= cfg.episodes.max_shots for p in plans)
    assert all(len(p.views) == 1 + p.n_way * p.shots for p in plans)
    assert {v for p in plans for v in p.views} == {0, 1}  # original or the single augmented view
    assert len({p.index for p in plans}) == len(plans)  # every slot of every step is another episode
    other = plan_episode(TrainConfig(seed=1), 0, 0)
    assert [plan_episode(TrainConfig(seed=1), s, 0) for s in range(10)] != [plan_episode(cfg, s, 0) for s in range(10)]
    assert other == plan_episode(TrainConfig(seed=1), 0, 0)
    no_text = [plan_episode(cfg, s, 0, has_text=False) for s in range(30)]
    assert all(p.kind == "shots" for p in no_text)


def test_views_are_deterministic_and_supports_keep_their_object(make_cfg):
    cfg = make_cfg("augment.views=2", "augment.prob=1.0", "augment.cutmix=0.5", "augment.mixup=0.3")
    train, classes, samplers, _ = build_data(cfg)
    pool = sorted({i for c in classes for i in train.dataset.images_of_class(c)})
    bank = ViewBank(train.dataset, pool, cfg.augment, cfg.seed)
    i = pool[0]
    img0, lab0 = bank.view(i, 0)
    ref_img, ref_lab = train.dataset.load(i)
    assert np.array_equal(img0, ref_img) and np.array_equal(lab0, ref_lab)
    a, b = bank.view(i, 1), ViewBank(train.dataset, pool, cfg.augment, cfg.seed).view(i, 1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[0].shape == ref_img.shape and not np.array_equal(a[0], ref_img)
    assert not np.array_equal(bank.view(i, 2)[0], a[0])
    for step in range(6):
        plan = plan_episode(cfg, step, 0)
        spec = samplers[plan.n_way].spec(plan.index).with_shots(plan.shots)
        ep = load_planned_episode(bank, spec, plan)
        assert len(ep.support_images) == plan.n_way * plan.shots
        assert all((m == 1).any() for m in ep.support_masks)
        assert set(np.unique(ep.query_mask)) <= set(range(plan.n_way + 1)) | {255}


# ------------------------------------------------------------------------------------------ learning
def _paired_gain_is_significant(before: np.ndarray, after: np.ndarray) -> bool:
    """The mean per-episode gain ``after - before`` exceeds two standard errors of that mean (a one-sided test at
    about 97%, paired because both heads see the same episodes): a gain larger than the episodes' own noise."""
    d = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    return bool(d.mean() > 2 * d.std(ddof=1) / np.sqrt(len(d)))


def test_the_paired_gain_check_rejects_noise_and_accepts_a_clear_gain():
    rng = np.random.default_rng(0)
    base = rng.random(20)
    assert not _paired_gain_is_significant(base, base + rng.normal(0, 0.1, 20) - 0.01)
    assert _paired_gain_is_significant(base, base + rng.normal(0.1, 0.05, 20))


def _episode_values(seg, sampler, head, mode: str, fn) -> np.ndarray:
    """``fn(prepared, episode, head)`` per episode of ``sampler`` in ``mode`` (text / shots / text+shots)."""
    out = []
    with torch.no_grad():
        for i in range(len(sampler)):
            ep = sampler.episode(sampler.spec(i).with_shots(0 if mode == "text" else sampler.k_shot))
            p = prepare_episode(seg, ep, mode != "shots", seg.variant, torch.device("cpu"))
            out.append(fn(p, ep, head))
    return np.array(out)


def _loss(p, ep, head) -> float:
    return float(episode_loss(head, p.query, p.specs, p.target))


def _fg_iou(p, ep, head) -> float:
    """Foreground IoU of one binary episode at the query's label size (255 ignored)."""
    pred = predict_labels(head, p.query, p.specs).numpy() == 1
    valid = ep.query_mask != 255
    gt = (ep.query_mask == 1) & valid
    union = ((pred & valid) | gt).sum()
    return float(((pred & gt).sum()) / union) if union else 1.0


@pytest.mark.slow
def test_short_run_lowers_the_loss_on_fixed_base_class_episodes(make_cfg, tiny_backbone, tmp_path):
    """The random-weights test CLIP carries no class signal (text is noise, its 4 x 4 token grid barely separates
    textures), so class mIoU does not move in a short run. What the head does learn here is measured on fixed
    base-class episodes: their loss falls by more than the episodes' noise, and the foreground/background IoU
    rises. The novel-class gain is tested on the real tiny CLIP below."""
    from vlfss.data.episodes import EpisodeSampler
    from vlfss.modeling.head_file import load_head, new_head
    from vlfss.segmenter import Segmenter

    cfg = make_cfg("steps=80", "lr=0.01", "log_every=10", "checkpoint_every=1000", "episodes.text_only=0",
                   "episodes.text_and_shots=0", "episodes.multi_way=0", "augment.views=0", "batch_episodes=4")
    train, classes, _, _ = build_data(cfg)
    probe = EpisodeSampler(train.dataset, classes, 1, 1, seed=123, num_episodes=20)
    seg = Segmenter(tiny_backbone, cfg.segmenter)
    torch.manual_seed(cfg.seed)
    before = new_head(tiny_backbone, cfg.segmenter.head).eval()
    fb0 = validate(seg, probe, modes=["shots"], head=before)["shots"]["fb_iou"]
    loss0 = _episode_values(seg, probe, before, "shots", _loss)
    path = fit(cfg)
    after, _ = load_head(path, tiny_backbone)
    fb1 = validate(seg, probe, modes=["shots"], head=after.eval())["shots"]["fb_iou"]
    loss1 = _episode_values(seg, probe, after, "shots", _loss)
    assert _paired_gain_is_significant(-loss0, -loss1), (loss0.mean(), loss1.mean())
    assert fb1 > fb0, (fb0, fb1)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["last_loss"] < summary["first_loss"]
    assert summary["train_loop_image_encodes"] == 0


@pytest.mark.slow
@pytest.mark.skipif(not TINY_WEIGHTS.is_file(), reason="the embedded tiny CLIP weights are not built yet")
def test_short_run_on_the_tiny_clip_improves_novel_fold_miou(tmp_path):
    """On the real tiny CLIP, 200 steps on fold 0's base classes lift novel-class scores above the untrained head's
    from text, from examples and from both: mIoU higher, and the per-episode IoU gain beyond the episodes' noise.
    The untrained head is the training-free model (the head is a zero-initialised residual over its log-odds), so
    this is learned vs training-free; examples reach the head only through similarity maps (head.agnostic_kinds),
    which is what lets base-class training carry over."""
    from vlfss.data.synthetic_store import materialize_synthetic
    from vlfss.modeling.backbones import build_backbone
    from vlfss.modeling.head_file import load_head, new_head
    from vlfss.segmenter import Segmenter

    materialize_synthetic(tmp_path / "data", "train", 150, 0, "hf", 96, workers=1)
    materialize_synthetic(tmp_path / "data", "val", 60, 0, "hf", 96, workers=1)
    cfg = load_config(TrainConfig, Path(__file__).parent.parent / "configs" / "synthetic" / "fold0.yaml", [
        f"data.data_root={tmp_path / 'data'}", "data.train_options={n_images: 150}", "data.val_options={n_images: 60}",
        "steps=200", "warmup=10", "augment.views=0", "val.episodes=20", "val.more_shots=[]", "epoch_steps=1000",
        "lr=0.001",
        "keep_best=false", "fallback_to_training_free=false",  # the last head as trained: else it could not fail
        f"out_dir={tmp_path / 'run'}", "progress=false", "checkpoint_every=1000"])
    _, _, _, val = build_data(cfg)
    backbone = build_backbone("vlfss-tiny")
    seg = Segmenter(backbone, cfg.segmenter)
    torch.manual_seed(cfg.seed)
    untrained_head = new_head(backbone, cfg.segmenter.head).eval()
    untrained = validate(seg, val, head=untrained_head)
    trained_head, _ = load_head(fit(cfg), backbone)
    trained = json.loads((tmp_path / "run" / "summary.json").read_text())["val"]
    for mode in ("text", "shots", "text+shots"):
        assert trained[mode]["miou"] > untrained[mode]["miou"], (mode, untrained, trained)
        gain = (_episode_values(seg, val, untrained_head, mode, _fg_iou),
                _episode_values(seg, val, trained_head.eval(), mode, _fg_iou))
        assert _paired_gain_is_significant(*gain), (mode, gain[0].mean(), gain[1].mean())


def test_mixed_modes_nway_augmentation_prompt_and_validation(make_cfg, tiny_backbone, tmp_path):
    """Every episode kind, N-way, augmented views and a learned prompt train together; nothing is re-encoded
    in the loop; validation on the novel classes is logged; the outputs load where users load them."""
    from vlfss.modeling.head_file import load_head
    from vlfss.modeling.prompts import PromptLearner
    from vlfss.segmenter import Segmenter, SegmenterConfig

    cfg = make_cfg("steps=3", "epoch_steps=3", "val.episodes=3", "episodes.multi_way=0.5", "learn_prompt=true",
                   "augment.views=1", "augment.prob=0.7", "augment.cutmix=0.5", "log_every=1")
    path = fit(cfg)
    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    train, classes, _, _ = build_data(cfg)
    pool = {i for c in classes for i in train.dataset.images_of_class(c)}
    assert summary["precomputed_images"] == 2 * len(pool)
    assert summary["train_loop_image_encodes"] == 0
    assert set(summary["val"]) == set(KINDS)
    assert all(0.0 <= v["miou"] <= 1.0 for v in summary["val"].values())
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3]
    assert any("val" in x for x in lines)
    head, _ = load_head(path, tiny_backbone)
    pl = PromptLearner.load(out / "prompt.safetensors", tiny_backbone)
    assert pl.class_names == train.dataset.text_names
    seg = Segmenter(tiny_backbone, SegmenterConfig(templates="plain", mode="learned"), head)
    img, lab = train.dataset.load(0)
    res = seg.segment(img, texts=["stripes"], supports=[(img, (lab > 0).astype(np.uint8))])
    assert res.labels.shape == lab.shape


def test_fomaml_inner_loop_changes_only_the_head_copy(make_cfg, tiny_backbone):
    from vlfss.modeling.head_file import new_head
    from vlfss.modeling.prompts import PromptLearner
    from vlfss.segmenter import Segmenter

    cfg = make_cfg("episodes.text_only=0", "episodes.shots_only=0", "episodes.max_shots=2", "augment.views=0")
    train, classes, samplers, _ = build_data(cfg)
    seg = Segmenter(tiny_backbone, cfg.segmenter)
    bank = ViewBank(train.dataset, [], cfg.augment, cfg.seed)
    episodes = []
    for slot in range(2):
        plan = plan_episode(cfg, 0, slot)
        episodes.append(load_planned_episode(bank, samplers[plan.n_way].spec(plan.index).with_shots(plan.shots), plan))
    backbone_before = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    for learn_prompt in (False, True):
        torch.manual_seed(0)
        head = new_head(tiny_backbone, cfg.segmenter.head)
        prompt = PromptLearner(tiny_backbone, train.dataset.text_names, 2) if learn_prompt else None
        module = TrainModule(head, prompt)
        batch = [prepare_episode(seg, ep, True, seg.variant, torch.device("cpu"), learned_text=learn_prompt)
                 for ep in episodes]
        head_before = {k: v.clone() for k, v in head.state_dict().items()}
        ctx_before = prompt.ctx.detach().clone() if prompt is not None else None
        fomaml_backward(module, batch, inner_steps=2, inner_lr=0.1)
        assert all(torch.equal(head_before[k], v) for k, v in head.state_dict().items())  # the copy adapted
        assert all(p.grad is not None for p in head.decoder.stage1.parameters())  # text+examples: the decoder
        if prompt is not None:
            assert torch.equal(prompt.ctx.detach(), ctx_before) and prompt.ctx.grad is not None
            assert float(prompt.ctx.grad.abs().sum()) > 0
        meta_grad = [p.grad.clone() for p in head.parameters() if p.grad is not None]
        head.zero_grad(set_to_none=True)
        if prompt is not None:
            prompt.zero_grad(set_to_none=True)
        fomaml_backward(module, batch, inner_steps=0, inner_lr=0.1)  # no adaptation: the plain query gradient
        plain = [p.grad.clone() for p in head.parameters() if p.grad is not None]
        assert any(not torch.allclose(a, b) for a, b in zip(meta_grad, plain, strict=True))
    assert all(torch.equal(backbone_before[k], v) for k, v in tiny_backbone.state_dict().items())


def test_fomaml_fit_trains_head_and_prompt_only_when_asked(make_cfg, tmp_path, tiny_backbone):
    cfg = make_cfg("meta_algorithm=fomaml", "steps=2", "inner_steps=1", "learn_prompt=false", "lr=0.01")
    fit(cfg)
    w = _weights(tmp_path / "run" / "ckpt-00000002.safetensors")
    assert not any(k.startswith("prompt.") for k in w)
    cfg2 = make_cfg("meta_algorithm=fomaml", "steps=2", "inner_steps=1", "learn_prompt=true", "prompt_ctx=2",
                    out=tmp_path / "run2")
    from vlfss.modeling.prompts import PromptLearner

    fit(cfg2)
    w2 = _weights(tmp_path / "run2" / "ckpt-00000002.safetensors")
    train, _, _, _ = build_data(cfg2)
    init_ctx = PromptLearner(tiny_backbone, train.dataset.text_names, 2).ctx.detach()  # "a photo": no randomness
    assert not torch.allclose(w2["prompt.ctx"], init_ctx)


# ------------------------------------------------------------------------------------------ checkpoints
def test_keep_best_exports_the_best_validated_head_and_survives_resume(make_cfg, tmp_path):
    """keep_best: the output is the head of the validation with the best mean mIoU (not the last), written to
    best.safetensors as it goes, and a resumed run still knows it."""
    cfg = make_cfg("steps=6", "epoch_steps=2", "val.episodes=4", "lr=0.05", "keep_best=true", "log_every=1",
                   out=tmp_path / "best")
    path = fit(cfg)
    lines = [json.loads(x) for x in (tmp_path / "best" / "log.jsonl").read_text().splitlines()]
    vals = {x["step"]: float(np.mean([v["miou"] for v in x["val"].values()])) for x in lines if "val" in x}
    assert sorted(vals) == [0, 2, 4, 6]  # step 0: the untrained head is a candidate
    best_step = max(vals, key=lambda k: (vals[k], -k))  # the first of equal scores is kept
    summary = json.loads((tmp_path / "best" / "summary.json").read_text())
    assert summary["best_step"] == best_step
    assert np.mean([v["miou"] for v in summary["val"].values()]) == pytest.approx(vals[best_step])
    assert "last_val" in summary
    best = _weights(tmp_path / "best" / "best.safetensors")
    head = _weights(path)
    assert all(torch.equal(head[k], best["head." + k]) for k in head)
    if best_step != 6:  # the exported head is not the last one
        last = _weights(tmp_path / "best" / "ckpt-00000006.safetensors")
        assert any(not torch.equal(head[k], last["head." + k]) for k in head)

    class Killed(Exception):
        pass

    def kill_at_5(step: int, loss: float) -> None:
        if step == 5:
            raise Killed

    cfg2 = make_cfg("steps=6", "epoch_steps=2", "val.episodes=4", "lr=0.05", "keep_best=true", "checkpoint_every=4",
                    out=tmp_path / "killed")
    with pytest.raises(Killed):
        fit(cfg2, on_step=kill_at_5)
    resumed = fit(cfg2, resume=True)
    assert json.loads((tmp_path / "killed" / "summary.json").read_text())["best_step"] == best_step
    again = _weights(resumed)
    assert all(torch.allclose(head[k], again[k], atol=1e-6) for k in head)


def test_fallback_kinds_keep_the_head_only_where_it_beat_training_free():
    trained = {"text": {"miou": 0.5}, "shots": {"miou": 0.40}, "text+shots": {"miou": 0.45}}
    free = {"text": {"miou": 0.3}, "shots": {"miou": 0.45}, "text+shots": {"miou": 0.45}}
    assert fallback_kinds(trained, free) == ["text"]  # a tie is no win
    assert fallback_kinds({"shots": {"miou": 0.4}}, free) == ["text", "text+shots"]  # not validated: kept
    assert fallback_kinds(trained, None) == ["text", "shots", "text+shots"]
    at5 = {"text+shots@5": {"miou": 0.50}, "shots@5": {"miou": 0.60}}
    free5 = {"text+shots@5": {"miou": 0.55}, "shots@5": {"miou": 0.50}}
    won1 = {**trained, "shots": {"miou": 0.5}, "text+shots": {"miou": 0.5}}
    assert fallback_kinds({**won1, **at5}, {**free, **free5}) == ["text", "shots"]  # lost with 5 shots: declined


def test_fallback_run_exports_a_head_that_answers_only_what_it_won(make_cfg, tmp_path):
    """fallback_to_training_free: the kept step maximises the mean of max(head, training-free) per kind, and the
    exported head records the kinds it beat step 0 on; the others get the training-free log-odds at use."""
    cfg = make_cfg("steps=6", "epoch_steps=2", "val.episodes=4", "lr=0.05", "keep_best=true", "log_every=1",
                   "fallback_to_training_free=true", "val.more_shots=[2]", out=tmp_path / "fb")
    path = fit(cfg)
    lines = [json.loads(x) for x in (tmp_path / "fb" / "log.jsonl").read_text().splitlines()]
    vals = {x["step"]: x["val"] for x in lines if "val" in x}
    free = json.loads((tmp_path / "fb" / "val_step0.json").read_text())
    assert free == vals[0]
    assert set(free) == {*KINDS, "shots@2", "text+shots@2"}  # the example kinds validated at 1 and 2 shots
    score = {k: np.mean([max(v["miou"], free[m]["miou"]) for m, v in val.items()]) for k, val in vals.items()}
    summary = json.loads((tmp_path / "fb" / "summary.json").read_text())
    assert summary["best_step"] == max(score, key=lambda k: (score[k], -k))
    want = fallback_kinds(vals[summary["best_step"]], free)
    assert summary["use_for"] == want
    meta = json.loads(__import__("safetensors").safe_open(str(path), "pt").metadata()["vlfss"])
    assert meta["head"]["use_for"] == want


def test_a_damaged_step0_validation_file_is_named(tmp_path):
    (tmp_path / "val_step0.json").write_text("{not json")
    with pytest.raises(InputError, match="val_step0.json is damaged"):
        read_json(tmp_path / "val_step0.json")
    assert read_json(tmp_path / "missing.json") is None


def test_fallback_needs_keep_best(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="fallback_to_training_free"):
        fit(make_cfg("steps=2", "fallback_to_training_free=true", out=tmp_path / "x"))


def test_kill_and_resume_reaches_the_same_weights(make_cfg, tmp_path):
    full = fit(make_cfg("steps=6", "augment.views=1", out=tmp_path / "full"))

    class Killed(Exception):
        pass

    def kill_at_5(step: int, loss: float) -> None:
        if step == 5:
            raise Killed

    cfg = make_cfg("steps=6", "augment.views=1", out=tmp_path / "killed")
    with pytest.raises(Killed):
        fit(cfg, on_step=kill_at_5)
    assert json.loads((tmp_path / "killed" / "last.json").read_text())["step"] == 4  # step 5 was lost
    assert not (tmp_path / "killed" / "head.safetensors").exists()
    assert not list((tmp_path / "killed").glob("*.tmp"))
    resumed = fit(cfg, resume=True)
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["started_at_step"] == 4
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k
    # the side file is plain tensors: it loads with weights_only=True
    state = torch.load(tmp_path / "killed" / "ckpt-00000006.state.pt", weights_only=True)
    assert state["step"] == 6 and "optimizer" in state and "torch_rng" in state
    assert sorted(p.name for p in (tmp_path / "killed").glob("ckpt-*.safetensors")) == [
        "ckpt-00000004.safetensors", "ckpt-00000006.safetensors"]  # keep_checkpoints=2


def test_resume_refuses_another_config_or_model_and_shows_the_difference(make_cfg, tmp_path, tiny_clip_name):
    cfg = make_cfg("steps=2")
    fit(cfg)
    with pytest.raises(ConfigError, match=r"lr: 0\.001 -> 0\.002.*another out_dir") as e:
        fit(make_cfg("steps=2", "lr=0.002"), resume=True)
    assert "\n" not in str(e.value)
    other = tmp_path / "other.safetensors"
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(1)
    save_file({k: v.contiguous() for k, v in open_clip.create_model(tiny_clip_name).state_dict().items()}, str(other))
    with pytest.raises(ConfigError, match="backbone: .*segmenter.pretrained"):
        fit(make_cfg("steps=2", f"segmenter.pretrained={other}"), resume=True)
    with pytest.raises(InputError, match="--resume"):
        fit(cfg)  # a checkpoint is there and neither resume nor overwrite was asked for
    fit(make_cfg("steps=3", "progress=true"), resume=False, overwrite=True)  # starts over
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["started_at_step"] == 0


def test_unwritable_or_full_output_dir_fails_before_training(make_cfg, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="not writable"):
        fit(make_cfg(out=blocker / "run"))
    import shutil

    import vlfss.io_utils

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(vlfss.io_utils.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    calls = []
    with pytest.raises(InputError, match=r"MiB free but needs about .* MiB; free space or set out_dir"):
        fit(make_cfg(out=tmp_path / "full"), on_step=lambda s, loss: calls.append(s))
    assert calls == [] and not (tmp_path / "full" / "log.jsonl").exists()


# ------------------------------------------------------------------------------------------ command line
def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("yaml_text,extra,needle", [
    ("steps: 2\nbogus_key: 1\n", [], "bogus_key"),
    ("steps: many\n", [], "'steps'"),
    ("lr: .nan\n", [], "'lr': NaN"),
    ("steps: 2\n", ["episodes.max_way=lots"], "'episodes.max_way'"),
    ("augment: {prob: 1.5}\n", [], "'augment.prob'"),
])
def test_cli_config_errors_name_the_key(tmp_path, capsys, yaml_text, extra, needle):
    from vlfss.cli import main

    cfg = _write(tmp_path / "c.yaml", "base: " + str(Path(__file__).parent.parent / "configs" / "base.yaml") + "\n"
                 + yaml_text)
    assert main(["train", "--config", str(cfg), f"out_dir={tmp_path / 'o'}", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and err.count("\n") == 0, err


def test_cli_class_with_too_few_images_names_it(tiny_clip_name, tiny_clip_weights, synth_root, tmp_path, capsys):
    from vlfss.cli import main

    args = overrides(tiny_clip_name, tiny_clip_weights, synth_root, tmp_path / "o", "episodes.max_shots=30")
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "fewer than 31 images" in err and "(id " in err and "use fewer shots" in err, err
    assert err.count("\n") == 0


def test_cli_train_runs_and_reports(tiny_clip_name, tiny_clip_weights, synth_root, tmp_path, capsys):
    from vlfss.cli import main

    cfg = _write(tmp_path / "c.yaml", "steps: 2\n")
    args = overrides(tiny_clip_name, tiny_clip_weights, synth_root, tmp_path / "o", "steps=2")
    assert main(["train", "--config", str(cfg), *args]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert (tmp_path / "o" / "head.safetensors").is_file()
    assert main(["train", "--config", str(cfg), *args]) == 2  # checkpoint present: asks for --resume
    # already done: rewrites outputs; key=value overrides may come before and after an option
    assert main(["train", "--config", str(cfg), args[0], "--resume", *args[1:]]) == 0
