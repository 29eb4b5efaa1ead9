"""``fcnkit serve``: a model behind a local web server (a page to try it, a PNG / JSON API)."""

from __future__ import annotations

import argparse
import sys

from ..apps.serve import ServeLimits, Service, default_allowed_hosts, serve
from ..card import card_of
from ..inference import Predictor, load_model
from ..utils import resolve_device
from .args import add_device_arg, add_inference_args, describe_run, inference_from_args


def cmd_serve(args: argparse.Namespace) -> int:
    limits = ServeLimits(
        max_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=int(args.max_megapixels * 1e6),
        max_memory_mb=args.max_memory_mb,
        concurrency=args.concurrency,
        queue=args.queue,
        timeout=args.timeout,
    )
    model = load_model(args.model, args.weights)
    inference = inference_from_args(args, card_of(model))
    device = resolve_device(args.device)
    print(describe_run("serve", args.model, model, inference, args, device), file=sys.stderr, flush=True)
    predictor = Predictor(
        model,
        device=device,
        tile=args.tile or None,
        inference=inference,
        optimize=not args.no_optimize,
        backend=args.backend,
    )
    allowed = default_allowed_hosts(args.host) + [h.lower() for h in args.allow_host]
    serve(Service(predictor, limits), host=args.host, port=args.port, log_level=args.log_level, allowed_hosts=allowed)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model on a web page and an HTTP API (fcnkit[serve]: FastAPI + uvicorn)",
        description="Open http://HOST:PORT/ in a browser to segment your own images; POST /api/predict "
        "(multipart field 'image') answers the label PNG, ?format=json the classes, pixel counts and timing.",
    )
    p.add_argument("model", help="an fcnkit checkpoint, or '<model>.<weights tag>' such as fcn_resnet50_d8.coco_voc")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header is NAME (repeatable; by default a local server answers only "
        "localhost / 127.0.0.1 / ::1, a server on 0.0.0.0 every name, another address its own)",
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--tile",
        type=int,
        default=1024,
        help="segment images larger than this in overlapping tiles of this size, as fcnkit predict --tile "
        "(default 1024; 0 = always whole)",
    )
    p.add_argument("--concurrency", type=int, default=2, help="images segmented at once (default 2)")
    p.add_argument(
        "--queue",
        type=int,
        default=16,
        help="requests that may wait beyond those (default 16; each holds its upload in memory); the next gets 503 "
        "before its body is read",
    )
    p.add_argument("--max-upload-mb", type=float, default=32, help="largest upload accepted (default 32 MB)")
    p.add_argument(
        "--max-megapixels", type=float, default=40, help="largest image accepted, checked before decoding (default 40)"
    )
    p.add_argument(
        "--max-memory-mb",
        type=float,
        default=2048,
        help="largest estimated working memory of one image (pixels, logits for the model's classes, activations), "
        "checked on its header before decoding (default 2048)",
    )
    p.add_argument(
        "--timeout", type=float, default=120, help="seconds a request may take from its first byte (default 120)"
    )
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    add_inference_args(p)
    add_device_arg(p)
    p.set_defaults(func=cmd_serve)
