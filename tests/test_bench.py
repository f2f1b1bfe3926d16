"""The speed benchmark runs end to end on tiny random models and reports every figure (no timing checks)."""

from __future__ import annotations

import json

from vlfss.evaluation.bench import TARGETS, clipseg_config, run_bench

TINY_CLIPSEG = {
    "vision_config": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 3,
                      "patch_size": 8, "image_size": 32},
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
    "projection_dim": 32, "extract_layers": [0, 1, 2], "reduce_dim": 16, "decoder_num_attention_heads": 2,
    "decoder_intermediate_size": 32,
}


def test_clipseg_config_is_rd64_refined():
    cfg = clipseg_config()
    v, t = cfg.vision_config, cfg.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.patch_size, v.image_size) == (768, 12, 16, 224)
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads) == (512, 12, 8)
    assert cfg.projection_dim == 512 and list(cfg.extract_layers) == [3, 6, 9] and cfg.reduce_dim == 64
    assert cfg.decoder_num_attention_heads == 4 and cfg.decoder_intermediate_size == 2048
    assert cfg.conditional_layer == 0 and cfg.use_complex_transposed_convolution is True


def test_run_bench_tiny_reports_all_figures(tiny_clip_name, tiny_clip_weights, tmp_path, capsys):
    out = tmp_path / "bench.json"
    res = run_bench(size=48, repeats=1, model=tiny_clip_name, out=out, pretrained=tiny_clip_weights, threads=1,
                    clipseg_overrides=TINY_CLIPSEG)
    assert set(res) == {"config", "variants", "ratios", "checks"}
    assert set(res["variants"]) == {"a", "a_oc", "b", "c", "d", "e", "f"}
    for v in res["variants"].values():
        assert len(v["times_s"]) == 1 and v["median_s"] > 0
    assert set(res["ratios"]) == {"b/a", "b/a_oc", "c/b", "e/d", "f/b"}
    for key in TARGETS:
        assert set(res["ratios"][key]) == {"value", "target", "met"}
    assert res["checks"]["text_encodes_during_timing"] == 0
    assert res["config"]["size"] == 48 and res["config"]["threads"] == 1
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    printed = capsys.readouterr().out
    for key in ("b/a", "c/b", "e/d", "f/b", "median ms"):
        assert key in printed
