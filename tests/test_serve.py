"""fcnkit serve: the HTTP API against fcnkit predict's files, bad uploads, the queue limit, and the page in a real
headless Chromium (Debian's chromium + chromium-driver; skipped when absent unless FCNKIT_REQUIRE_BROWSER=1,
which CI sets)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fcnkit

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from fcnkit.apps.serve import BusyError, ServeLimits, Service, create_app  # noqa: E402
from fcnkit.cli import main  # noqa: E402
from fcnkit.config import InferenceConfig  # noqa: E402
from test_optimize import _randomise_bn  # noqa: E402

CLASSES = ["sky", "road", "car"]
PALETTE = [(70, 130, 180), (128, 64, 128), (0, 0, 142)]
REPO = Path(__file__).resolve().parents[1]


def _checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = _randomise_bn(fcnkit.create_model("fcn_resnet18_d8", num_classes=3))
    model.classes, model.palette = CLASSES, PALETTE
    return fcnkit.save_checkpoint(path, model)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour fields (not noise), so that a model's answer varies across the image."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    planes = [np.sin(6 * xx * g.uniform(0.5, 2) + 4 * yy * g.uniform(0.5, 2) + g.uniform(0, 6)) for _ in range(3)]
    return ((np.stack(planes, -1) + 1) * 127.5).astype(np.uint8)


def _bomb_png() -> bytes:
    """A valid 1x1 PNG whose header claims 40000 x 40000 pixels (IHDR rewritten, CRC recomputed)."""
    data = bytearray(_png(np.zeros((1, 1, 3), np.uint8)))
    ihdr = 8  # after the signature: length (4), b"IHDR" (4), width (4), height (4), ...
    data[ihdr + 8 : ihdr + 16] = (40000).to_bytes(4, "big") * 2
    data[ihdr + 21 : ihdr + 25] = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21])).to_bytes(4, "big")
    return bytes(data)


class _ThreadServer:
    """uvicorn in a background thread on a free port of 127.0.0.1."""

    def __init__(self, app) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        assert self.server.started

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


LIMITS = ServeLimits(max_bytes=1_000_000, max_pixels=200_000, concurrency=2, queue=16)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    ckpt = _checkpoint(root / "model.pth")
    service = Service(fcnkit.Predictor(ckpt, backend="torch"), LIMITS)
    server = _ThreadServer(create_app(service))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield ckpt, service, client
    server.stop()


def _post(client, data: bytes, name: str = "x.png", **params):
    return client.post("/api/predict", params=params, files={"image": (name, data, "image/png")})


def test_info_names_model_classes_palette_and_backend(served):
    _, _, client = served
    info = client.get("/api/info").json()
    assert info["model"] == "fcn_resnet18_d8" and info["classes"] == CLASSES
    assert info["palette"] == [list(c) for c in PALETTE]
    assert info["backend"].startswith("torch") and info["device"] == "cpu" and info["tile"] is None
    assert info["limits"]["max_pixels"] == 200_000
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text and "api/predict" in page.text


def test_png_answer_is_the_label_png_of_fcnkit_predict(served, tmp_path):
    ckpt, _, client = served
    image = tmp_path / "street.png"
    Image.fromarray(_photo(45, 61)).save(image)
    assert main(["predict", str(ckpt), str(image), "--out", str(tmp_path / "out"), "--backend", "torch"]) == 0
    expected = Image.open(tmp_path / "out" / "street.png")
    r = _post(client, image.read_bytes())
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    got = Image.open(io.BytesIO(r.content))
    assert got.mode == "P" and got.size == (61, 45)
    assert np.array_equal(np.asarray(got), np.asarray(expected))
    assert got.getpalette()[:9] == [v for c in PALETTE for v in c]
    assert len(np.unique(np.asarray(got))) >= 2  # the comparison says something
    # the raw body works the same
    raw = client.post("/api/predict", content=image.read_bytes(), headers={"content-type": "image/png"})
    assert raw.status_code == 200 and raw.content == r.content


def test_json_answer_counts_each_class(served):
    _, _, client = served
    photo = _photo(50, 70, seed=1)
    r = _post(client, _png(photo), format="json", include="label")
    assert r.status_code == 200
    body = r.json()
    label = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["label_png"]))))
    assert (body["width"], body["height"]) == (70, 50) and label.shape == (50, 70)
    assert body["counts"] == np.bincount(label.ravel(), minlength=3).tolist()
    assert sum(body["counts"]) == 50 * 70 and abs(sum(body["shares"]) - 1) < 1e-9
    assert body["classes"] == CLASSES and body["model_ms"] > 0 and body["ms"] >= body["model_ms"]
    png = _post(client, _png(photo))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))), label)
    assert "label_png" not in _post(client, _png(photo), format="json").json()


def _truncated() -> bytes:
    data = _png(_photo(60, 60))
    return data[: len(data) // 2]


BAD = {
    "not an image": (lambda c: _post(c, b"this is a text file, not a picture", "notes.png"), 415, "cannot read"),
    "truncated": (lambda c: _post(c, _truncated()), 400, "truncated"),
    "empty file": (lambda c: _post(c, b""), 400, "empty"),
    "empty body": (lambda c: c.post("/api/predict"), 400, "empty request"),
    "no image field": (lambda c: c.post("/api/predict", files={"photo": ("a.png", b"xx")}), 400, "no 'image' field"),
    "text field": (lambda c: c.post("/api/predict", data={"image": "hi"}, files={"x": ("a", b"b")}), 400, "not a file"),
    "a form, not multipart": (lambda c: c.post("/api/predict", data={"image": "hello"}), 415, "multipart/form-data"),
    "too many pixels": (lambda c: _post(c, _png(_photo(400, 600))), 413, "over the limit of 200,000"),
    "decompression bomb": (lambda c: _post(c, _bomb_png()), 413, "1600000000 pixels"),
    "too many bytes": (lambda c: _post(c, os.urandom(1_200_000)), 413, "bytes, over the limit"),
    "wrong format": (lambda c: _post(c, _png(_photo(8, 8)), format="tiff"), 400, "format must be"),
    "wrong type": (lambda c: c.post("/api/predict", content=b"{}", headers={"content-type": "text/plain"}), 415, ""),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_uploads_get_a_named_4xx_and_the_server_keeps_serving(served, case):
    _, _, client = served
    send, status, words = BAD[case]
    r = send(client)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json") and words in r.json()["error"]
    ok = _post(client, _png(_photo(20, 30)))
    assert ok.status_code == 200 and Image.open(io.BytesIO(ok.content)).size == (30, 20)


def test_concurrent_requests_are_each_answered_with_their_own_image(served):
    ckpt, _, client = served
    predictor = fcnkit.Predictor(ckpt, backend="torch")
    sizes = [(24 + 7 * i, 40 + 5 * i) for i in range(12)]
    photos = [_photo(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    expected = [predictor.predict(p).label.numpy() for p in photos]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda p: _post(client, _png(p)), photos))
    for r, want in zip(answers, expected, strict=True):
        assert r.status_code == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), want)


def test_requests_beyond_the_queue_are_refused_at_once():
    """concurrency 1 + queue 1: while two requests are inside (one running, one waiting), a third is refused."""
    release = threading.Event()
    entered = threading.Event()

    class SlowPredictor:
        num_classes, classes, device, inference = 2, ["a", "b"], "cpu", InferenceConfig()
        model = type("M", (), {"palette": [(0, 0, 0), (255, 255, 255)], "arch": {"name": "slow"}})()

        def memory_bytes(self, height, width):
            return 0

        def predict_labels(self, rgb, stop=None):
            entered.set()
            release.wait(10)
            return torch.zeros(1, *rgb.shape[-2:], dtype=torch.uint8)

    service = Service(SlowPredictor(), ServeLimits(concurrency=1, queue=1))
    data = _png(_photo(10, 12))
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(service.segment, data)
        entered.wait(10)
        second = pool.submit(service.segment, data)
        time.sleep(0.2)  # the second is waiting for the slot
        with pytest.raises(BusyError, match="server busy"):
            service.segment(data)
        release.set()
        assert first.result().counts == [120, 0] and second.result().size == (10, 12)
    assert service.served == 2 and service.rejected == 1
    assert service.segment(data).counts == [120, 0]  # the slots came back


# --- the page in a real browser -----------------------------------------------------------------------------


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    if not (chromium and driver and webdriver):
        if os.environ.get("FCNKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(
                f"the browser test is required here but chromium={chromium} chromedriver={driver} selenium={webdriver}"
            )
        pytest.skip("needs chromium, chromium-driver (apt) and selenium")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not try to download a driver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1100,1000",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=DriverService(executable_path=driver), options=options)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_page_in_headless_chromium_shows_the_overlay_and_legend(tmp_path):
    """`fcnkit serve` as a process; the demo's checkpoint and test image when the demo has run (CI runs it
    first), else a random model. Upload through the file input, wait for the overlay, check its pixels
    against the blend computed here, toggle a class off, and keep a screenshot."""
    browser = _browser()
    demo = REPO / "runs" / "demo"
    if (demo / "train" / "best.pth").is_file() and (demo / "data" / "images" / "test" / "test_0000.png").is_file():
        ckpt, image = demo / "train" / "best.pth", demo / "data" / "images" / "test" / "test_0000.png"
        other = demo / "data" / "images" / "test" / "test_0001.png"
    else:
        ckpt, image, other = _checkpoint(tmp_path / "model.pth"), tmp_path / "street.png", tmp_path / "road.png"
        Image.fromarray(_photo(180, 240)).save(image)
        Image.fromarray(_photo(150, 200, seed=3)).save(other)
    port = _free_port()
    env = {**os.environ, "FCNKIT_BACKEND": "torch"}
    server = subprocess.Popen(
        [sys.executable, "-m", "fcnkit", "serve", str(ckpt), "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                info = httpx.get(url + "/api/info", timeout=2).json()
                break
            except httpx.HTTPError:
                assert server.poll() is None, server.stdout.read()
                assert time.time() < deadline, "the server did not come up"
                time.sleep(0.3)
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda b: info["model"] in b.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "files").send_keys(f"{image}\n{other}")  # two files at once
        WebDriverWait(browser, 60).until(
            lambda b: len(b.find_elements(By.CSS_SELECTOR, ".card[data-status='done']")) == 2
        )
        (card,) = [
            c
            for c in browser.find_elements(By.CSS_SELECTOR, ".card")
            if c.find_element(By.TAG_NAME, "h2").text == image.name
        ]
        canvas = card.find_element(By.CSS_SELECTOR, "canvas.overlay")
        photo = np.asarray(Image.open(image).convert("RGB"))
        h, w = photo.shape[:2]
        assert (int(canvas.get_attribute("width")), int(canvas.get_attribute("height"))) == (w, h)
        items = card.find_elements(By.CSS_SELECTOR, "li.legend-item")
        assert [i.find_element(By.CSS_SELECTOR, ".name").text for i in items] == info["classes"]

        # the overlay's pixels = the blend of the photo and the colours of the server's own label PNG
        label = np.asarray(
            Image.open(io.BytesIO(httpx.post(url + "/api/predict", files={"image": image.read_bytes()}).content))
        )
        read = "const c=arguments[0]; return Array.from(c.getContext('2d').getImageData(0,0,c.width,c.height).data);"
        shown = np.array(browser.execute_script(read, canvas), np.float64).reshape(h, w, 4)[..., :3]
        colours = np.array(info["palette"], np.float64)[label]
        blend = 0.45 * photo + 0.55 * colours
        assert np.abs(shown - blend).max() <= 1.0
        assert len(np.unique(label)) >= 2

        # switch the most frequent class off: its pixels show the photo itself
        top = int(np.bincount(label.ravel()).argmax())
        items[top].find_element(By.CSS_SELECTOR, "input").click()
        shown = np.array(browser.execute_script(read, canvas), np.float64).reshape(h, w, 4)[..., :3]
        off = label == top
        assert np.abs(shown[off] - photo[off]).max() <= 1.0 and np.abs(shown[~off] - blend[~off]).max() <= 1.0
        items[top].find_element(By.CSS_SELECTOR, "input").click()

        shot = tmp_path / "serve.png"
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(shot))
        pixels = np.asarray(Image.open(shot).convert("RGB"))
        assert pixels.shape[1] >= 1000 and pixels.shape[0] >= 700  # the window less its frame
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # photo + overlay + text, not a blank page
        if os.environ.get("FCNKIT_SCREENSHOT_DIR"):
            shutil.copy(shot, Path(os.environ["FCNKIT_SCREENSHOT_DIR"]) / "serve.png")
        assert server.poll() is None
        assert json.loads(httpx.get(url + "/api/health").text)["served"] >= 3
    finally:
        browser.quit()
        server.terminate()
        server.wait(20)
