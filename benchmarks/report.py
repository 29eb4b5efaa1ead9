"""Regenerate the results tables of the README and the docs from the data files in ``benchmarks/results/``.

Each table sits in a Markdown file between ``<!-- report:NAME -->`` and ``<!-- /report:NAME -->``; this script
writes what is between the markers from the data (and nothing else), so a table can always be rebuilt and never
drifts from its data. Every table ends with the command that produced its data.

    python benchmarks/report.py            # rewrite the tables in place
    python benchmarks/report.py --check    # exit 1, naming the stale tables, when a committed table differs

``tests/test_report.py`` runs the check, so a table edited by hand, or data changed without regenerating the
tables, fails the tests.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
#: the Markdown files that hold generated tables
PAGES = ("README.md", "docs/results.md", "docs/serving.md", "docs/studies/camvid.md", "docs/index.md")
MARKER = re.compile(r"(<!-- report:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /report:(?P=name) -->)", re.S)

#: the commands that wrote each data file (files written before the scripts recorded their own command)
COMMANDS = {
    "camvid_x008.json": "python benchmarks/camvid_budget.py --data CAMVID --out runs/pair30 --minutes 30 "
    "--fold 0006R0 --runs fcnkit --seeds 1 --tag nw+regnetx_008+image_norm+bf16+enet+fcn4s+gamma0.5 "
    "--set loss.class_weights=enet model.options.backbone=regnetx_008 model.options.input_norm=image amp=bf16 "
    "model.name=fcn4s_timm data.gamma_jitter=0.5 --tta flip_ms_up flip_ms_up4   # then seed 2, then --fold 0001TP",
    "camvid_pair30_fcn4s.json": "PYTHONPATH=src python benchmarks/camvid_budget.py --data CAMVID --out runs/pair30 "
    "--minutes 30 --fold 0006R0 --runs fcnkit --seeds 5   # in a worktree of commit 59a981e; then seed 6",
    "camvid_heldout30.json": "python benchmarks/camvid_budget.py --data CAMVID --out runs/heldout30 --minutes 30 "
    "--fold 0006R0 --runs peer --seeds 0   # then --fold 0001TP",
}

RECIPE = "fcnkit nw+regnetx_008+image_norm+bf16+enet+fcn4s+gamma0.5"
BASELINE = "fcnkit (as filed, 59a981e)"
PEER = "smp FPN R18"


def load(name: str) -> list | dict:
    return json.loads((RESULTS / name).read_text())


def _mean(rows: list[dict]) -> str:
    return f"{statistics.fmean(r['miou'] for r in rows):.2f}" if rows else "-"


def _seeds(rows: list[dict]) -> str:
    return " / ".join(f"{r['miou']:.2f}" for r in sorted(rows, key=lambda r: r["seed"])) if rows else "-"


def camvid_heldout() -> str:
    """The CPU recipe, the first recipe and the peer on the two held-out CamVid drives, 30 minutes each."""
    recipe = load("camvid_x008.json")
    baseline = [r for r in load("camvid_pair30_fcn4s.json") if r["run"] == BASELINE]
    peer = [r for r in load("camvid_heldout30.json") if r["run"] == PEER]
    lines = [
        "| model (30 min of training, 2 CPU cores) | held-out drive | seeds | one pass | with its test-time passes |",
        "|---|---|---|---|---|",
    ]
    for fold, what in (("0006R0", "0006R0 (daylight)"), ("0001TP", "0001TP (dusk)")):
        one = [r for r in recipe if r["run"] == RECIPE and r["fold"] == fold]
        passes = [r for r in recipe if r["run"] == f"{RECIPE} tta_flip_ms_up" and r["fold"] == fold]
        lines.append(
            f"| fcnkit CPU recipe, FCN-4s on `regnetx_008` | {what} | {len(one)} | {_mean(one)} ({_seeds(one)}) "
            f"| **{_mean(passes)}** ({_seeds(passes)}) |"
        )
    base = [r for r in baseline if r["fold"] == "0006R0"]
    lines.append(
        f"| first recipe, FCN-8s on `regnetx_002` | 0006R0 (daylight) | {len(base)} | {_mean(base)} ({_seeds(base)}) | - |"
    )
    for fold, what in (("0006R0", "0006R0 (daylight)"), ("0001TP", "0001TP (dusk)")):
        rows = [r for r in peer if r["fold"] == fold]
        lines.append(
            f"| segmentation_models_pytorch FPN, ResNet-18 | {what} | {len(rows)} | {_mean(rows)} ({_seeds(rows)}) | - |"
        )
    lines += [
        "",
        "mIoU (%) of the 11 CamVid classes at 360x480 on a drive left out of training, mean over seeds (each seed "
        "in brackets). Test-time passes: flips with scales 1, 1.25 and 1.5 (the recipe's `test:` section, which "
        "`predict`, `serve` and `Predictor` apply by default). "
        f"Machines: {'; '.join(sorted({r.get('cpu') or 'not recorded' for r in recipe + baseline + peer}))}. Data: `benchmarks/results/camvid_x008.json`, "
        "`camvid_pair30_fcn4s.json`, `camvid_heldout30.json`, written by:",
        "",
        "```bash",
        *(COMMANDS[f] for f in ("camvid_x008.json", "camvid_pair30_fcn4s.json", "camvid_heldout30.json")),
        "```",
    ]
    return "\n".join(lines)


def serve_load() -> str:
    """The load test of ``fcnkit serve``."""
    d = load("serve_load.json")
    lines = [
        "| requests | clients | slow clients | hang-ups | good / bad | wrong answers | 5xx | wall | good p50 / p99 "
        "| bad p50 | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {d['requests']} | {d['clients']} | {d['slow_clients']} | {d['disconnects']} (dropped: "
        f"{d['health']['cancelled']}) | {d['good']} / {d['bad']} | {d['wrong_answers']} | {d['server_errors_5xx']} "
        f"| {d['wall_s']:.1f} s | {d['good_p50_ms']:.0f} / {d['good_p99_ms']:.0f} ms | {d['bad_p50_ms']:.0f} ms "
        f"| {d['rss_mib_max']:.0f} MiB |",
        "",
        f"Model `{d['model']}` (the demo's checkpoint), backend {d['backend'].split(' (')[0]}, {d['cpu']} CPU cores, "
        f"images of {', '.join(d['sizes'])} pixels. Data: `benchmarks/results/serve_load.json`, written by:",
        "",
        "```bash",
        "python benchmarks/serve_load.py --model runs/demo/train/best.pth --images runs/demo/data/images/test "
        "--json benchmarks/results/serve_load.json",
        "```",
    ]
    return "\n".join(lines)


def index() -> str:
    """The data files and what wrote them (CAMVID: where the CamVid folder was on the measuring machine)."""
    lines = ["| file | rows | written by |", "|---|---|---|"]
    for path in sorted(RESULTS.iterdir()):
        if path.suffix != ".json":
            continue
        data = json.loads(path.read_text())
        rows = len(data["rows"]) if isinstance(data, dict) and "rows" in data else len(data)
        command = COMMANDS.get(path.name) or _own_command(data) or "-"
        command = re.sub(r"\S*shared/data/camvid", "CAMVID", command.split("   #")[0])  # the machine's own path
        lines.append(f"| `{path.name}` | {rows} | `{command}` |")
    return "\n".join(lines)


def _own_command(data: list | dict) -> str | None:
    """The command a file records itself (the newer scripts write one per file or per row)."""
    if isinstance(data, dict):
        return data.get("command")
    return next((r["command"] for r in data if isinstance(r, dict) and r.get("command")), None)


TABLES: dict[str, Callable[[], str]] = {"camvid-heldout": camvid_heldout, "serve-load": serve_load, "index": index}


def render(text: str) -> str:
    """``text`` with every marked table regenerated; an unknown table name is an error."""

    def fill(m: re.Match) -> str:
        name = m["name"]
        if name not in TABLES:
            raise SystemExit(f"unknown table {name!r} (known: {', '.join(TABLES)})")
        return f"{m.group(1)}{TABLES[name]()}\n{m.group(4)}"

    return MARKER.sub(fill, text)


def stale(repo: Path = REPO) -> list[str]:
    """The pages whose committed tables differ from what the data gives."""
    return [
        page
        for page in PAGES
        if (repo / page).exists() and render((repo / page).read_text()) != (repo / page).read_text()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a table is stale")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        for page in bad:
            print(f"{page}: a generated table differs from its data; run python benchmarks/report.py", file=sys.stderr)
        return 1 if bad else 0
    for page in PAGES:
        path = REPO / page
        if path.exists():
            new = render(path.read_text())
            if new != path.read_text():
                path.write_text(new)
                print(f"updated {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
