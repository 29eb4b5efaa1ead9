"""fcnkit serve as a separate process, attacked the way a careless or hostile client would: a 40-megapixel upload
(peak memory), formats with risky decoders, more clients than places (503 before the body is read), a slow
client, an endless chunked upload (cut off, nothing on disk), foreign Host and Origin headers, and what the
server tells about itself. Each case is answered with its status code and the server goes on serving."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

import fcnkit

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fcnkit.apps.serve import Cancelled, ServeLimits, Service, serve_process  # noqa: E402
from fcnkit.config import InferenceConfig  # noqa: E402
from fcnkit.inference.tta import infer_labels, infer_logits  # noqa: E402
from test_serve import _photo  # noqa: E402  (smooth colour fields, not noise)

GIB = 2**30


def _vm(pid: int, key: str) -> int:
    """A /proc/PID/status memory figure in bytes (VmRSS: now, VmHWM: the peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A 21-class model (timm's tiny test_resnet under an FCN-32s head) served with the default limits, except a
    1 MB upload limit, in a process whose temporary folder is watched."""
    root = tmp_path_factory.mktemp("attack")
    torch.manual_seed(0)
    model = fcnkit.create_model("fcn32s_timm", num_classes=21, backbone="test_resnet", upsample="bilinear")
    ckpt = fcnkit.save_checkpoint(root / "voc21.pth", model)
    tmp = root / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "2"}
    with (
        serve_process(str(ckpt), "--backend", "torch", "--max-upload-mb", "1", cwd=root, env=env) as url,
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        yield url, client, tmp, ckpt


def _post(client, data: bytes, name: str = "x.png", kind: str = "image/png", **kw):
    return client.post("/api/predict", files={"image": (name, data, kind)}, **kw)


@pytest.mark.slow
def test_a_40_megapixel_upload_is_served_in_bounded_memory(server):
    url, client, _, _ = server
    warm = _post(client, _encode(Image.fromarray(_photo(300, 400)), "PNG"))
    assert warm.status_code == 200
    before = _vm(url.pid, "VmRSS")
    big = _encode(Image.new("RGB", (6300, 6300), (90, 140, 60)), "PNG")
    assert len(big) < 200_000  # a small file declaring 39.7 million pixels
    start = time.perf_counter()
    r = _post(client, big, params={"format": "json"})
    seconds = time.perf_counter() - start
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (6300, 6300) and sum(body["counts"]) == 6300 * 6300
    grown = _vm(url.pid, "VmHWM") - before
    print(f"40-megapixel upload: {seconds:.1f} s, peak RSS {before / GIB:.2f} GiB + {grown / GIB:.2f} GiB")
    assert grown < 1.5 * GIB
    assert client.get("/api/health").json()["ok"]


def test_an_image_too_large_for_the_memory_budget_is_refused_from_its_header(server):
    _, client, _, _ = server
    # 40000 x 1000: 40 megapixels, but a band of logits 40000 pixels wide for 21 classes is over 2 GB
    wide = _encode(Image.new("RGB", (40000, 1000)), "PNG")
    start = time.perf_counter()
    r = _post(client, wide)
    assert r.status_code == 413 and "max-memory-mb" in r.json()["error"], r.text
    assert time.perf_counter() - start < 5  # refused on the header: nothing was decoded or segmented


@pytest.mark.parametrize(
    ("fmt", "status"),
    [("TGA", 415), ("PPM", 415), ("ICO", 415), ("TIFF", 200), ("BMP", 200), ("WEBP", 200), ("GIF", 200), ("JPEG", 200)],
)
def test_only_web_image_formats_are_decoded(server, fmt, status):
    _, client, _, _ = server
    data = _encode(Image.fromarray(_photo(16, 16)), fmt)
    r = _post(client, data, name=f"x.{fmt.lower()}", kind="application/octet-stream")
    assert r.status_code == status, r.text
    if status == 415:
        assert "not an image in an accepted format" in r.json()["error"]


def _raw(url: str, head: str) -> socket.socket:
    """A connection that sent ``head`` (request line and headers) and nothing else."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall(head.encode())
    return s


def _answer(s: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    status = int(data.split(b" ", 2)[1])
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body


def _waiting_upload(url: str, size: int = 500_000) -> socket.socket:
    port = url.rsplit(":", 1)[1]
    return _raw(
        url,
        f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {size}\r\n\r\n",
    )


def test_clients_beyond_concurrency_and_queue_get_503_before_their_body_is_read(server):
    url, client, _, _ = server
    limits = ServeLimits()  # the defaults the server runs with
    held = [_waiting_upload(url) for _ in range(limits.concurrency + limits.queue)]  # bodies never sent
    try:
        time.sleep(0.5)
        start = time.perf_counter()
        extra = _waiting_upload(url, size=10_000_000)  # announces 10 MB, sends none of it
        status, body = _answer(extra)
        assert status == 503 and "server busy" in json.loads(body)["error"]
        assert time.perf_counter() - start < 5
        extra.close()
        # the page and the API's other endpoints are still answered
        assert client.get("/api/health").status_code == 200
    finally:
        for s in held:
            s.close()
    deadline = time.time() + 30
    while time.time() < deadline:  # the places come back once the server sees the connections closed
        r = _post(client, _encode(Image.fromarray(_photo(20, 30)), "PNG"))
        if r.status_code == 200:
            break
        time.sleep(0.2)
    assert r.status_code == 200


@pytest.mark.slow
def test_24_simultaneous_uploads_with_the_default_limits(server):
    _, client, _, _ = server
    photo = _encode(Image.fromarray(_photo(1500, 1500)), "JPEG", quality=80)
    assert len(photo) < 1_000_000
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda _: _post(client, photo, kind="image/jpeg"), range(24)))
    codes = sorted(r.status_code for r in answers)
    print("24 simultaneous 1500x1500 uploads:", {c: codes.count(c) for c in set(codes)})
    assert set(codes) <= {200, 503} and codes.count(200) >= ServeLimits().concurrency + 1
    for r in answers:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1"
        else:
            assert Image.open(io.BytesIO(r.content)).size == (1500, 1500)


def test_a_slow_client_does_not_hold_up_the_others(server):
    url, client, _, _ = server
    slow = _waiting_upload(url, size=300_000)
    slow.sendall(b"\x89PNG")  # then nothing more for now
    try:
        start = time.perf_counter()
        r = _post(client, _encode(Image.fromarray(_photo(60, 80)), "PNG"))
        assert r.status_code == 200 and time.perf_counter() - start < 10
    finally:
        slow.close()


def test_an_endless_chunked_upload_is_cut_off_and_nothing_lands_on_disk(server):
    url, client, tmp, _ = server
    port = url.rsplit(":", 1)[1]
    s = _raw(
        url,
        f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; boundary=xx\r\n"
        "Transfer-Encoding: chunked\r\n\r\n",
    )
    chunk = b"a" * 65536
    for _ in range(24):  # 1.5 MB against a 1 MB limit, no end announced: the server must stop reading by itself
        s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
    status, body = _answer(s)
    s.close()
    assert status == 413 and "over the limit" in json.loads(body)["error"]
    assert list(tmp.iterdir()) == []
    assert client.get("/api/health").status_code == 200


def test_foreign_hosts_and_cross_site_posts_are_refused(server):
    url, client, _, _ = server
    port = url.rsplit(":", 1)[1]
    photo = _encode(Image.fromarray(_photo(20, 30)), "PNG")
    rebinding = client.get("/api/info", headers={"host": f"attacker.example:{port}"})
    assert rebinding.status_code == 400 and "not served here" in rebinding.json()["error"]
    cross = _post(client, photo, headers={"origin": "http://attacker.example"})
    assert cross.status_code == 403 and "cross-origin" in cross.json()["error"]
    site = _post(client, photo, headers={"sec-fetch-site": "cross-site"})
    assert site.status_code == 403
    # what the page itself sends: its own origin, same-origin
    own = _post(client, photo, headers={"origin": f"http://127.0.0.1:{port}", "sec-fetch-site": "same-origin"})
    assert own.status_code == 200
    assert client.get("/api/info", headers={"host": f"localhost:{port}"}).status_code == 200


def test_the_server_shows_no_paths_and_loads_no_outside_scripts_and_every_error_is_json(server):
    _, client, _, ckpt = server
    info = client.get("/api/info")
    assert info.status_code == 200 and str(ckpt.parent) not in info.text and "/tmp" not in info.text
    for path in ("/api/docs", "/docs", "/no/such/page"):
        r = client.get(path)
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
    page = client.get("/").text
    assert not re.findall(r"<(?:script|link)[^>]+(?:src|href)=\"(?:https?:)?//", page)
    assert client.get("/api/openapi.json").json()["info"]["title"] == "fcnkit"


# --- in-process: banded sliding windows and dropped work --------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        InferenceConfig(mode="slide", crop_size=[32, 32], stride=[20, 20]),
        InferenceConfig(mode="slide", crop_size=[32, 48], stride=[21, 30], flip=True),
        InferenceConfig(mode="slide", crop_size=[64, 64], stride=[40, 40], pad=True),
        InferenceConfig(mode="slide", crop_size=[40, 40], stride=[40, 40]),
        InferenceConfig(mode="slide", crop_size=[96, 128], stride=[64, 64], pad=True),
        InferenceConfig(mode="slide", crop_size=[96, 128], stride=[64, 64], pad=True, flip=True),
    ],
)
def test_banded_sliding_windows_give_the_labels_of_the_whole_logits(cfg):
    torch.manual_seed(1)
    model = fcnkit.create_model("fcn32s_timm", num_classes=5, backbone="test_resnet", upsample="bilinear").eval()
    rgb = torch.from_numpy(_photo(77, 101, seed=4)).permute(2, 0, 1)[None].contiguous()
    with torch.inference_mode():
        want = infer_logits(model, model.preprocessing(rgb), cfg, 5).argmax(1)
        got = infer_labels(model, rgb, cfg, 5)
    assert got.dtype == torch.uint8 and torch.equal(got.long(), want)


def test_work_is_dropped_between_windows_when_asked():
    torch.manual_seed(2)
    model = fcnkit.create_model("fcn32s_timm", num_classes=3, backbone="test_resnet", upsample="bilinear")
    predictor = fcnkit.Predictor(model, tile=64, backend="torch")
    service = Service(predictor, ServeLimits())
    calls = []

    def stop():
        calls.append(1)
        if len(calls) > 3:
            raise Cancelled("the client went away")

    data = _encode(Image.fromarray(_photo(300, 300)), "PNG")
    with pytest.raises(Cancelled):
        service.segment(data, stop=stop)
    assert len(calls) == 4  # once before decoding, then before each window: the third window never ran
    assert service.segment(data).size == (300, 300) and service.served == 1


def test_a_connection_that_does_not_finish_its_headers_in_time_is_closed(monkeypatch):
    """fcnkit's h11 protocol gives a new connection HEADER_TIMEOUT seconds (10 in use, 0.5 here) for its request
    headers: one that sends half a request line, or trickles a byte at a time, is closed at the deadline; one that
    sends its headers in time is served and kept alive past it."""
    import asyncio
    import threading

    import uvicorn

    from fcnkit.apps import serve as served

    monkeypatch.setattr(served, "HEADER_TIMEOUT", 0.5)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, http=served._http_protocol(uvicorn), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        deadline = time.perf_counter() + 10
        while not server.started and time.perf_counter() < deadline:
            time.sleep(0.02)
        assert server.started

        def closed_after(s: socket.socket, trickle: bytes = b"") -> float:
            start = time.perf_counter()
            s.settimeout(0.1)
            for byte in trickle:  # a byte every 0.1 s, past the deadline
                try:
                    if s.recv(1) == b"":
                        return time.perf_counter() - start
                except TimeoutError:
                    pass
                try:
                    s.sendall(bytes([byte]))
                except OSError:
                    return time.perf_counter() - start
            s.settimeout(5)
            assert s.recv(1) == b""  # closed by the server, nothing answered
            return time.perf_counter() - start

        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(b"GET / HTTP/1.1\r\nHo")
        assert 0.3 < closed_after(half) < 3
        slow = socket.create_connection(("127.0.0.1", port))
        assert 0.3 < closed_after(slow, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1234567890\r\n\r\n") < 3

        good = socket.create_connection(("127.0.0.1", port), timeout=5)
        request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        for _ in range(2):  # the second request goes on the same connection, after the deadline has passed
            good.sendall(request)
            assert _answer(good) == (200, b"ok")
            time.sleep(0.8)
        good.close()
    finally:
        server.should_exit = True
        thread.join(10)
