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
PAGES = (
    "README.md",
    "docs/results.md",
    "docs/serving.md",
    "docs/studies/camvid.md",
    "docs/index.md",
    "docs/speed.md",
)
MARKER = re.compile(r"(<!-- report:(?P<name>[\w.:+-]+) -->\n)(?P<body>.*?)(<!-- /report:(?P=name) -->)", re.S)

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
        *_camvid_script().merge_commands([_short(r["command"]) for r in recipe + baseline + peer]),
        "```",
    ]
    return "\n".join(lines)


def speed_summary() -> str:
    """One line on inference speed against the peers, from ``peer_speed_cpu.json``."""
    d = load("peer_speed_cpu.json")
    ratio = {(r["case"], r["path"]): r["vs peer"] for r in d["rows"]}
    resnet, vgg = ratio[("resnet 360x480", "fcnkit onnxruntime")], ratio[("vgg 480x640", "fcnkit onnxruntime")]
    return (
        f"**Speed**: on 2 CPU cores, fcnkit's default inference path (ONNX Runtime) runs torchvision's "
        f"`fcn_resnet50` {resnet:.2f}x as fast as torchvision at 360x480, and torchfcn's VGG16 FCN-8s {vgg:.2f}x as "
        f"fast at 480x640, with the same arg-max (measured {d['date'][:10]} on {d['machine'].split(',')[0]}, "
        f"interleaved rounds: `{_short(d['command'])}`, data `benchmarks/results/peer_speed_cpu.json`)."
    )


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
        _short(d["command"]),
        "```",
    ]
    return "\n".join(lines)


def _short(command: str) -> str:
    """A recorded command without the measuring machine's own paths: CAMVID for the CamVid folder, paths
    relative to the checkout."""
    command = re.sub(r"\S*shared/data/camvid", "CAMVID", command)
    return re.sub(r"/\S*?/(runs|benchmarks|configs)/", r"\1/", command)


def _provenance(data: list | dict) -> tuple[list[str], list[str], list[str], list[str]]:
    """The commands, commits, machines and dates a data file records (per file, or per row)."""
    records = [data] if isinstance(data, dict) else data
    pick = {key: sorted({str(r.get(key)) for r in records if r.get(key)}) for key in ("command", "commit", "date")}
    machines = sorted({str(r.get("machine") or r.get("cpu") or "not recorded") for r in records})
    return [_short(c) for c in pick["command"]], pick["commit"], machines, pick["date"]


def _dates(dates: list[str]) -> str:
    days = sorted({d[:10] for d in dates})
    return "-" if not days else days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"


def index() -> str:
    """The data files and what wrote them (CAMVID: where the CamVid folder was on the measuring machine)."""
    lines = ["| file | rows | recorded | commit(s) | machine(s) | written by |", "|---|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        rows = (
            len(data["rows"])
            if isinstance(data, dict) and "rows" in data
            else 1
            if isinstance(data, dict)
            else len(data)
        )
        commands, commits, machines, dates = _provenance(data)
        commits_shown = ", ".join(commits) if len(commits) <= 3 else f"{len(commits)} commits"
        if len(commands) == 1:
            command = f"`{commands[0]}`"
        else:  # one command per row: the script
            scripts = sorted({re.search(r"benchmarks/\w+\.py", c)[0] for c in commands if "benchmarks/" in c})
            command = f"{len(commands)} commands of {', '.join(f'`{s}`' for s in scripts)} (one per row)"
        lines.append(
            f"| `{path.name}` | {rows} | {_dates(dates)} | {commits_shown} | {'; '.join(machines)} | {command} |"
        )
    return "\n".join(lines)


def table(name: str) -> str:
    """A table a benchmark saved with ``ResultsTable`` (``benchmarks/results/NAME``): its rows as Markdown, then its
    protocol, notes and provenance."""
    data = load(name)
    columns: dict[str, str] = data["columns"]
    shown = [c for c in columns if any(row.get(c) not in (None, "") for row in data["rows"])]
    lines = ["| " + " | ".join(shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    for row in data["rows"]:
        cells = ["" if row.get(c) is None else columns[c].format(row[c]) for c in shown]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines += ["", f"Protocol: {data['protocol']}."]
    lines += [f"{note}" for note in data.get("notes", [])]
    lines += [
        "",
        f"Data: `benchmarks/results/{name}`, measured on {data['machine']} on {data['date'][:10]} "
        f"(commit {data['commit']}), written by:",
        "",
        "```bash",
        _short(data["command"]),
        "```",
    ]
    return "\n".join(lines)


#: the CamVid study's tables: the --report call of camvid_budget.py that prints each (files, --show, --baseline)
CAMVID: dict[str, tuple[tuple[str, ...], str, str | None]] = {
    "heldout-fcn8s": (("camvid_heldout.json", "camvid_heldout30.json"), "summary", BASELINE),
    "val": (("camvid_budget.json",), "runs", None),
    "growth": (("camvid_pair30_fcn4s.json", "camvid_gamma30.json", "camvid_x008.json"), "summary", BASELINE),
    "pair30": (("camvid_pair30.json",), "summary", BASELINE),
    "sqrt": (("camvid_pair30_sqrt.json",), "summary", BASELINE),
    "dusk": (("camvid_dusk30.json",), "summary", "fcnkit nw+regnetx_006+image_norm+bf16+enet tta_flip_ms_up"),
    "ablation10": (("camvid_ablation10.json",), "ablation", "fcnkit"),
    "screen10": (("camvid_screen10.json",), "ablation", "fcnkit"),
    "screen10-nw": (("camvid_screen10.json",), "ablation", "fcnkit no_class_weights"),
}


def _camvid_script():
    import importlib.util

    if "camvid_budget" not in sys.modules:  # its dataclass needs the module registered while it loads
        spec = importlib.util.spec_from_file_location("camvid_budget", REPO / "benchmarks" / "camvid_budget.py")
        sys.modules["camvid_budget"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["camvid_budget"])
    return sys.modules["camvid_budget"]


def camvid(name: str) -> str:
    """A table of the CamVid study, printed by ``camvid_budget.py --report`` from its data files."""
    files, show, baseline = CAMVID[name]
    script = _camvid_script()
    rows = [row for f in files for row in script.load_rows(RESULTS / f)]
    baseline = baseline or "fcnkit"  # the script's default
    shown = {"summary": lambda: script.report(rows, baseline), "runs": lambda: script.run_lines(rows)}
    shown["ablation"] = lambda: script.ablation_lines(rows, baseline)
    command = "python benchmarks/camvid_budget.py --report " + " ".join(f"benchmarks/results/{f}" for f in files)
    command += "" if show == "summary" else f" --show {show}"
    command += f" --baseline '{baseline}'" if baseline != "fcnkit" else ""
    machines = sorted({r.cpu or "not recorded" for r in rows})
    return "\n".join(
        [
            "```text",
            f"$ {command}",
            *shown[show](),
            "```",
            "",
            f"Recorded {_dates([r.date for r in rows if r.date])}; machines: {'; '.join(machines)}. The training commands "
            f"of these rows: `{command.split(' --show')[0].split(' --baseline')[0]} --show commands`.",
        ]
    )


TABLES: dict[str, Callable[[], str]] = {
    "camvid-heldout": camvid_heldout,
    "serve-load": serve_load,
    "index": index,
    "speed-summary": speed_summary,
}
#: tables with an argument: ``table:FILE.json`` and ``camvid:NAME``
FAMILIES: dict[str, Callable[[str], str]] = {"table": table, "camvid": camvid}


def render(text: str) -> str:
    """``text`` with every marked table regenerated; an unknown table name is an error."""

    def fill(m: re.Match) -> str:
        name = m["name"]
        family, _, argument = name.partition(":")
        if name in TABLES:
            body = TABLES[name]()
        elif family in FAMILIES and argument:
            body = FAMILIES[family](argument)
        else:
            raise SystemExit(f"unknown table {name!r} (known: {', '.join(TABLES)}, table:FILE, camvid:NAME)")
        return f"{m.group(1)}{body}\n{m.group(4)}"

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
