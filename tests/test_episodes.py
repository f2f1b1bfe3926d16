"""Episodes: seeded by (seed, i) only, identical queries for 0/1/5 shots, relabelling, episode files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datagen import memory_dataset

from vlfss.data.episodes import EpisodeSampler, EpisodeSpec, load_episodes, relabel_query, save_episodes, shard
from vlfss.errors import DataError, InputError


@pytest.fixture(scope="module")
def ds():
    return memory_dataset(n=60, num_classes=6, seed=1)


def test_same_seed_same_episodes_any_order_and_sharding(ds):
    a = EpisodeSampler(ds, [0, 1, 2, 3], k_shot=2, seed=7, num_episodes=30)
    b = EpisodeSampler(ds, [0, 1, 2, 3], k_shot=2, seed=7, num_episodes=30)
    full = a.specs()
    assert [b.spec(i) for i in reversed(range(30))] == full[::-1]
    for world in (1, 2, 3, 4):
        got = {}
        for rank in reversed(range(world)):  # ranks in any order, each with its own sampler
            s = EpisodeSampler(ds, [0, 1, 2, 3], k_shot=2, seed=7, num_episodes=30)
            got.update({i: s.spec(i) for i in shard(30, rank, world)})
        assert [got[i] for i in range(30)] == full
    other = EpisodeSampler(ds, [0, 1, 2, 3], k_shot=2, seed=8, num_episodes=30).specs()
    assert other != full
    # num_episodes does not change episode i
    assert EpisodeSampler(ds, [0, 1, 2, 3], k_shot=2, seed=7, num_episodes=5).specs() == full[:5]


@pytest.mark.parametrize("sampling", ["class", "pair"])
def test_identical_queries_for_0_1_5_shots(ds, sampling):
    specs = {k: EpisodeSampler(ds, [0, 1, 2], k_shot=k, seed=3, num_episodes=40, query_sampling=sampling).specs()
             for k in (0, 1, 5)}
    for i in range(40):
        assert specs[0][i].query_id == specs[1][i].query_id == specs[5][i].query_id
        assert specs[0][i].class_ids == specs[1][i].class_ids == specs[5][i].class_ids
        assert specs[0][i].support_ids == ()
        assert specs[5][i].with_shots(1) == specs[1][i]  # 1-shot supports are the first of the 5-shot ones


def test_query_and_supports_contain_the_class(ds):
    s = EpisodeSampler(ds, [1, 4], k_shot=3, seed=0, num_episodes=25)
    for i in range(25):
        sp = s.spec(i)
        (c,) = sp.class_ids
        assert c in ds.classes_in(ds.index_of(sp.query_id))
        assert len(set(sp.support_ids)) == 3 and sp.query_id not in sp.support_ids
        assert all(c in ds.classes_in(ds.index_of(x)) for x in sp.support_ids)


def test_class_sampling_is_balanced(ds):
    s = EpisodeSampler(ds, [0, 1, 2, 3, 4, 5], seed=0, num_episodes=600)
    counts = np.bincount([s.spec(i).class_ids[0] for i in range(600)], minlength=6)
    assert counts.min() > 60  # ~100 each


def test_loaded_episode_relabels(ds):
    s = EpisodeSampler(ds, [0, 1, 2, 3, 4, 5], n_way=2, k_shot=2, seed=5, num_episodes=10)
    for i in range(10):
        ep = s.episode(i)
        label = ds.load_label(ds.index_of(ep.query_id))
        assert ep.n_way == 2 and ep.k_shot == 2 and len(ep.support_images) == len(ep.support_masks) == 4
        assert ep.texts == [f"class{c}" for c in ep.class_ids] and ep.index == i
        expected = np.zeros_like(label)
        for j, c in enumerate(ep.class_ids):
            expected[label == c + 1] = j + 1
        expected[label == 255] = 255
        assert (ep.query_mask == expected).all()
        assert ((ep.query_mask >= 1) & (ep.query_mask <= 2)).any()  # the first-drawn class is in the query
        for j, c in enumerate(ep.class_ids):  # class-major supports
            for k in range(2):
                m = ep.support_masks[2 * j + k]
                slab = ds.load_label(ds.index_of(ep.support_ids[2 * j + k]))
                assert set(np.unique(m).tolist()) <= {0, 1, 255} and ((m == 1) == (slab == c + 1)).all()
                assert (m == 1).any() and ((m == 255) == (slab == 255)).all()


def test_n_way_prefers_classes_present_in_the_query(ds):
    s = EpisodeSampler(ds, list(range(6)), n_way=3, k_shot=1, seed=2, num_episodes=30)
    for i in range(30):
        sp = s.spec(i)
        present = set(ds.classes_in(ds.index_of(sp.query_id)))
        chosen = set(sp.class_ids)
        assert len(chosen) == 3
        assert len(chosen & present) == min(3, len(present))


def test_relabel_query():
    lab = np.array([[0, 3, 5, 255, 1]], np.uint8)
    assert relabel_query(lab, [4, 2]).tolist() == [[0, 2, 1, 255, 0]]
    assert relabel_query(lab, [4]).tolist() == [[0, 0, 1, 255, 0]]  # other classes become background
    assert relabel_query(lab, [0, 2, 4]).tolist() == [[0, 2, 3, 255, 1]]


def test_errors(ds):
    counts = {c: len(ds.images_of_class(c)) for c in range(6)}
    k = max(counts.values())  # the largest class cannot provide k supports plus a query
    with pytest.raises(DataError, match=r"'class\d' \(id \d\)"):
        EpisodeSampler(ds, list(range(6)), k_shot=k)
    with pytest.raises(InputError, match="n_way"):
        EpisodeSampler(ds, [0, 1], n_way=3)
    with pytest.raises(InputError, match="out of range"):
        EpisodeSampler(ds, [9])
    with pytest.raises(InputError, match="episode index"):
        EpisodeSampler(ds, [0], num_episodes=3).spec(3)
    with pytest.raises(InputError, match="rank"):
        shard(10, 2, 2)
    assert list(shard(10, 1, 3)) == [1, 4, 7]


def test_episode_files(ds, tmp_path):
    s = EpisodeSampler(ds, [0, 1, 2], k_shot=5, seed=11, num_episodes=12)
    specs = s.specs()
    path = tmp_path / "ep.json"
    h = save_episodes(path, specs, {"benchmark": "mem", "fold": 0, "seed": 11})
    got, meta = load_episodes(path, benchmark="mem", fold=0)
    assert got == specs and meta["hash"] == h and meta["shots"] == 5 and meta["n_way"] == 1
    one, _ = load_episodes(path, shots=1)
    assert one == EpisodeSampler(ds, [0, 1, 2], k_shot=1, seed=11, num_episodes=12).specs()
    ep = s.episode(got[3])  # a saved spec loads the same episode
    assert ep.query_id == specs[3].query_id and len(ep.support_images) == 5
    with pytest.raises(DataError, match="benchmark 'mem', not 'pascal5i'"):
        load_episodes(path, benchmark="pascal5i")
    with pytest.raises(DataError, match="fold"):
        load_episodes(path, fold=1)
    with pytest.raises(DataError, match="cannot serve 6"):
        load_episodes(path, shots=6)
    doc = json.loads(path.read_text())
    doc["episodes"][0]["query"] = "img000"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="content hash"):
        load_episodes(path)
    with pytest.raises(DataError, match="does not exist"):
        load_episodes(tmp_path / "none.json")
    with pytest.raises(InputError, match="benchmark"):
        save_episodes(path, specs, {"fold": 0})


def test_spec_json_round_trip():
    sp = EpisodeSpec(4, "q", (2, 5), ("a", "b", "c", "d"), 2)
    assert EpisodeSpec.from_json(sp.to_json()) == sp and sp.supports_of(1) == ("c", "d") and sp.n_way == 2
