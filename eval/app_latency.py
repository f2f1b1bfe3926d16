"""The web app's speed on the embedded model: a request's server-side time against ``Segmenter.segment`` on the
same inputs, and the page's time to interactive in headless Chromium. Optionally saves the docs screenshot.

    PYTHONPATH=. python eval/app_latency.py --repeats 20 [--screenshot docs/app.png]

Server time: ``AppHandlers.segment`` (decode the uploaded query file and the editor's arrays, the session's
prepared request, predict, write the label PNG and COCO JSON), measured in process, interleaved with
``Segmenter.segment`` on the same arrays; medians. Both run with the features already cached (the app's
supports are encoded once per session; ``segment`` finds the same entries in the cache). The ratio also reports a
first click of a new session (its class side prepared from the cache) and the whole HTTP round trip of a
gradio_client request (upload + queue + pre/postprocessing + download), for context.
Time to interactive: from navigation start to the Segment button being clickable, in a fresh browser profile.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median_ms(xs: list[float]) -> float:
    return 1000 * statistics.median(xs)


def server_time(handlers, repeats: int) -> dict:
    from vlfss.app.handlers import ClassForm, SegmentForm

    ex = handlers.workdir / "examples"
    seg = handlers.registry.get("vlfss-tiny")
    q_path = ex / "example2_query.png"
    sup = [(np.asarray(Image.open(ex / f"example2_class{j}_support.png").convert("RGB")),
            np.asarray(Image.open(ex / f"example2_class{j}_mask_layer.png"))) for j in (1, 2)]
    names = ["speckles", "dashes"]
    forms = [ClassForm(n, {"background": np.dstack([img, np.full(img.shape[:2], 255, np.uint8)]), "layers": [lay]})
             for n, (img, lay) in zip(names, sup)]
    form = SegmentForm([str(q_path)], forms)
    query = np.asarray(Image.open(q_path).convert("RGB"))
    supports = [[(img, lay[..., 3] > 0)] for img, lay in sup]
    handlers.segment(form, "warm")  # build, cache features
    seg.segment(query, texts=names, supports=supports)
    app, lib, first, overhead = [], [], [], []
    in_predict: list[float] = []
    predict = seg.predict

    def timed_predict(*a, **k):  # the model's share of an app request, to separate the app's own overhead
        t = time.perf_counter()
        out = predict(*a, **k)
        in_predict.append(time.perf_counter() - t)
        return out

    for r in range(repeats):
        seg.predict = timed_predict
        t = time.perf_counter()
        handlers.segment(form, "repeat")
        app.append(time.perf_counter() - t)
        overhead.append(app[-1] - in_predict[-1])
        del seg.predict
        t = time.perf_counter()
        seg.segment(query, texts=names, supports=supports)
        lib.append(time.perf_counter() - t)
        t = time.perf_counter()
        handlers.segment(form, f"new-{r}")
        first.append(time.perf_counter() - t)
    return {"segment_ms": _median_ms(lib), "app_overhead_ms": _median_ms(overhead),
            "app_repeat_ms": _median_ms(app), "app_first_click_ms": _median_ms(first),
            "ratio_repeat": statistics.median(app) / statistics.median(lib),
            "ratio_first_click": statistics.median(first) / statistics.median(lib)}


def http_time(url: str, handlers, repeats: int) -> float:
    from gradio_client import Client, handle_file

    ex = handlers.workdir / "examples"
    c = Client(url, verbose=False, download_files=tempfile.mkdtemp())
    req = {"queries": [{"image": handle_file(str(ex / "example2_query.png")), "caption": None}]}
    for j, key in ((1, "1"), (2, "2")):
        req[f"class{key}"] = ["speckles", "dashes"][j - 1]
        req[f"example{key}"] = {"background": handle_file(str(ex / f"example2_class{j}_support.png")),
                                "layers": [handle_file(str(ex / f"example2_class{j}_mask_layer.png"))],
                                "composite": None, "id": None}
    c.predict(**req, api_name="/segment")
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        c.predict(**req, api_name="/segment")
        times.append(time.perf_counter() - t)
    return _median_ms(times)


def _browser(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for a in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--window-size=1400,1900", f"--user-data-dir={profile}"]:
        o.add_argument(a)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)


def time_to_interactive(url: str, loads: int) -> list[float]:
    """Seconds from navigation start to a clickable Segment button: a fresh profile per load (nothing cached)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    out = []
    for _ in range(loads):
        d = _browser(tempfile.mkdtemp())
        try:
            d.get(url)
            WebDriverWait(d, 60, poll_frequency=0.05).until(ec.element_to_be_clickable((By.ID, "segment")))
            out.append(d.execute_script("return performance.now()") / 1000)
        finally:
            d.quit()
    return out


def screenshot(url: str, path: str) -> None:
    """Example 2 (two classes) loaded with its button, segmented, the page saved as a PNG."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    d = _browser(tempfile.mkdtemp())
    try:
        d.get(url)
        WebDriverWait(d, 60).until(ec.element_to_be_clickable((By.ID, "example2"))).click()
        WebDriverWait(d, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, "#class1-name textarea, "
                                                            "#class1-name input").get_attribute("value"))
        time.sleep(2)
        d.find_element(By.ID, "segment").click()
        WebDriverWait(d, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#overlay img"))
        time.sleep(2)
        height = d.execute_script("return document.body.scrollHeight")
        d.set_window_size(1400, min(height + 40, 2600))
        d.execute_script("window.scrollTo(0, 0)")
        time.sleep(1)
        d.save_screenshot(path)
    finally:
        d.quit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--loads", type=int, default=5, help="page loads for the time to interactive")
    ap.add_argument("--screenshot", default=None, help="save the page after segmenting example 2 here")
    ap.add_argument("--no-timing", action="store_true", help="only the screenshot")
    args = ap.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from vlfss.app.ui import create_app, launch
    from vlfss.segmenter import SegmenterConfig

    demo, handlers = create_app({"vlfss-tiny": SegmenterConfig()})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch(demo, port=port, prevent_thread_lock=True, quiet=True, allowed_paths=[str(handlers.workdir)])
    url = f"http://127.0.0.1:{port}/"
    try:
        if not args.no_timing:
            report_times(url, handlers, args)
        if args.screenshot:
            screenshot(url, args.screenshot)
            print(f"wrote {args.screenshot}")
    finally:
        demo.close()


def report_times(url: str, handlers, args: argparse.Namespace) -> None:
    """Print the server-time ratios, the HTTP round trip and the time to interactive."""
    st = server_time(handlers, args.repeats)
    print(f"Segmenter.segment           {st['segment_ms']:.1f} ms (median of {args.repeats})")
    print(f"app, repeated click         {st['app_repeat_ms']:.1f} ms  ratio {st['ratio_repeat']:.2f}  (of which "
          f"outside the model's predict: {st['app_overhead_ms']:.1f} ms)")
    print(f"app, first click (session)  {st['app_first_click_ms']:.1f} ms  ratio {st['ratio_first_click']:.2f}")
    print(f"HTTP round trip (client)    {http_time(url, handlers, args.repeats):.1f} ms")
    tti = time_to_interactive(url, args.loads)
    print("time to interactive         " + ", ".join(f"{t:.2f}" for t in tti) +
          f" s (median {statistics.median(tti):.2f} s)")
    print(f"load average                {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
