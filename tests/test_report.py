"""benchmarks/report.py: the committed results tables equal what their data files give, and the check can fail."""

import importlib.util
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _report(repo: Path):
    spec = importlib.util.spec_from_file_location("report", repo / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_tables_match_their_data():
    report = _report(REPO)
    assert report.stale() == []
    readme = (REPO / "README.md").read_text()
    assert "<!-- report:camvid-heldout -->" in readme  # the README's results table is a generated one


def test_a_changed_figure_or_a_hand_edit_is_caught(tmp_path):
    for part in ("benchmarks", "docs"):
        shutil.copytree(REPO / part, tmp_path / part)
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    report = _report(tmp_path)
    report.REPO, report.RESULTS = tmp_path, tmp_path / "benchmarks" / "results"
    assert report.stale(tmp_path) == []
    # the data changes: one seed of the recipe scored 1 point more
    path = report.RESULTS / "camvid_x008.json"
    rows = json.loads(path.read_text())
    rows[1]["miou"] += 1.0  # seed 1 with the passes, 0006R0: 47.01 -> 48.01
    path.write_text(json.dumps(rows))
    # the README's summary and the study's table of how the recipe grew both come from that file
    assert {"README.md", "docs/studies/camvid.md"} <= set(report.stale(tmp_path))
    assert report.main([]) == 0 and report.stale(tmp_path) == []
    assert "**46.55** (48.01 / 45.08)" in (tmp_path / "README.md").read_text()  # (48.01 + 45.08) / 2
    # a table edited by hand
    text = (tmp_path / "README.md").read_text()
    (tmp_path / "README.md").write_text(text.replace("**46.55**", "**50.00**"))
    assert report.stale(tmp_path) == ["README.md"]


def test_a_saved_results_table_renders_with_its_formats_and_provenance(tmp_path):
    from fcnkit.apps.benchmark import ResultsTable

    report = _report(REPO)
    report.RESULTS = tmp_path
    table = ResultsTable({"path": "{}", "median ms": "{:.1f}", "vs peer": "{:.2f}x", "check": "{}"}, command="x")
    table.provenance["command"] = "python benchmarks/peer_speed.py --calib /data/x/shared/data/camvid/train"
    table.add(path="peer", **{"median ms": 1198.34, "vs peer": 1.0})
    table.add(path="fcnkit a|b", **{"median ms": 861.05, "vs peer": 1.3917})
    table.protocol = "batch 1"
    table.save(tmp_path / "speed.json")
    lines = report.table("speed.json").splitlines()
    # the empty check column is left out; a | inside a cell is escaped; the machine's CamVid path becomes CAMVID
    assert lines[:4] == [
        "| path | median ms | vs peer |",
        "|---|---|---|",
        "| peer | 1198.3 | 1.00x |",
        "| fcnkit a\\|b | 861.0 | 1.39x |",
    ]
    assert "Protocol: batch 1." in lines
    assert lines[-2] == "python benchmarks/peer_speed.py --calib CAMVID/train"
    assert f"(commit {table.provenance['commit']})" in lines[-5]


def test_commands_of_one_fold_merge_their_seeds_and_passes():
    cb = _report(REPO)._camvid_script()
    base = "python benchmarks/camvid_budget.py --data CAMVID --runs fcnkit --tag t --set a=1"
    commands = [
        f"{base} --fold 0006R0 --seeds 1",
        f"{base} --fold 0006R0 --seeds 1 --tta flip_ms_up",
        f"{base} --fold 0006R0 --seeds 2 --tta flip_ms_up",
        f"{base} --fold 0001TP --seeds 1",
        "PYTHONPATH=src python x.py --fold 0006R0 --seeds 5   # at 59a981e",
        f"{base} --seeds 0",  # SegNet's val split: no --fold
        f"{base} --seeds 1",
    ]
    assert cb.merge_commands(commands) == [
        f"{base} --fold 0006R0 --seeds 1 2 --tta flip_ms_up",
        f"{base} --fold 0001TP --seeds 1",
        "PYTHONPATH=src python x.py --fold 0006R0 --seeds 5   # at 59a981e",
        f"{base} --seeds 0 1",  # no dangling --fold
    ]
