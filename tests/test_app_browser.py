"""A real browser: headless Chromium (Debian's chromium + chromium-driver, driven by selenium; nothing downloaded)
opens the page, uploads a query and a support image, paints a stroke on the object, types the class name, clicks
Segment, and waits for the overlay; the segmentation that came back is not empty."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from PIL import Image
from test_app_client import app_server  # noqa: F401 - the served app (module-scoped fixture)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1900"]


@pytest.fixture()
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _spy(handlers):
    """Record the last Segment form and result the server handled (the server runs in this process)."""
    seen: dict = {}
    original = handlers.segment

    def segment(form, session="local"):
        seen["form"] = form
        seen["result"] = original(form, session)
        return seen["result"]

    handlers.segment = segment
    return seen, original


def _paint_on_object(driver, editor_id: str, mask: np.ndarray) -> None:
    """Select the brush and drag a short stroke over the mask's centroid: the editor shows the image centred in
    its largest canvas at the zoom its toolbar prints (e.g. '269%')."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f'#{editor_id} button[aria-label="Brush"]').click()
    canvas = max(driver.find_elements(By.CSS_SELECTOR, f"#{editor_id} canvas"),
                 key=lambda c: c.size["width"] * c.size["height"])
    zoom = next(float(e.text.strip()[:-1]) / 100 for e in driver.find_elements(By.CSS_SELECTOR, f"#{editor_id} *")
                if e.text.strip().endswith("%") and len(e.text.strip()) < 6)
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    dx, dy = (xs.mean() - w / 2) * zoom, (ys.mean() - h / 2) * zoom
    (ActionChains(driver).move_to_element(canvas).move_by_offset(int(dx - 6), int(dy)).click_and_hold()
     .move_by_offset(12, 0).release().perform())


@pytest.mark.slow  # about 25 s: a browser start and a page session
def test_paint_type_segment_in_chromium(app_server, browser, tmp_path):  # noqa: F811 - the imported fixture
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    seen, original = _spy(app_server.handlers)
    try:
        ex = app_server.examples
        t0 = time.perf_counter()
        browser.get(app_server.url)
        WebDriverWait(browser, 60).until(ec.element_to_be_clickable((By.ID, "segment")))
        load_s = time.perf_counter() - t0
        browser.find_element(By.CSS_SELECTOR, "#queries input[type=file]").send_keys(str(ex / "example1_query.png"))
        browser.find_element(By.CSS_SELECTOR, "#editor1 input[type=file]").send_keys(
            str(ex / "example1_class1_support.png"))
        WebDriverWait(browser, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, '#editor1 button[aria-label="Brush"]'))
        time.sleep(1.0)  # the editor sizes its canvas to the image
        mask = np.asarray(Image.open(ex / "example1_class1_mask_layer.png"))[..., 3] > 0
        _paint_on_object(browser, "editor1", mask)
        browser.find_element(By.CSS_SELECTOR, "#class1-name textarea, #class1-name input").send_keys("camouflage")
        browser.find_element(By.ID, "segment").click()
        WebDriverWait(browser, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#overlay img"))
        WebDriverWait(browser, 30).until(lambda d: "camouflage" in d.find_element(By.ID, "table").text)
        browser.save_screenshot(str(tmp_path / "app.png"))
    finally:
        app_server.handlers.segment = original
    form, result = seen["form"], seen["result"]
    layers = form.classes[0].editor["layers"]
    painted = np.zeros(mask.shape, bool)
    for layer in layers:
        painted |= np.asarray(layer)[..., 3] > 0
    assert (painted & mask).any()  # the stroke reached the server as a layer, on the object
    assert form.classes[0].name == "camouflage" and len(form.queries) == 1
    assert result.outputs[0].masks[0].any()  # a non-empty segmentation came back
    assert (tmp_path / "app.png").stat().st_size > 10_000
    print(f"page interactive after {load_s:.2f} s")
