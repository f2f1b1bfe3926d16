"""The feature cache is shared by the app's concurrent requests: it must stay consistent under threads."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import torch

from vlfss.cache import FeatureCache


@pytest.fixture()
def fast_switching():
    """Switch threads every microsecond so that races show up within a short test."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _hammer(cache: FeatureCache, n_threads: int, n_ops: int, n_keys: int) -> list[BaseException]:
    """Threads get each key and put it on a miss, in a tight loop over more keys than the cache holds (so entries
    are evicted while others read them); returns what they raised."""
    errors: list[BaseException] = []
    keys = [FeatureCache.key("m", "v", (4, 4), str(k)) for k in range(n_keys)]
    values = [{"z": torch.full((1,), float(k))} for k in range(n_keys)]
    start = threading.Barrier(n_threads)

    def work(t: int) -> None:
        start.wait()
        try:
            for i in range(n_ops):
                k = (7 * i + t) % n_keys
                got = cache.get(keys[k])
                if got is None:
                    cache.put(keys[k], values[k])
                elif i % 64 == 0 and float(got["z"][0]) != k:  # an entry always belongs to its key
                    raise AssertionError(f"key {k} returned the entry of {float(got['z'][0])}")
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return errors


def test_concurrent_get_put_with_eviction(fast_switching):
    cache = FeatureCache(max_items=4)
    n_threads, n_ops = 8, 20_000
    errors = _hammer(cache, n_threads, n_ops, n_keys=6)
    assert not errors, errors[:3]
    assert cache.stats()["items"] <= 4
    assert cache.hits + cache.misses == n_threads * n_ops  # no lost counter update


def test_concurrent_disk_cache_leaves_whole_files(fast_switching, tmp_path):
    cache = FeatureCache(max_items=2, disk_dir=tmp_path)
    errors = _hammer(cache, 4, 200, n_keys=6)
    assert not errors, errors[:3]
    fresh = FeatureCache(disk_dir=tmp_path)  # every file on disk is whole and holds its own key's entry
    for k in range(6):
        got = fresh.get(FeatureCache.key("m", "v", (4, 4), str(k)))
        assert got is not None and float(got["z"][0]) == k
    assert not list(tmp_path.glob("*.tmp"))  # no temporary file left behind


def test_threads_encoding_through_one_segmenter_match_one_thread(tiny_backbone, rng):
    from vlfss.segmenter import Segmenter

    seg = Segmenter(tiny_backbone)
    images = [(rng.random((40, 56, 3)) * 255).astype(np.uint8) for _ in range(6)]
    alone = [e.z.clone() for e in Segmenter(tiny_backbone).encode(images)]
    results: dict[int, list] = {}

    def work(t: int) -> None:
        results[t] = [e.z for e in seg.encode(images[t % 3:] + images[: t % 3])]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t, zs in results.items():
        order = images[t % 3:] + images[: t % 3]
        for img, z in zip(order, zs):
            assert torch.equal(z, alone[next(i for i, x in enumerate(images) if x is img)])
    assert seg.cache.stats()["items"] == 6
