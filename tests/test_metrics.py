"""FSSMeter against brute force and hand-computed cases; merging and all_reduce add up exactly."""

from __future__ import annotations

import math
import multiprocessing as mp

import numpy as np
import pytest
import torch

from vlfss.errors import InputError
from vlfss.evaluation.metrics import FSSMeter, mean_ci, t_ppf


def _episodes(n=40, num_classes=7, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for e in range(n):
        n_way = int(rng.integers(1, 4))
        ids = rng.choice(num_classes, n_way, replace=False).tolist()
        h, w = int(rng.integers(5, 12)), int(rng.integers(5, 12))
        target = rng.integers(0, n_way + 1, (h, w)).astype(np.uint8)
        target[rng.random((h, w)) < 0.15] = 255
        pred = rng.integers(0, n_way + 1, (h, w)).astype(np.uint8)
        out.append((e, pred, target, ids))
    return out


def _brute(episodes, num_classes):
    inter, union, pred_a, tgt_a = (np.zeros(num_classes, np.int64) for _ in range(4))
    fb_i, fb_u = np.zeros(2, np.int64), np.zeros(2, np.int64)
    seen = set()
    for _, p, t, ids in episodes:
        valid = t != 255
        for j, c in enumerate(ids):
            pm, tm = (p == j + 1) & valid, (t == j + 1) & valid
            inter[c] += (pm & tm).sum()
            union[c] += (pm | tm).sum()
            pred_a[c] += pm.sum()
            tgt_a[c] += tm.sum()
            seen.add(c)
        for k, (pm, tm) in enumerate((((p == 0) & valid, (t == 0) & valid), ((p > 0) & valid, (t > 0) & valid))):
            fb_i[k] += (pm & tm).sum()
            fb_u[k] += (pm | tm).sum()
    ious = {c: inter[c] / union[c] for c in sorted(seen)}
    return ious, fb_i, fb_u, pred_a, tgt_a, inter


def test_matches_brute_force():
    eps = _episodes()
    m = FSSMeter(7)
    for e, p, t, ids in eps:
        m.update(p, t, ids, episode=e)
    ious, fb_i, fb_u, pred_a, tgt_a, inter = _brute(eps, 7)
    assert m.per_class_iou().keys() == ious.keys()
    assert all(math.isclose(m.per_class_iou()[c], ious[c]) for c in ious)
    assert math.isclose(m.miou(), float(np.mean(list(ious.values()))))
    assert m.fb_inter.tolist() == fb_i.tolist() and m.fb_union.tolist() == fb_u.tolist()
    assert math.isclose(m.fb_iou(), float(np.mean(fb_i / fb_u)))
    assert all(math.isclose(m.precision()[c], inter[c] / pred_a[c]) for c in ious)
    assert all(math.isclose(m.recall()[c], inter[c] / tgt_a[c]) for c in ious)
    assert m.inter.dtype == torch.int64 and len(m.episode_ious()) == sum(len(x[3]) for x in eps)


def test_hand_computed_with_ignore():
    # 1-way episode of class 3: target fg = 3 pixels (one more is ignored), pred hits 2 of them plus 1 false positive.
    target = np.array([[1, 1, 1, 255],
                       [0, 0, 0, 0]], np.uint8)
    pred = np.array([[1, 1, 0, 1],
                     [1, 0, 0, 0]], np.uint8)
    m = FSSMeter(5)
    m.update(pred, target, [3])
    assert m.per_class_iou() == {3: 2 / 4}  # inter 2, union 2 + 1 missed + 1 FP (ignored pixel not counted)
    assert m.precision() == {3: 2 / 3} and m.recall() == {3: 2 / 3}
    assert math.isclose(m.f1()[3], 2 / 3)
    # background: inter 3 ((1,1),(1,2),(1,3)); union 3 + FP bg at (0,2) + missed bg at (1,0) = 5
    assert m.fb_inter.tolist() == [3, 2] and m.fb_union.tolist() == [5, 4]
    assert math.isclose(m.fb_iou(), (3 / 5 + 2 / 4) / 2)
    # A second episode of another class: class-wise mean over the classes that occurred.
    m.update(np.ones((2, 2), np.uint8), np.ones((2, 2), np.uint8), [0])
    assert m.occurred() == [0, 3] and math.isclose(m.miou(), (1.0 + 0.5) / 2)
    assert math.isclose(m.miou(classes=[3, 4]), 0.5)


def test_class_wise_miou_is_not_the_per_episode_mean():
    m = FSSMeter(1)
    big_t = np.ones((10, 10), np.uint8)
    m.update(big_t, big_t, [0], episode=0)  # IoU 1 on 100 pixels
    small_t = np.zeros((10, 10), np.uint8)
    small_t[0, 0] = 1
    m.update(np.zeros((10, 10), np.uint8), small_t, [0], episode=1)  # IoU 0 on 1 pixel
    assert math.isclose(m.miou(), 100 / 101)
    assert [v for _, _, v in m.episode_ious()] == [1.0, 0.0]


def test_merge_equals_one_meter_with_classes_absent_from_a_shard():
    eps = _episodes(n=30, num_classes=9, seed=1)
    whole = FSSMeter(9)
    for e, p, t, ids in eps:
        whole.update(p, t, ids, episode=e)
    shards = [FSSMeter(9) for _ in range(3)]
    # shard by class so that each shard misses some classes entirely
    for e, p, t, ids in eps:
        shards[min(ids) % 3].update(p, t, ids, episode=e)
    assert any(set(s.occurred()) != set(whole.occurred()) for s in shards)
    merged = FSSMeter(9)
    for s in reversed(shards):
        merged.merge(s.state())
    for k, v in whole.state().items():
        assert torch.equal(v, merged.state()[k]), k
    assert merged.miou() == whole.miou() and merged.fb_iou() == whole.fb_iou()
    assert merged.episode_ious() == whole.episode_ious()
    assert merged.summary() == whole.summary()
    assert FSSMeter.from_state(whole.state()).summary() == whole.summary()
    with pytest.raises(InputError, match="merge"):
        FSSMeter(3).merge(whole)


def test_input_validation():
    m = FSSMeter(4)
    z = np.zeros((3, 3), np.uint8)
    with pytest.raises(InputError, match="one size"):
        m.update(z, np.zeros((3, 4), np.uint8), [0])
    with pytest.raises(InputError, match="target holds labels"):
        m.update(z, np.full((3, 3), 2, np.uint8), [0])
    with pytest.raises(InputError, match="pred holds labels"):
        m.update(np.full((3, 3), 3, np.uint8), z, [0, 1])
    with pytest.raises(InputError, match="class_ids"):
        m.update(z, z, [1, 1])
    with pytest.raises(InputError, match="integer"):
        m.update(z.astype(np.float32), z, [0])
    assert math.isnan(FSSMeter(2).miou()) and math.isnan(FSSMeter(2).fb_iou())
    m.update(torch.zeros(3, 3, dtype=torch.long), torch.zeros(3, 3, dtype=torch.long), [2])
    assert m.per_class_iou() == {2: 1.0}  # nothing to find and nothing found


def test_t_quantiles_and_ci():
    for df, q in ((1, 12.7062), (2, 4.3027), (5, 2.5706), (10, 2.2281), (30, 2.0423), (1000, 1.9623)):
        assert abs(t_ppf(0.975, df) - q) < 1e-3
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and math.isclose(half, 3.182446 * math.sqrt(5 / 3) / 2, rel_tol=1e-5)
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0], method="normal")
    assert math.isclose(half, 1.959964 * math.sqrt(5 / 3) / 2, rel_tol=1e-5)
    vals = list(np.random.default_rng(0).random(200))
    assert mean_ci(vals) == mean_ci(vals[::-1])  # order-independent to the last bit
    assert math.isnan(mean_ci([0.3])[1])
    with pytest.raises(InputError):
        mean_ci([])


def _worker(rank, world, path, eps, queue):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    try:
        m = FSSMeter(7)
        for i in range(rank, len(eps), world):
            e, p, t, ids = eps[i]
            m.update(p, t, ids, episode=e)
        r = m.all_reduce()
        queue.put((rank, {k: v.tolist() for k, v in r.state().items()}, r.summary()))
    finally:
        dist.destroy_process_group()


def test_all_reduce_over_gloo_equals_single_process(tmp_path):
    eps = _episodes(n=20, seed=3)
    whole = FSSMeter(7)
    for e, p, t, ids in eps:
        whole.update(p, t, ids, episode=e)
    assert whole.all_reduce().summary() == whole.summary()  # not initialised: a copy
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, tmp_path / "store", eps, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    want = {k: v.tolist() for k, v in whole.state().items()}
    for _, state, summary in results:
        assert state == want and summary == whole.summary()
