"""Record the embedded tiny CLIP's embeddings of a fixed input (tests/data/tiny_clip_reference.json).

Run once after shipping new weights: `python eval/record_tiny_reference.py`. The test
tests/test_shipped_model.py then checks that the shipped file, loaded through open_clip's own
`create_model(name, pretrained=file)`, still reproduces them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlfss.data.synthetic import generate_scene
from vlfss.engine.pretrain import _normalise
from vlfss.modeling.backbones import TINY_MODEL, TINY_WEIGHTS, register_open_clip_configs

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "tiny_clip_reference.json"


def reference() -> dict:
    import open_clip

    register_open_clip_configs()
    model = open_clip.create_model(TINY_MODEL, pretrained=str(TINY_WEIGHTS)).eval()
    tok = open_clip.get_tokenizer(TINY_MODEL)
    scene = generate_scene(123, 0)
    with torch.no_grad():
        img = model.encode_image(_normalise(scene.image[None]), normalize=True)[0]
        txt = model.encode_text(tok(["stripes", "a photo of dots"]), normalize=True)
    return {"image_scene": [123, 0], "texts": ["stripes", "a photo of dots"],
            "image_embedding": [round(float(v), 6) for v in img],
            "text_embeddings": [[round(float(v), 6) for v in row] for row in txt],
            "weights_bytes": TINY_WEIGHTS.stat().st_size}


if __name__ == "__main__":
    OUT.write_text(json.dumps(reference(), indent=1))
    print(f"wrote {OUT}")
