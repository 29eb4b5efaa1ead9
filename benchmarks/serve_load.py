"""A bounded load test of ``fcnkit serve`` on 127.0.0.1: latency, errors, memory, and every answer checked.

The server is started as its own process (``python -m fcnkit serve MODEL``, default settings but the port);
this script sends ``--requests`` uploads from ``--clients`` threads at once, a mix of image sizes (the given
images at 0.5x, 1x and 2x, and a few larger than the server's 1024-pixel tile, which it segments in sliding
windows) and a share of bad uploads (not an image, truncated, empty, a decompression bomb). Every good answer is
compared pixel for pixel with a ``Predictor`` of the same checkpoint and settings run in this process; every bad
one must be a 4xx JSON error. The server's resident memory is sampled from /proc every 0.1 s.

Meanwhile ``--slow-clients`` connections send their headers and then trickle their body a byte a second (each
holds one of the server's admission places, never a segmentation slot), and ``--disconnects`` clients upload the
large image and hang up at once (the server must drop their work: ``cancelled`` in ``/api/health``). Good
requests must all still be answered correctly, with no 5xx.

    python benchmarks/serve_load.py --model runs/demo/train/best.pth --images runs/demo/data/images/test
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

import fcnkit
from fcnkit.apps.benchmark import provenance
from fcnkit.inference import expand_inputs


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _bomb() -> bytes:
    data = bytearray(_png(Image.new("RGB", (1, 1))))
    data[16:24] = (50000).to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--images", required=True, nargs="+")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=8, help="requests in flight at once (default 8)")
    p.add_argument("--bad", type=float, default=0.1, help="share of bad uploads (default 0.1)")
    p.add_argument("--slow-clients", type=int, default=4, help="connections that trickle their body (default 4)")
    p.add_argument("--disconnects", type=int, default=10, help="uploads abandoned right after sending (default 10)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()

    sources = [Image.open(path).convert("RGB") for path in expand_inputs(args.images)[:8]]
    good: list[tuple[str, bytes]] = []
    for i, img in enumerate(sources):
        w, h = img.size
        for factor in (0.5, 1.0, 2.0):
            good.append((f"{i}@{factor}", _png(img.resize((max(8, round(w * factor)), max(8, round(h * factor)))))))
    big = sources[0].resize((1600, 1200))
    good.append(("big 1600x1200", _png(big)))
    whole = _png(sources[0])
    bad = {
        "not an image": (b"plain text, not a picture" * 20, 415),
        "truncated": (whole[: len(whole) // 2], 400),
        "empty": (b"", 400),
        "bomb": (_bomb(), 413),
    }

    print(f"expected answers: a Predictor of {args.model} in this process ...", flush=True)
    predictor = fcnkit.Predictor(args.model, tile=1024)
    expected = {
        name: predictor.predict(Image.open(io.BytesIO(data)).convert("RGB")).label.numpy() for name, data in good
    }

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "fcnkit", "serve", args.model, "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    while True:
        try:
            info = httpx.get(url + "/api/info", timeout=2).json()
            break
        except httpx.HTTPError:
            if server.poll() is not None:
                print(server.stdout.read())
                return 1
            time.sleep(0.2)
    print(f"server up in {time.perf_counter() - started:.1f} s: {info['model']}, {info['backend']}", flush=True)

    rng = np.random.default_rng(0)
    plan = []
    for _ in range(args.requests):
        if rng.random() < args.bad:
            kind = list(bad)[rng.integers(len(bad))]
            plan.append(("bad", kind))
        else:
            plan.append(("good", good[rng.integers(len(good))][0]))
    data_of = dict(good)

    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(_rss_mib(server.pid))
            time.sleep(0.1)

    client = httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=args.clients))
    for name, data in good[:3]:  # warm-up, not counted
        client.post("/api/predict", files={"image": (name, data)})
    rss_after_warmup = _rss_mib(server.pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def one(item: tuple[str, str]) -> dict:
        kind, name = item
        data = data_of[name] if kind == "good" else bad[name][0]
        t0 = time.perf_counter()
        r = client.post("/api/predict", files={"image": (f"{name}.png", data, "image/png")})
        ms = (time.perf_counter() - t0) * 1e3
        if kind == "good":
            ok = r.status_code == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected[name])
        else:
            ok = r.status_code == bad[name][1] and "error" in r.json()
        return {"kind": kind, "name": name, "status": r.status_code, "ms": ms, "ok": ok}

    def slow_client() -> None:
        """Headers, then one byte of a 100 kB body per second until the server gives up on it or the run ends."""
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\n"
                  "Content-Length: 100000\r\n\r\n".encode())  # fmt: skip
        try:
            while not stop.is_set():
                s.sendall(b"x")
                stop.wait(1.0)
        except OSError:
            pass
        finally:
            s.close()

    def hang_up(i: int) -> None:
        """The large image uploaded in full, then the connection closed before the answer."""
        data = data_of["big 1600x1200"]
        boundary = "fcnkitload"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
        time.sleep(0.3 * i)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
                      f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
            time.sleep(0.05)

    slow = [threading.Thread(target=slow_client, daemon=True) for _ in range(args.slow_clients)]
    for t in slow:
        t.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.disconnects)) as hangers, ThreadPoolExecutor(args.clients) as pool:
        hangups = [hangers.submit(hang_up, i) for i in range(args.disconnects)]
        results = list(pool.map(one, plan))
        for h in hangups:
            h.result()
    wall = time.perf_counter() - t0
    stop.set()
    for t in slow:
        t.join(5)
    sampler.join()
    alive = server.poll() is None
    health = client.get("/api/health").json() if alive else {}
    server.terminate()
    server.wait(20)

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    good_ms = [r["ms"] for r in results if r["kind"] == "good"]
    bad_ms = [r["ms"] for r in results if r["kind"] == "bad"]
    wrong = [r for r in results if not r["ok"]]
    figures = {
        "model": info["model"],
        "backend": info["backend"],
        "requests": len(results),
        "clients": args.clients,
        "slow_clients": args.slow_clients,
        "disconnects": args.disconnects,
        "good": len(good_ms),
        "bad": len(bad_ms),
        "wrong_answers": len(wrong),
        "server_errors_5xx": sum(r["status"] >= 500 for r in results),
        "wall_s": wall,
        "requests_per_s": len(results) / wall,
        "good_p50_ms": pct(good_ms, 50),
        "good_p99_ms": pct(good_ms, 99),
        "good_max_ms": max(good_ms, default=float("nan")),
        "bad_p50_ms": pct(bad_ms, 50),
        "rss_mib_after_warmup": rss_after_warmup,
        "rss_mib_max": max(samples, default=float("nan")),
        "rss_mib_first_quarter_median": statistics.median(samples[: max(1, len(samples) // 4)]) if samples else None,
        "rss_mib_last_quarter_median": statistics.median(samples[-max(1, len(samples) // 4) :]) if samples else None,
        "server_alive_after": alive,
        "health": health,
        "sizes": sorted({f"{Image.open(io.BytesIO(d)).size[0]}x{Image.open(io.BytesIO(d)).size[1]}" for _, d in good}),
        "cpu": os.cpu_count(),
    }
    print(
        f"{len(results)} requests from {args.clients} clients in {wall:.1f} s ({figures['requests_per_s']:.1f}/s): "
        f"{len(good_ms)} good, {len(bad_ms)} bad uploads; wrong answers {len(wrong)}, 5xx {figures['server_errors_5xx']}"
    )
    print(
        f"meanwhile {args.slow_clients} slow clients trickled their bodies and {args.disconnects} clients hung up "
        f"after uploading: the server dropped {health.get('cancelled', 'n/a')} of those jobs"
    )
    print(
        f"good: p50 {figures['good_p50_ms']:.0f} ms, p99 {figures['good_p99_ms']:.0f} ms, max "
        f"{figures['good_max_ms']:.0f} ms; bad: p50 {figures['bad_p50_ms']:.1f} ms"
    )
    print(
        f"server memory: {rss_after_warmup:.0f} MiB after warm-up, median {figures['rss_mib_first_quarter_median']:.0f} "
        f"MiB in the first quarter of the run, {figures['rss_mib_last_quarter_median']:.0f} MiB in the last, "
        f"max {figures['rss_mib_max']:.0f} MiB; still up: {alive}"
    )
    for r in wrong[:10]:
        print("WRONG:", r)
    if args.json:
        figures.update(provenance("python benchmarks/serve_load.py " + " ".join(sys.argv[1:])))
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if not wrong and alive and not figures["server_errors_5xx"] else 1


if __name__ == "__main__":
    sys.exit(main())
