"""The app's actions without Gradio: what a Segment click returns equals the library's answer, supports are
encoded once per session, and bad input gets the CLI's one-line message."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlfss.app.examples import build_examples
from vlfss.app.handlers import AppHandlers, ClassForm, SegmentForm
from vlfss.app.inputs import Limits
from vlfss.app.state import SegmenterRegistry
from vlfss.errors import InputError
from vlfss.segmenter import SegmenterConfig


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    handlers = AppHandlers(SegmenterRegistry({"vlfss-tiny": SegmenterConfig()}), Limits(max_image_mp=0.05),
                           tmp_path_factory.mktemp("app"))
    return handlers, build_examples(handlers.workdir / "examples")


def editor(image_path, layer_path=None) -> dict:
    """The image editor's value as Gradio hands it over (type numpy, RGBA layers)."""
    bg = np.asarray(Image.open(image_path).convert("RGBA"))
    layers = [np.asarray(Image.open(layer_path).convert("RGBA"))] if layer_path else []
    return {"background": bg, "layers": layers, "composite": bg}


def klass(ex_class, name: bool = True, example: bool = True) -> ClassForm:
    return ClassForm(ex_class.name if name else None, editor(ex_class.support, ex_class.layer) if example else None)


def form(ex, classes, **kw) -> SegmentForm:
    return SegmentForm([str(p) for p in ex.queries], classes, **kw)


def reference(seg, ex, texts, supports, negatives=None, mode=None):
    query = np.asarray(Image.open(ex.queries[0]).convert("RGB"))
    return seg.segment(query, texts=texts, supports=supports, negatives=negatives, mode=mode)


@pytest.mark.parametrize("name, example", [(True, False), (False, True), (True, True)])
def test_segment_equals_the_library_answer(app, name, example):
    handlers, examples = app
    ex = examples[0]
    c = ex.classes[0]
    res = handlers.segment(form(ex, [klass(c, name, example)]), session=f"s-{name}-{example}")
    seg = handlers.registry.get("vlfss-tiny")
    support = [(np.asarray(Image.open(c.support).convert("RGB")), c.mask)]
    ref = reference(seg, ex, [c.name] if name else None, support if example else None)
    assert res.class_names == ([c.name] if name else ["class1"])
    assert np.array_equal(res.outputs[0].labels.numpy(), ref.labels.numpy())
    assert res.outputs[0].masks[0].any()  # the class was found
    # downloads: label PNG pixels are the labels; COCO RLE decodes to the class mask
    labels = np.asarray(Image.open(res.files[0]))
    assert np.array_equal(labels, ref.labels.numpy())
    coco = json.loads(res.files[-1].read_text())
    from pycocotools import mask as mask_utils

    ann = coco["annotations"][0]
    rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
    assert np.array_equal(mask_utils.decode(rle).astype(bool), ref.masks[0].numpy())
    assert coco["categories"] == [{"id": 1, "name": res.class_names[0]}]
    assert res.table()[0][:2] == [ex.queries[0].name, res.class_names[0]]


def test_two_classes_and_a_negative(app):
    handlers, examples = app
    seg = handlers.registry.get("vlfss-tiny")
    two = examples[1]
    res = handlers.segment(form(two, [klass(c) for c in two.classes]), session="two")
    sup = [[(np.asarray(Image.open(c.support).convert("RGB")), c.mask)] for c in two.classes]
    ref = reference(seg, two, [c.name for c in two.classes], sup)
    assert res.class_names == [c.name for c in two.classes]
    assert np.array_equal(res.outputs[0].labels.numpy(), ref.labels.numpy())
    assert {1, 2} <= set(np.unique(res.outputs[0].labels.numpy()).tolist())

    neg = examples[2]
    negative = ClassForm(None, editor(neg.negative.support, neg.negative.layer))
    res = handlers.segment(form(neg, [klass(neg.classes[0])], negative=negative, negative_names="bricks"),
                           session="neg")
    c = neg.classes[0]
    negatives = [(np.asarray(Image.open(neg.negative.support).convert("RGB")), neg.negative.mask), "bricks"]
    ref = reference(seg, neg, [c.name], [(np.asarray(Image.open(c.support).convert("RGB")), c.mask)], negatives)
    assert np.array_equal(res.outputs[0].labels.numpy(), ref.labels.numpy())


def test_support_is_encoded_once_per_session(app):
    handlers, examples = app
    ex = examples[0]
    seg = handlers.registry.get("vlfss-tiny")
    f = form(ex, [klass(ex.classes[0])], mode="training-free")
    first = handlers.segment(f, session="once")
    encodes, prepares = seg.image_encodes, handlers.sessions.prepares
    again = handlers.segment(f, session="once")
    assert seg.image_encodes == encodes and handlers.sessions.prepares == prepares  # nothing re-encoded
    assert np.array_equal(first.outputs[0].labels.numpy(), again.outputs[0].labels.numpy())
    handlers.segment(f, session="other")  # another session prepares its own request, from the shared cache
    assert handlers.sessions.prepares == prepares + 1 and seg.image_encodes == encodes
    assert handlers.registry.builds == 1


def _write(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def test_bad_input_gets_the_cli_message(app, tmp_path):
    handlers, examples = app
    ex = examples[0]
    c = ex.classes[0]
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    with pytest.raises(InputError, match=r"^notes.txt is not an image file PIL can read"):
        handlers.segment(SegmentForm([str(not_image)], [klass(c)]))
    with pytest.raises(InputError, match="no query image"):
        handlers.segment(SegmentForm([], [klass(c)]))
    with pytest.raises(InputError, match="nothing to segment"):
        handlers.segment(form(ex, [ClassForm(), ClassForm("  ")]))
    empty = ClassForm(None, editor(c.support))  # an image without paint
    with pytest.raises(InputError, match="class 1 support 1 mask: the mask has no foreground pixels"):
        handlers.segment(form(ex, [empty]))
    small = np.zeros((10, 12), np.uint8)
    small[2:5, 2:5] = 255
    wrong = ClassForm(None, editor(c.support), _write(tmp_path / "m.png", small))
    with pytest.raises(InputError, match=r"m.png\): mask size 12x10 differs from its image 96x96") as e:
        handlers.segment(form(ex, [wrong]))
    assert str(tmp_path) not in str(e.value)  # the user's file name, not the server's path
    layer = np.zeros((10, 12, 4), np.uint8)
    layer[2:5, 2:5, 3] = 255
    painted = ClassForm(None, {"background": editor(c.support)["background"], "layers": [layer]})
    with pytest.raises(InputError, match="mask size 12x10 differs from its image 96x96"):
        handlers.segment(form(ex, [painted]))
    with pytest.raises(InputError, match="not offered by this app"):
        handlers.segment(form(ex, [klass(c)], model="ViT-B-16"))
    with pytest.raises(InputError, match="mode 'sometimes'"):
        handlers.segment(form(ex, [klass(c)], mode="sometimes"))


def test_image_size_limit_is_named(app, tmp_path):
    handlers, examples = app  # the fixture's limit: 0.05 megapixels
    c = examples[0].classes[0]
    ok = _write(tmp_path / "ok.png", np.zeros((200, 250, 3), np.uint8))  # exactly 0.05 MP: accepted
    assert handlers.segment(SegmentForm([ok], [klass(c)])).outputs[0].labels.shape == (200, 250)
    big = _write(tmp_path / "big.png", np.zeros((201, 250, 3), np.uint8))
    with pytest.raises(InputError, match=r"query image 1 \(big.png\) is 250x201 .* limit of 0.05 megapixels"):
        handlers.segment(SegmentForm([big], [klass(c)]))


def test_prompt_file_from_another_model_is_refused(app, tmp_path, tiny_backbone):
    from vlfss.modeling.prompts import PromptLearner

    handlers, examples = app
    path = PromptLearner(tiny_backbone, ["stripes"], init=None).save(tmp_path / "other.safetensors")
    refusal = r"prompt file other.safetensors was learned for model '.*test-tiny-vit.*re-run tune-prompts"
    with pytest.raises(InputError, match=refusal):
        handlers.segment(form(examples[0], [klass(examples[0].classes[0])], prompt_file=str(path)))


def test_learn_a_prompt_then_segment_with_it(app):
    handlers, examples = app
    ex = examples[0]
    c = ex.classes[0]
    with pytest.raises(InputError, match="type the class name"):
        handlers.learn_prompt(klass(c, name=False), "vlfss-tiny")
    path, note = handlers.learn_prompt(klass(c), "vlfss-tiny")
    assert path.is_file() and "learned a prompt for" in note
    seg = handlers.registry.get("vlfss-tiny")
    assert seg.prompt_learners == {}  # the shared segmenter is untouched
    res = handlers.segment(form(ex, [], prompt_file=str(path), mode="training-free"), session="prompt")
    view = handlers.sessions.prompt_view("prompt", "vlfss-tiny", seg, path)[0]
    ref = reference(view, ex, [c.name], None, mode="training-free")
    assert res.class_names == [c.name]  # the prompt file's class, as in the CLI
    assert np.array_equal(res.outputs[0].labels.numpy(), ref.labels.numpy())
    plain = reference(seg, ex, [c.name], None, mode="training-free")
    assert not np.array_equal(ref.logits.numpy(), plain.logits.numpy())  # the learned context is used


def test_add_example_keeps_examples_and_checks_them(app):
    handlers, examples = app
    c = examples[0].classes[0]
    saved = handlers.add_example(klass(c))
    saved = handlers.add_example(ClassForm(c.name, editor(c.support, c.layer), None, saved))
    assert len(saved) == 2 and np.array_equal(saved[0][1], c.mask)
    with pytest.raises(InputError, match="no example to add"):
        handlers.add_example(ClassForm(c.name, None, None, saved))


def test_inference_strategy_is_per_request_and_matches_a_configured_segmenter(app, tmp_path):
    import dataclasses

    from vlfss.segmenter import Segmenter

    handlers, examples = app
    ex = examples[0]
    c = ex.classes[0]
    big = np.kron(np.asarray(Image.open(ex.queries[0]).convert("RGB")), np.ones((2, 2, 1), np.uint8))  # 192 px
    path = _write(tmp_path / "big_query.png", big)
    answers = {}
    for inference in ("resize", "slide"):
        res = handlers.segment(SegmentForm([path], [klass(c)], inference=inference), session="strategy")
        seg = handlers.registry.get("vlfss-tiny")
        configured = Segmenter(seg.backbone, dataclasses.replace(seg.cfg, inference=inference), seg.head,
                               seg.head_variant)
        support = [(np.asarray(Image.open(c.support).convert("RGB")), c.mask)]
        ref = configured.segment(big, texts=[c.name], supports=support)
        assert np.array_equal(res.outputs[0].labels.numpy(), ref.labels.numpy())
        answers[inference] = res.outputs[0].logits.numpy()
    assert not np.allclose(answers["resize"], answers["slide"])  # the choice reaches the model
    assert handlers.registry.get("vlfss-tiny").cfg.inference == "auto"  # the shared segmenter is untouched
    with pytest.raises(InputError, match="inference 'tiles' is not one of auto, resize, slide, multiscale"):
        handlers.segment(SegmentForm([path], [klass(c)], inference="tiles"))
