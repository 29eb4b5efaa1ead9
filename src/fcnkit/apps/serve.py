"""``fcnkit serve``: a model behind a local web server, with a page to try it on your own pictures.

* ``GET /``: the page (one HTML file, no outside scripts): drop or pick images, see each overlay with a legend,
  an opacity slider, classes switched on and off, each class's share of the pixels and the time taken, and
  download the label PNG and the overlay.
* ``POST /api/predict``: the image as multipart field ``image`` (or as the raw request body with an ``image/*``
  content type). Answers the label map as a palette PNG of the image's size (values = class indices, the same
  file ``fcnkit predict`` writes); ``?format=json``: classes, palette, per-class pixel counts, size and
  milliseconds, and with ``&include=label`` the label PNG too (base64).
* ``GET /api/info``: model, classes, palette, backend, device, limits. ``GET /api/health``: ``{"ok": true}``.

The model is loaded once into a :class:`~fcnkit.inference.Predictor` (the fast exact path), images larger than
the tile size are segmented in sliding windows, at most ``concurrency`` images are segmented at once and at most
``queue`` more wait; a request beyond that is answered 503 at once rather than piling up. Every bad upload (no
image, an empty or corrupt or truncated file, too many bytes, too many pixels, a decompression bomb) gets a 4xx
JSON answer ``{"error": "..."}`` naming the problem, and the server goes on serving.

Stack: FastAPI on uvicorn (the ``serve`` extra). A plain ASGI app is a few hundred kilobytes of wheels, starts
in a second, serves a JSON/PNG API that scripts and ``curl`` can call as easily as the page, and is tested here
in a real browser; Gradio would have brought a much larger install and its own front end for one page.
"""

# No "from __future__ import annotations": FastAPI reads the endpoints' annotations as live objects.
import base64
import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import numpy as np
from PIL import UnidentifiedImageError

from ..data import decode_image, voc_palette
from ..errors import DataError, FcnkitError, ImageTooLargeError, MissingDependencyError
from ..inference import Predictor, describe_backend, describe_inference
from ..visualize import label_to_palette_png

__all__ = ["Segmentation", "ServeLimits", "Service", "create_app", "serve"]


@dataclass(frozen=True)
class ServeLimits:
    """What one server accepts. ``max_pixels`` is checked on the image header, before decoding."""

    max_bytes: int = 32 * 2**20
    max_pixels: int = 40_000_000
    concurrency: int = 2
    queue: int = 64


@dataclass
class Segmentation:
    label: np.ndarray  # (H, W) uint8 class indices
    counts: list[int]
    decode_ms: float
    model_ms: float

    @property
    def size(self) -> tuple[int, int]:
        return int(self.label.shape[0]), int(self.label.shape[1])


class BusyError(FcnkitError, RuntimeError):
    """Every segmentation slot and queue place is taken."""


class Service:
    """The model and the limits, without the web framework: bytes in, label map out (thread-safe)."""

    def __init__(self, predictor: Predictor, limits: ServeLimits | None = None, name: str | None = None) -> None:
        self.predictor = predictor
        self.limits = limits or ServeLimits()
        self.palette = [
            tuple(int(v) for v in c) for c in (predictor.model.palette or voc_palette(predictor.num_classes))
        ]
        self.name = name or _model_name(predictor.model)
        self._slots = threading.BoundedSemaphore(max(1, self.limits.concurrency))
        self._lock = threading.Lock()
        self._admitted = 0
        self.served = 0
        self.rejected = 0

    def info(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "classes": list(self.predictor.classes),
            "palette": [list(c) for c in self.palette],
            "backend": describe_backend(self.predictor.model),
            "weights": self.predictor.card.describe_weights(),
            "passes": describe_inference(self.predictor.inference),
            "device": str(self.predictor.device),
            "tile": _tile(self.predictor),
            "limits": asdict(self.limits),
        }

    def segment(self, data: bytes, name: str = "the upload") -> Segmentation:
        """Decode and segment one image file's bytes. Raises DataError / ImageTooLargeError / BusyError."""
        with self._lock:
            if self._admitted >= max(1, self.limits.concurrency) + self.limits.queue:
                self.rejected += 1
                raise BusyError(
                    f"server busy: {self._admitted} images are being segmented or waiting (limit "
                    f"{self.limits.concurrency} + queue {self.limits.queue}); try again shortly"
                )
            self._admitted += 1
        try:
            if len(data) > self.limits.max_bytes:
                raise ImageTooLargeError(f"{name} has {len(data):,} bytes, over the limit of {self.limits.max_bytes:,}")
            start = time.perf_counter()
            rgb = decode_image(data, name, max_pixels=self.limits.max_pixels)
            decoded = time.perf_counter()
            with self._slots:
                begun = time.perf_counter()
                label = self.predictor.predict_tensor(rgb)[0].label.numpy()
                model_ms = (time.perf_counter() - begun) * 1e3
            counts = np.bincount(label.ravel(), minlength=self.predictor.num_classes).tolist()
            self.served += 1
            return Segmentation(label.astype(np.uint8), counts, (decoded - start) * 1e3, model_ms)
        finally:
            with self._lock:
                self._admitted -= 1

    def label_png(self, seg: Segmentation) -> bytes:
        buf = io.BytesIO()
        label_to_palette_png(seg.label, self.palette).save(buf, format="PNG")
        return buf.getvalue()

    def summary(self, seg: Segmentation, label_png: bytes | None = None) -> dict[str, Any]:
        h, w = seg.size
        total = max(1, h * w)
        out: dict[str, Any] = {
            "width": w,
            "height": h,
            "classes": list(self.predictor.classes),
            "palette": [list(c) for c in self.palette],
            "counts": seg.counts,
            "shares": [c / total for c in seg.counts],
            "ms": round(seg.decode_ms + seg.model_ms, 2),
            "model_ms": round(seg.model_ms, 2),
            "decode_ms": round(seg.decode_ms, 2),
        }
        if label_png is not None:
            out["label_png"] = base64.b64encode(label_png).decode("ascii")
        return out


def _model_name(model: Any) -> str:
    arch = getattr(model, "arch", None)
    return str(arch["name"]) if isinstance(arch, dict) and arch.get("name") else type(model).__name__


def _tile(predictor: Predictor) -> int | None:
    inference = predictor.inference
    return int(inference.crop_size[0]) if inference.mode == "slide" and inference.crop_size else None


def page_html() -> str:
    return resources.files("fcnkit.apps").joinpath("static/serve.html").read_text(encoding="utf-8")


def _require_stack() -> tuple[Any, Any]:
    try:
        import fastapi
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError(
            f"fcnkit serve needs FastAPI and uvicorn ({exc.name} is missing): pip install 'fcnkit[serve]'"
        ) from exc
    try:
        import python_multipart  # noqa: F401  (Starlette reads forms with it)
    except ImportError as exc:
        raise MissingDependencyError(
            "fcnkit serve needs python-multipart to read uploads: pip install 'fcnkit[serve]'"
        ) from exc
    return fastapi, uvicorn


def create_app(service: Service) -> Any:
    """The FastAPI application serving ``service``."""
    fastapi, _ = _require_stack()
    from fastapi import Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = fastapi.FastAPI(title="fcnkit", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    limits = service.limits
    page = page_html()

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return error(422, "; ".join(parts) or "invalid request")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return service.info()

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "served": service.served, "rejected": service.rejected}

    async def read_upload(request: Request) -> tuple[bytes, str] | JSONResponse:
        declared = request.headers.get("content-length")
        # a form adds a few hundred bytes of headers around the file
        if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes + 64 * 1024:
            return error(413, f"the request has {int(declared):,} bytes, over the limit of {limits.max_bytes:,}")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=8)
            except Exception as exc:  # the multipart parser's errors carry no common type
                return error(400, f"cannot read the form: {exc}")
            field = form.get("image")
            if field is None:
                return error(400, f"no 'image' field in the form (fields sent: {sorted(form.keys()) or 'none'})")
            if not isinstance(field, UploadFile):
                return error(400, "the 'image' field is text, not a file: send the file itself")
            data = await field.read(limits.max_bytes + 1)
            return data, f"upload {field.filename or 'image'!r}"
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_bytes:
                return error(413, f"the request body is over the limit of {limits.max_bytes:,} bytes")
        if not body:
            return error(400, "empty request: send the image as multipart form field 'image' or as the body")
        if kind and not kind.startswith("image/") and kind != "application/octet-stream":
            return error(415, f"content type {kind!r}: send multipart/form-data with an 'image' field, or image/*")
        return bytes(body), "the request body"

    @app.post("/api/predict")
    async def predict(request: Request, format: str = "png", include: str = "") -> Response:
        if format not in ("png", "json"):
            return error(400, f"format must be 'png' or 'json', got {format!r}")
        got = await read_upload(request)
        if isinstance(got, JSONResponse):
            return got
        data, name = got
        try:
            seg = await run_in_threadpool(service.segment, data, name)
        except BusyError as exc:
            return error(503, str(exc), headers={"Retry-After": "1"})
        except ImageTooLargeError as exc:
            return error(413, str(exc))
        except DataError as exc:  # not an image at all: 415; empty, corrupt or truncated: 400
            return error(415 if isinstance(exc.__cause__, UnidentifiedImageError) else 400, str(exc))
        png = await run_in_threadpool(service.label_png, seg)
        timing = {"X-Inference-Ms": f"{seg.model_ms:.2f}", "X-Decode-Ms": f"{seg.decode_ms:.2f}"}
        if format == "json":
            wanted = {part.strip() for part in include.split(",") if part.strip()}
            return JSONResponse(service.summary(seg, png if "label" in wanted else None), headers=timing)
        return Response(png, media_type="image/png", headers=timing)

    return app


def serve(service: Service, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``service`` until interrupted (Ctrl-C)."""
    _, uvicorn = _require_stack()
    app = create_app(service)
    print(f"model: {service.name}, {describe_backend(service.predictor.model)}", flush=True)
    print(f"serving on http://{host}:{port}/  (API: /api/predict, /api/info; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug")


@contextlib.contextmanager
def serve_process(
    model: str, *options: str, cwd: str | os.PathLike[str] | None = None, timeout: float = 120.0
) -> Iterator[str]:
    """``fcnkit serve MODEL OPTIONS`` as a separate process on a free port of 127.0.0.1, for scripts and tests:
    yields its base URL once ``/api/health`` answers, and stops the process on leaving. Raises ``RuntimeError``
    with the process's output when it exits or does not answer within ``timeout`` seconds."""
    import httpx  # a dependency of the serve extra's test client and of the scripts that use this

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "fcnkit", "serve", model, *options, "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(url + "/api/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"fcnkit serve did not start: {proc.communicate()[0]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(60)
