"""FCNKIT_REQUIRE_ALL=1 (conftest.py): a skip for a missing package fails, a skip for anything else stays a skip.

A small suite written to tmp_path, with this directory's conftest.py, run by pytest in a subprocess with and
without the variable: a module that ``pytest.importorskip``s a package at its top, a test that does so in its
body, a test skipped for want of a GPU and one that passes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = {
    "test_whole_module.py": """
import pytest
pytest.importorskip("fcnkit_no_such_package")

def test_needs_it():
    pass
""",
    "test_mixed.py": """
import pytest

def test_imports_inside():
    pytest.importorskip("fcnkit_no_such_package")

def test_needs_a_gpu():
    pytest.skip("needs a CUDA device")

def test_plain():
    pass
""",
}


def _run(folder: Path, require_all: bool) -> tuple[dict[str, int], str]:
    env = {k: v for k, v in os.environ.items() if k != "FCNKIT_REQUIRE_ALL"}
    env["COLUMNS"] = "1000"  # the summary's lines whole, not cut to 80 columns
    if require_all:
        env["FCNKIT_REQUIRE_ALL"] = "1"
    command = [sys.executable, "-m", "pytest", "-ra", "-p", "no:cacheprovider", "-p", "no:timeout", str(folder)]
    proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    last = proc.stdout.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", last)}
    return counts, proc.stdout


@pytest.mark.slow
def test_missing_package_skips_fail_under_require_all_and_other_skips_stay(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    for name, text in SUITE.items():
        (tmp_path / name).write_text(text)

    counts, out = _run(tmp_path, require_all=False)
    assert counts == {"passed": 1, "skipped": 3}, out

    counts, out = _run(tmp_path, require_all=True)
    assert counts == {"passed": 1, "failed": 2, "skipped": 1}, out
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 2, out
    assert failed[0].startswith("FAILED test_mixed.py::test_imports_inside - FCNKIT_REQUIRE_ALL=1"), out
    assert failed[1].startswith("FAILED test_whole_module.py::required_packages - FCNKIT_REQUIRE_ALL=1"), out
    assert all("could not import 'fcnkit_no_such_package'" in line for line in failed), out
    assert "SKIPPED [1] test_mixed.py:" in out and "needs a CUDA device" in out, out
