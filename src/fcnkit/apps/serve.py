"""``fcnkit serve``: a model behind a local web server, with a page to try it on your own pictures.

* ``GET /``: the page (one HTML file, no outside scripts): drop or pick images, see each overlay with a legend,
  an opacity slider, classes switched on and off, each class's share of the pixels and the time taken, and
  download the label PNG and the overlay.
* ``POST /api/predict``: the image as multipart field ``image`` (or as the raw request body with an ``image/*``
  content type). Answers the label map as a palette PNG of the image's size (values = class indices, the same
  file ``fcnkit predict`` writes); ``?format=json``: classes, palette, per-class pixel counts, size and
  milliseconds, and with ``&include=label`` the label PNG too (base64).
* ``GET /api/info``: model, classes, palette, backend, device, limits. ``GET /api/health``: ``{"ok": true}``.

The model is loaded once into a :class:`~fcnkit.inference.Predictor` with the passes of its card, the same
model ``fcnkit predict`` runs. Images larger than the tile size are segmented in sliding windows, band by band,
so memory grows with the image's width, not its area, and an image whose estimated working memory is over
``--max-memory-mb`` is refused from its header, before decoding. What a stranger can send is bounded:

* admission before the body: at most ``concurrency`` images are decoded and segmented at once, at most ``queue``
  more requests wait, and the next is answered 503 (``Retry-After``) before a byte of its body is read;
* the body is read into memory and cut off at ``--max-upload-mb`` (chunked uploads too; nothing goes to disk),
  and only PNG, JPEG, WebP, BMP, TIFF and GIF are decoded (anything else: 415);
* each request has a time limit (``--timeout``), a new connection 10 s to send its headers, idle connections
  5 s; work for a client that went away is dropped between windows;
* a local server stays local: only the local Host names are answered (DNS rebinding), a cross-site POST is
  refused (``Origin`` / ``Sec-Fetch-Site``), ``/api/info`` shows no file paths, and no page loads outside scripts.

Every bad request gets a JSON answer ``{"error": "..."}`` naming the problem (unexpected errors too, as 500),
and the server goes on serving.

Stack: FastAPI on uvicorn (the ``serve`` extra). A plain ASGI app is a few hundred kilobytes of wheels, starts
in a second, serves a JSON/PNG API that scripts and ``curl`` can call as easily as the page, and is tested here
in a real browser; Gradio would have brought a much larger install and its own front end for one page.
"""

# No "from __future__ import annotations": FastAPI reads the endpoints' annotations as live objects.
import asyncio
import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import numpy as np
from PIL import UnidentifiedImageError

from ..data import decode_image, voc_palette
from ..errors import DataError, FcnkitError, ImageTooLargeError, MissingDependencyError
from ..inference import Predictor, describe_backend, describe_inference
from ..visualize import LABEL_PNG_COMPRESSION, label_to_palette_png

__all__ = [
    "WEB_IMAGE_FORMATS",
    "BusyError",
    "Cancelled",
    "Segmentation",
    "ServeLimits",
    "Service",
    "create_app",
    "default_allowed_hosts",
    "serve",
]

#: the image formats an upload may be in (PIL's names); anything else is answered 415 without being decoded
WEB_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
#: bytes a multipart form may add around the file (boundaries, part headers, a few small fields)
FORM_OVERHEAD = 64 * 1024
#: seconds a new connection has to send its request headers before it is closed
HEADER_TIMEOUT = 10.0


@dataclass(frozen=True)
class ServeLimits:
    """What one server accepts.

    ``max_pixels`` and ``max_memory_mb`` are checked on the image header, before decoding: an image whose estimated
    working memory (:meth:`~fcnkit.inference.Predictor.memory_bytes`: pixels, labels, logits, activations) is over
    ``max_memory_mb`` is answered 413. At most ``concurrency`` images are decoded and segmented at once and at most
    ``queue`` more requests wait (their bodies held in memory, up to ``max_bytes`` each); the next is answered 503
    before its body is read. ``timeout`` bounds a request from its first byte to its answer.
    """

    max_bytes: int = 32 * 2**20
    max_pixels: int = 40_000_000
    max_memory_mb: float = 2048.0
    concurrency: int = 2
    queue: int = 16
    timeout: float = 120.0


@dataclass
class Segmentation:
    label: np.ndarray  # (H, W) uint8 class indices
    counts: list[int]
    decode_ms: float
    model_ms: float
    png: bytes | None = None  # the label map as a palette PNG, when asked for

    @property
    def size(self) -> tuple[int, int]:
        return int(self.label.shape[0]), int(self.label.shape[1])


class BusyError(FcnkitError, RuntimeError):
    """Every segmentation slot and queue place is taken."""


class Cancelled(FcnkitError, RuntimeError):
    """The work was dropped: its client went away, or its deadline passed."""


class Service:
    """The model and the limits, without the web framework: bytes in, label map out (thread-safe).

    :meth:`admit` holds one of ``concurrency + queue`` places (the web app takes it before reading a request's
    body); :meth:`run` decodes and segments in the caller's thread; :meth:`segment` does both, running the work in
    the service's pool of ``concurrency`` threads, which is what bounds how many images are in memory at once.
    """

    def __init__(self, predictor: Predictor, limits: ServeLimits | None = None, name: str | None = None) -> None:
        self.predictor = predictor
        self.limits = limits or ServeLimits()
        self.palette = [
            tuple(int(v) for v in c) for c in (predictor.model.palette or voc_palette(predictor.num_classes))
        ]
        self.name = name or _model_name(predictor.model)
        self.pool = ThreadPoolExecutor(max(1, self.limits.concurrency), thread_name_prefix="fcnkit-serve")
        self._lock = threading.Lock()
        self._admitted = 0
        self.served = 0
        self.rejected = 0
        self.cancelled = 0

    def info(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "classes": list(self.predictor.classes),
            "palette": [list(c) for c in self.palette],
            "backend": describe_backend(self.predictor.model, paths=False),
            "weights": self.predictor.card.describe_weights(),
            "passes": describe_inference(self.predictor.inference),
            "device": str(self.predictor.device),
            "tile": _tile(self.predictor),
            "limits": asdict(self.limits),
        }

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of the ``concurrency + queue`` places, or raise :class:`BusyError` at once."""
        with self._lock:
            if self._admitted >= max(1, self.limits.concurrency) + self.limits.queue:
                self.rejected += 1
                raise BusyError(
                    f"server busy: {self._admitted} requests are being segmented or waiting (limit "
                    f"{self.limits.concurrency} + queue {self.limits.queue}); try again shortly"
                )
            self._admitted += 1
        try:
            yield
        finally:
            with self._lock:
                self._admitted -= 1

    def check_size(self, width: int, height: int, name: str) -> None:
        """Refuse (:class:`ImageTooLargeError`) an image of this size before it is decoded: over ``max_pixels``, or
        needing more than ``max_memory_mb`` to segment."""
        pixels = width * height
        if pixels > self.limits.max_pixels:
            raise ImageTooLargeError(
                f"{name} is {width} x {height} = {pixels:,} pixels, over the limit of {self.limits.max_pixels:,}"
            )
        need = self.predictor.memory_bytes(height, width) + 3 * pixels  # + the decoded image
        budget = self.limits.max_memory_mb * 2**20
        if need > budget:
            raise ImageTooLargeError(
                f"{name} is {width} x {height}: segmenting it with {self.predictor.num_classes} classes would take "
                f"about {need / 2**20:,.0f} MB, over this server's limit of {self.limits.max_memory_mb:,.0f} MB per "
                "image (fcnkit serve --max-memory-mb)"
            )

    def run(
        self, data: bytes, name: str = "the upload", stop: Callable[[], None] | None = None, png: bool = True
    ) -> Segmentation:
        """Decode and segment one image file's bytes in this thread (no admission). Raises DataError /
        ImageTooLargeError, or whatever ``stop`` raises (called before decoding and between windows)."""
        if stop is not None:
            stop()
        if len(data) > self.limits.max_bytes:
            raise ImageTooLargeError(f"{name} has {len(data):,} bytes, over the limit of {self.limits.max_bytes:,}")
        start = time.perf_counter()
        rgb = decode_image(data, name, formats=WEB_IMAGE_FORMATS, check_size=lambda w, h: self.check_size(w, h, name))
        decoded = time.perf_counter()
        label = self.predictor.predict_labels(rgb, stop)[0].cpu().numpy()
        del rgb
        model_ms = (time.perf_counter() - decoded) * 1e3
        counts = np.bincount(label.ravel(), minlength=self.predictor.num_classes).tolist()
        seg = Segmentation(label, counts, (decoded - start) * 1e3, model_ms)
        if png:
            seg.png = self.label_png(seg)
        with self._lock:
            self.served += 1
        return seg

    def segment(self, data: bytes, name: str = "the upload", stop: Callable[[], None] | None = None) -> Segmentation:
        """:meth:`run` within the limits: a place taken at once (else :class:`BusyError`), the work done in the
        service's pool of ``concurrency`` threads."""
        with self.admit():
            return self.pool.submit(self.run, data, name, stop).result()

    def label_png(self, seg: Segmentation) -> bytes:
        buf = io.BytesIO()
        label_to_palette_png(seg.label, self.palette).save(buf, format="PNG", compress_level=LABEL_PNG_COMPRESSION)
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
        import python_multipart  # noqa: F401  (the uploads' forms are parsed with it)
    except ImportError as exc:
        raise MissingDependencyError(
            "fcnkit serve needs python-multipart to read uploads: pip install 'fcnkit[serve]'"
        ) from exc
    return fastapi, uvicorn


# --- the guard: hosts, origins and admission, before anything else reads the request ---------------------------

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def default_allowed_hosts(host: str) -> list[str]:
    """The Host header values a server bound to ``host`` answers: the local names for a local address (so that a
    web page on another name, DNS rebinding included, cannot read it), every name for ``0.0.0.0`` / ``::`` (a
    server meant for the network), else the bound name itself."""
    if host in LOCAL_NAMES:
        return list(LOCAL_NAMES)
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    return [host.lower()]


def _host_name(value: str) -> str:
    """``[::1]:8000`` -> ``::1``, ``Example.org:80`` -> ``example.org``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


async def _send_json(send: Any, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware in front of the app: refuses a request whose Host header is not allowed (400) or a
    cross-site request that would change something (403: a POST whose ``Origin`` is not this server or whose
    ``Sec-Fetch-Site`` says another site), and admits ``POST /api/predict`` into one of the service's places
    before a byte of its body is read (503 with ``Retry-After`` when they are taken)."""

    def __init__(self, app: Any, service: Service, allowed_hosts: list[str]) -> None:
        self.app, self.service = app, service
        self.allowed = {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if "*" not in self.allowed and _host_name(host) not in self.allowed:
            return await _send_json(
                send,
                400,
                f"Host {host!r} is not served here (allowed: {', '.join(sorted(self.allowed))}; "
                "fcnkit serve --allow-host NAME adds one)",
            )
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin, site = headers.get("origin"), headers.get("sec-fetch-site")
            if site is not None and site not in ("same-origin", "none"):
                return await _send_json(send, 403, f"cross-site request refused (Sec-Fetch-Site: {site})")
            if origin is not None and _origin_host(origin) != host.strip().lower():
                return await _send_json(send, 403, f"cross-origin request refused (Origin: {origin})")
        if scope["path"] != "/api/predict" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        try:
            place = self.service.admit()
            place.__enter__()
        except BusyError as exc:
            return await _send_json(send, 503, str(exc), {"Retry-After": "1"})
        try:
            scope.setdefault("state", {})["deadline"] = time.monotonic() + self.service.limits.timeout
            await self.app(scope, receive, send)
        finally:
            place.__exit__(None, None, None)


def _origin_host(origin: str) -> str:
    """``http://localhost:8000`` -> ``localhost:8000`` (``null`` and other opaque origins match nothing)."""
    _, sep, rest = origin.strip().lower().partition("://")
    return rest.rstrip("/") if sep else "\0"


# --- the request body, in memory -------------------------------------------------------------------------------


class _BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _read_body(request: Any, limit: int, deadline: float) -> bytes:
    """The whole body, refused (413) as soon as it passes ``limit`` bytes (chunked or not), or when it has not
    arrived by ``deadline`` (408). Nothing is written to disk."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyError(413, f"the request has {int(declared):,} bytes, over the limit of {limit:,}")
    body = bytearray()
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise _BodyError(413, f"the request body is over the limit of {limit:,} bytes")
    except TimeoutError:
        raise _BodyError(408, "the request body did not arrive in time") from None
    except Exception as exc:
        if type(exc).__name__ == "ClientDisconnect":  # Starlette's, raised when the client hangs up mid-body
            raise _BodyError(400, "the client went away before sending its whole body") from None
        raise
    return bytes(body)


def _form_file(body: bytes, content_type: str, field: str) -> tuple[bytes, str]:
    """The file sent as ``field`` of a multipart form held in memory: ``(bytes, filename)``."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise _BodyError(400, "cannot read the form: its content type has no boundary")
    parts: list[dict[str, Any]] = []
    header = {"field": bytearray(), "value": bytearray()}

    def begin() -> None:
        parts.append({"headers": {}, "data": []})
        if len(parts) > 8:
            raise _BodyError(400, "cannot read the form: more than 8 parts")

    def header_end() -> None:
        parts[-1]["headers"][bytes(header["field"]).lower()] = bytes(header["value"])
        header["field"], header["value"] = bytearray(), bytearray()

    callbacks = {
        "on_part_begin": begin,
        "on_part_data": lambda data, start, end: parts[-1]["data"].append(data[start:end]),
        "on_header_field": lambda data, start, end: header["field"].extend(data[start:end]),
        "on_header_value": lambda data, start, end: header["value"].extend(data[start:end]),
        "on_header_end": header_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except _BodyError:
        raise
    except Exception as exc:  # the parser's errors carry no common type
        raise _BodyError(400, f"cannot read the form: {exc}") from None
    names = []
    for part in parts:
        _, options = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("latin-1")
        names.append(name)
        if name == field:
            if b"filename" not in options:
                raise _BodyError(400, f"the '{field}' field is text, not a file: send the file itself")
            return b"".join(part["data"]), options[b"filename"].decode("utf-8", "replace")
    raise _BodyError(400, f"no '{field}' field in the form (fields sent: {sorted(names) or 'none'})")


def create_app(service: Service, allowed_hosts: list[str] | None = None) -> Any:
    """The FastAPI application serving ``service``, behind its :class:`Guard` (``allowed_hosts``: Host header
    names answered, ``["*"]`` for any; default the local names)."""
    fastapi, _ = _require_stack()
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    # no /docs page: FastAPI's loads its scripts from a CDN; the schema stays at /api/openapi.json
    app = fastapi.FastAPI(title="fcnkit", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
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

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return error(500, f"internal error ({type(exc).__name__}): {exc}")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return service.info()

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "served": service.served, "rejected": service.rejected, "cancelled": service.cancelled}

    async def read_upload(request: Request, deadline: float) -> tuple[bytes, str]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if (
            kind
            and kind != "multipart/form-data"
            and not kind.startswith("image/")
            and kind != "application/octet-stream"
        ):
            raise _BodyError(415, f"content type {kind!r}: send multipart/form-data with an 'image' field, or image/*")
        extra = FORM_OVERHEAD if kind == "multipart/form-data" else 0
        body = await _read_body(request, limits.max_bytes + extra, deadline)
        if not body:
            raise _BodyError(400, "empty request: send the image as multipart form field 'image' or as the body")
        if kind == "multipart/form-data":
            data, filename = _form_file(body, request.headers["content-type"], "image")
            if len(data) > limits.max_bytes:
                raise _BodyError(413, f"the file has {len(data):,} bytes, over the limit of {limits.max_bytes:,}")
            return data, f"upload {filename or 'image'!r}"
        return body, "the request body"

    @app.post("/api/predict")
    async def predict(request: Request, format: str = "png", include: str = "") -> Response:
        if format not in ("png", "json"):
            return error(400, f"format must be 'png' or 'json', got {format!r}")
        deadline = request.scope.get("state", {}).get("deadline") or time.monotonic() + limits.timeout
        try:
            data, name = await read_upload(request, deadline)
        except _BodyError as exc:
            return error(exc.status, str(exc))
        gone = threading.Event()

        async def watch() -> None:  # the client closing its connection ends the wait for the next message
            while (await request.receive())["type"] != "http.disconnect":
                pass
            gone.set()

        def stop() -> None:
            if gone.is_set():
                raise Cancelled("the client went away")
            if time.monotonic() > deadline:
                raise Cancelled(f"not finished within the request time limit of {limits.timeout:g} s")

        wanted = {part.strip() for part in include.split(",") if part.strip()}
        png = format == "png" or "label" in wanted
        watcher = asyncio.create_task(watch())
        try:
            loop = asyncio.get_running_loop()
            seg = await loop.run_in_executor(service.pool, service.run, data, name, stop, png)
        except Cancelled as exc:
            with service._lock:
                service.cancelled += 1
            return error(503, f"{exc}; the work was dropped", headers={"Retry-After": "1"})
        except ImageTooLargeError as exc:
            return error(413, str(exc))
        except DataError as exc:  # not an image in an accepted format: 415; empty, corrupt or truncated: 400
            return error(415 if isinstance(exc.__cause__, UnidentifiedImageError) else 400, str(exc))
        finally:
            watcher.cancel()
        timing = {"X-Inference-Ms": f"{seg.model_ms:.2f}", "X-Decode-Ms": f"{seg.decode_ms:.2f}"}
        if format == "json":
            return JSONResponse(service.summary(seg, seg.png if "label" in wanted else None), headers=timing)
        return Response(seg.png, media_type="image/png", headers=timing)

    return Guard(app, service, allowed_hosts or list(LOCAL_NAMES))


def _http_protocol(uvicorn: Any) -> Any:
    """uvicorn's h11 protocol with a deadline for a new connection's request headers (uvicorn has none: a client
    that connects and sends nothing, or a byte at a time, would hold its connection forever)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._header_timer = self.loop.call_later(HEADER_TIMEOUT, self._headers_too_slow)

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

    return Protocol


def serve(
    service: Service,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    allowed_hosts: list[str] | None = None,
) -> None:
    """Serve ``service`` until interrupted (Ctrl-C). ``allowed_hosts``: see :func:`default_allowed_hosts`."""
    _, uvicorn = _require_stack()
    allowed = allowed_hosts or default_allowed_hosts(host)
    app = create_app(service, allowed)
    limits = service.limits
    print(f"model: {service.name}, {describe_backend(service.predictor.model)}", flush=True)
    print(f"serving on http://{host}:{port}/  (API: /api/predict, /api/info; Ctrl-C stops)", flush=True)
    if "*" in allowed:
        print(f"answering every Host name on {host}: anyone who can reach this port can use the model", flush=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=log_level == "debug",
        http=_http_protocol(uvicorn),
        timeout_keep_alive=5,
        # the requests admitted, and room for the page, /api/info and /api/health beside them
        limit_concurrency=max(1, limits.concurrency) + limits.queue + 32,
        timeout_graceful_shutdown=5,
    )


class ServerAddress(str):
    """The base URL of a server started by :func:`serve_process` (a ``str``), with the process's ``pid``."""

    pid: int


@contextlib.contextmanager
def serve_process(
    model: str,
    *options: str,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> Iterator[ServerAddress]:
    """``fcnkit serve MODEL OPTIONS`` as a separate process on a free port of 127.0.0.1, for scripts and tests:
    yields its base URL (with ``.pid``) once ``/api/health`` answers, and stops the process on leaving. Raises
    ``RuntimeError`` with the process's output when it exits or does not answer within ``timeout`` seconds."""
    import httpx  # a dependency of the serve extra's test client and of the scripts that use this

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "fcnkit", "serve", model, *options, "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = ServerAddress(f"http://127.0.0.1:{port}")
    url.pid = proc.pid
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
                raise RuntimeError(f"fcnkit serve did not start: {proc.communicate(timeout=30)[0]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
