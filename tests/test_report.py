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
    assert "README.md" in report.stale(tmp_path)
    assert report.main([]) == 0 and report.stale(tmp_path) == []
    assert "**46.55** (48.01 / 45.08)" in (tmp_path / "README.md").read_text()  # (48.01 + 45.08) / 2
    # a table edited by hand
    text = (tmp_path / "README.md").read_text()
    (tmp_path / "README.md").write_text(text.replace("**46.55**", "**50.00**"))
    assert report.stale(tmp_path) == ["README.md"]
