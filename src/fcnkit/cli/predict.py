"""``fcnkit predict``: segment image files, folders or globs into label PNGs, overlays and probabilities."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..card import card_of
from ..inference import Predictor, describe_backend, expand_inputs, load_model, predict_files
from ..inference.files import check_outputs, output_names
from ..inference.video import is_video, predict_video, video_names
from ..utils import resolve_device, tune_malloc
from .args import add_device_arg, add_inference_args, describe_run, inference_from_args


def cmd_predict(args: argparse.Namespace) -> int:
    # frames and batches of one size are allocated and freed again and again: keep freed blocks for reuse instead
    # of handing them back to the OS and faulting fresh pages in for the next one
    tune_malloc()
    model = load_model(args.model, args.weights)
    videos = list(dict.fromkeys(item for item in args.inputs if is_video(item)))
    images = [item for item in args.inputs if not is_video(item)]
    paths = expand_inputs(images) if images else []
    # refused before the model is prepared or run: an output that would replace an input or a file fcnkit did not write
    check_outputs(paths, output_names(paths), Path(args.out), overlays=not args.no_overlay, probs=args.probs)
    inference = inference_from_args(args, card_of(model))
    device = resolve_device(args.device)
    print(describe_run("predict", args.model, model, inference, args, device), file=sys.stderr, flush=True)
    predictor = Predictor(
        model,
        device=device,
        tile=args.tile,
        batch_size=args.batch_size or 1,
        inference=inference,
        optimize=not args.no_optimize,
        backend=args.backend,
    )
    # one image goes fastest on all cores; a stream of them, several at once (Predictor.concurrent, as
    # predict_files and predict_video ask for it)
    runs = predictor.concurrent(None if videos else len(paths))[1]
    if args.batch_size is None:
        # several one-image runs at once are the fastest on ONNX Runtime; a single run goes faster with a few
        # images a batch
        predictor.batch_size = 1 if runs > 1 else 4
    at_once = f"; {runs} batches of {predictor.batch_size} at once" if runs > 1 else ""
    print(f"backend: {describe_backend(predictor.model)}{at_once}", file=sys.stderr)
    for source, name in zip(videos, video_names(videos), strict=True):
        video = predict_video(
            predictor,
            source,
            args.out,
            alpha=args.alpha,
            labels=args.video_labels,
            max_frames=args.max_frames,
            name=name,
            preset=args.video_preset,
        )
        h, w = video.size
        print(
            f"wrote {video.overlay}: {video.frames} frames, {w}x{h}, {float(video.rate):.3g} frames/s "
            f"(segmented at {video.frames_per_second:.1f} frames/s)"
            + (f"; {video.dropped} frames dropped to keep up with the live source" if video.dropped else "")
            + (f"; the stream ended ({video.ended})" if video.ended else "")
            + (f"; labels in {video.labels}" if video.labels else "")
        )
    if not images:
        return 0
    report = predict_files(predictor, paths, args.out, probs=args.probs, alpha=args.alpha, overlays=not args.no_overlay)
    skipped = len(report.skipped)
    print(
        f"wrote {len(report.written)} of {len(paths)} predictions to {args.out}"
        + (f"; {skipped} skipped" if skipped else "")
    )
    return 1 if skipped else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment images (label PNGs, values = class index, + overlays) and videos (<name>_overlay.mp4)",
    )
    p.add_argument("model", help="an fcnkit checkpoint, or '<model>.<weights tag>' such as fcn_resnet50_d8.coco_voc")
    p.add_argument(
        "inputs",
        nargs="+",
        help="image files, folders or glob patterns; videos (.mp4, .mov, .avi, .mkv, .webm...), /dev/video0, rtsp://",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--probs", action="store_true", help="also write class probabilities (<name>_probs.npy, float16)")
    p.add_argument("--tile", type=int, help="segment images larger than this in overlapping tiles of this size")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    p.add_argument("--no-overlay", action="store_true", help="write only the label PNGs (and --probs)")
    p.add_argument(
        "--video-labels", action="store_true", help="videos: also write each frame's label PNG into <name>_labels/"
    )
    p.add_argument("--max-frames", type=int, help="videos, webcams, streams: stop after this many frames")
    p.add_argument(
        "--video-preset",
        default="ultrafast",
        choices=["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"],
        help="x264 speed preset of the overlay video: ultrafast (default) takes the least time from the model, slower "
        "presets make smaller files",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="consecutive images of one size share a forward pass, up to this many (default: 1 where the model "
        "runs several images at once on separate cores, as ONNX Runtime on a multi-core CPU does, else 4)",
    )
    add_inference_args(p)
    add_device_arg(p)
    p.set_defaults(func=cmd_predict)
