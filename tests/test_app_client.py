"""The app end to end over HTTP, as a script or another program uses it: gradio_client against the app launched
on 127.0.0.1 (a free port), the answers checked against the library's; bad input gets the CLI's message; the
server reads only uploaded files; 8 concurrent clients get the same answers as one client alone."""

from __future__ import annotations

import os
import socket
import threading
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image

from vlfss.app.inputs import Limits
from vlfss.segmenter import SegmenterConfig

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

UPLOAD_MB = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """The app with the embedded model, served on 127.0.0.1 for this module's tests."""
    from vlfss.app.ui import create_app, launch

    demo, handlers = create_app({"vlfss-tiny": SegmenterConfig()}, Limits(max_upload_mb=UPLOAD_MB),
                                str(tmp_path_factory.mktemp("app")))
    port = free_port()
    launch(demo, port=port, prevent_thread_lock=True, max_upload_mb=UPLOAD_MB, concurrency=2, quiet=True,
           allowed_paths=[str(handlers.workdir)])
    examples = handlers.workdir / "examples"
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", handlers=handlers, examples=examples, demo=demo)
    demo.close()


def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False, download_files=str(server.handlers.workdir / "client"))


def query(path) -> list:
    from gradio_client import handle_file

    return [{"image": handle_file(str(path)), "caption": None}]


def editor(image, layer=None) -> dict:
    from gradio_client import handle_file

    return {"background": handle_file(str(image)), "layers": [handle_file(str(layer))] if layer else [],
            "composite": None, "id": None}


def example_request(server, k: int, what: str) -> dict:
    """Keyword arguments of /segment for example ``k`` (1-based): 'text', 'example', 'both', 'two', 'negative'."""
    ex = server.examples
    req: dict = {"queries": query(ex / f"example{k}_query.png")}
    if what in ("text", "both"):
        req["class1"] = _names(server)[k - 1][0]
    if what in ("example", "both", "two", "negative"):
        req["example1"] = editor(ex / f"example{k}_class1_support.png", ex / f"example{k}_class1_mask_layer.png")
    if what == "two":
        req["class1"], req["class2"] = _names(server)[k - 1][:2]
        req["example2"] = editor(ex / f"example{k}_class2_support.png", ex / f"example{k}_class2_mask_layer.png")
    if what == "negative":
        req["class1"] = _names(server)[k - 1][0]
        req["negative_example"] = editor(ex / f"example{k}_negative_support.png",
                                         ex / f"example{k}_negative_mask_layer.png")
    return req


def _names(server) -> list[list[str]]:
    from vlfss.app.examples import build_examples

    if not hasattr(server, "names"):  # the same deterministic examples, described (files rewritten identically)
        server.names = [[c.name for c in e.classes] for e in build_examples(server.handlers.workdir / "examples")]
    return server.names


def labels_of(result) -> np.ndarray:
    """The label PNG of the first image from a /segment result (downloaded by the client)."""
    files = result[5]
    return np.asarray(Image.open(next(f for f in files if f.endswith("_labels.png"))))


def library_labels(server, req_images: dict) -> np.ndarray:
    seg = server.handlers.registry.get("vlfss-tiny")
    return seg.segment(**req_images).labels.numpy()


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _pair(server, stem: str):
    ex = server.examples
    return _rgb(ex / f"{stem}_support.png"), (np.asarray(Image.open(ex / f"{stem}_mask_layer.png"))[..., 3] > 0)


@pytest.mark.parametrize("k, what", [(1, "text"), (1, "example"), (1, "both"), (2, "two"), (3, "negative")])
def test_segment_over_http_equals_the_library(app_server, k, what):
    res = client(app_server).predict(**example_request(app_server, k, what), api_name="/segment")
    names = _names(app_server)[k - 1]
    q = _rgb(app_server.examples / f"example{k}_query.png")
    texts = {"text": names[:1], "example": None, "both": names[:1], "two": names[:2], "negative": names[:1]}[what]
    supports = None
    if what in ("example", "both", "negative"):
        supports = [_pair(app_server, f"example{k}_class1")]
    if what == "two":
        supports = [[_pair(app_server, f"example{k}_class{j}")] for j in (1, 2)]
    negatives = [_pair(app_server, f"example{k}_negative")] if what == "negative" else None
    expected = library_labels(app_server, {"images": q, "texts": texts, "supports": supports, "negatives": negatives})
    got = labels_of(res)
    assert np.array_equal(got, expected)
    assert got.any()  # a non-empty segmentation
    table = res[3]["data"]
    assert [row[1] for row in table] == (texts or ["class1"])
    shown = res[0].get("value", res[0])  # the overlay comes as an update (it carries the legend's colours)
    overlay, annotations = shown["image"], shown["annotations"]
    assert os.path.isfile(overlay) and [a["label"] for a in annotations] == (texts or ["class1"])


def _error(server, **req) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        client(server).predict(**req, api_name="/segment")
    return str(e.value)


def test_bad_input_over_http_gets_the_cli_message(app_server, tmp_path):
    ex = app_server.examples
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    assert _error(app_server, queries=query(notes), class1="dots").startswith(
        "notes.txt is not an image file PIL can read")
    support = ex / "example1_class1_support.png"
    msg = _error(app_server, queries=query(ex / "example1_query.png"), example1=editor(support))
    assert msg.startswith("class 1 support 1 mask: the mask has no foreground pixels")
    small = np.zeros((10, 12), np.uint8)
    small[2:6, 2:6] = 255
    Image.fromarray(small).save(tmp_path / "small_mask.png")
    from gradio_client import handle_file

    msg = _error(app_server, queries=query(ex / "example1_query.png"), example1=editor(support),
                 mask1=handle_file(str(tmp_path / "small_mask.png")))
    assert "small_mask.png): mask size 12x10 differs from its image 96x96; resize the mask" in msg
    assert str(tmp_path) not in msg and "/tmp/gradio" not in msg  # no server path in the page
    assert _error(app_server, queries=query(ex / "example1_query.png")).startswith("nothing to segment")


def _call_raw(server, data: list) -> str:
    """POST /segment with a hand-made payload (as a hostile client could) and return the event stream."""
    import httpx

    base = server.url + "gradio_api/call/segment"
    event = httpx.post(base, json={"data": data}, timeout=30).json()["event_id"]
    return httpx.get(f"{base}/{event}", timeout=60).text


def test_the_server_reads_only_uploaded_files(app_server, tmp_path):
    secret = tmp_path / "secret.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(secret)
    for path in (str(secret), str(app_server.examples / "example1_query.png"), "/etc/hostname"):
        stream = _call_raw(app_server, [[{"image": {"path": path, "meta": {"_type": "gradio.FileData"}},
                                          "caption": None}], "vlfss-tiny", "auto", None, "dots"] + [None] * 11)
        assert "event: error" in stream and "event: complete" not in stream


def test_upload_above_the_limit_is_refused_with_the_limit(app_server, tmp_path):
    import httpx

    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(UPLOAD_MB * 2**20 + 1))
    with open(big, "rb") as f:
        r = httpx.post(app_server.url + "gradio_api/upload", files={"files": ("big.png", f)}, timeout=30)
    assert r.status_code == 413 and str(UPLOAD_MB * 2**20) in r.text


@pytest.mark.slow
def test_eight_concurrent_clients_get_the_answers_of_one(app_server):
    """8 clients x 5 requests at once: no failure, each answer equal to the same request made alone."""
    kinds = [(1, "text"), (1, "example"), (1, "both"), (2, "two"), (3, "negative")]
    alone = {}
    for k, what in kinds:  # each request alone, one at a time, each from a fresh client (a fresh session)
        res = client(app_server).predict(**example_request(app_server, k, what), api_name="/segment")
        alone[(k, what)] = (labels_of(res), res[3]["data"])
    answers, errors, transport = [], [], []

    def work(c: int) -> None:
        try:
            cl = client(app_server)
            for r in range(5):
                k, what = kinds[(c + r) % len(kinds)]
                for attempt in (0, 1):
                    try:
                        res = cl.predict(**example_request(app_server, k, what), api_name="/segment")
                        break
                    except httpx.RemoteProtocolError as e:
                        # Known and not ours: under load, uvicorn/starlette sometimes sends a result file's body
                        # shorter than its Content-Length ("Too little data for declared Content-Length"); the
                        # request is then asked again, as a browser would reload it. Counted and bounded below.
                        transport.append(e)
                        if attempt:
                            raise
                answers.append(((k, what), labels_of(res), res[3]["data"]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors[:3]
    assert len(transport) <= 2, transport  # a rare transport retry, never a wrong or missing answer
    assert len(answers) == 40
    for key, labels, table in answers:
        assert np.array_equal(labels, alone[key][0]) and table == alone[key][1], key
