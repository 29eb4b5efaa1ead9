"""The command line, end to end: in-process, and as a subprocess where the exact stderr matters."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import fcnkit
from fcnkit.cli import main


def test_models_lists_param_counts(capsys):
    assert main(["models", "*vgg16", "--params"]) == 0
    out = capsys.readouterr().out
    assert "fcn32s_vgg16" in out and "136,152,917" in out and "134,815,994" in out
    assert out.count("134,489,759") == 2  # FCN-8s and at-once


def test_forward_prints_output_shape(capsys):
    assert main(["forward", "fcn_resnet18_d16", "--size", "33x47", "--num-classes", "4"]) == 0
    assert "out: (1, 4, 33, 47)" in capsys.readouterr().out


def test_typo_gets_suggestion_and_exit_code_2(capsys):
    assert main(["forward", "fcn8s_vgg61"]) == 2
    assert "Did you mean: fcn8s_vgg16" in capsys.readouterr().err


def test_bad_size_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["forward", "fcn8s_vgg16", "--size", "big"])
    assert info.value.code == 2
    assert "HxW" in capsys.readouterr().err


def _run_fcnkit(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fcnkit", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


class _Payload:
    """Unpickling this runs ``os.system``: what a malicious checkpoint does."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_and_truncated_checkpoints_are_one_line_errors(tmp_path, capsys):
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    marker = tmp_path / "payload_ran"
    torch.save({"state_dict": {}, "x": _Payload(str(marker))}, tmp_path / "evil.pth")
    good = fcnkit.save_checkpoint(tmp_path / "good.pth", fcnkit.create_model("fcn_resnet18_d16", num_classes=2))
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 3])
    (tmp_path / "notes.pth").write_text("not a checkpoint at all")
    expected = {
        "evil.pth": r"refused to load \S*evil\.pth: it holds pickled code objects \((posix|nt)\.system\)",
        "truncated.pth": r"\S*truncated\.pth is truncated or not a PyTorch file",
        "notes.pth": r"\S*notes\.pth is (truncated or )?not a PyTorch file",
    }
    # The malicious file end to end, as a user runs it: stderr is that one line, no traceback, no warning.
    done = _run_fcnkit("predict", str(tmp_path / "evil.pth"), str(image), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(r"fcnkit: error: " + expected["evil.pth"] + r".*", lines[0]), lines
    assert not marker.exists()  # refused before anything ran
    for name, pattern in expected.items():  # the same three files in-process: one line each, exit status 2
        assert main(["predict", str(tmp_path / name), str(image), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.fullmatch(r"fcnkit: error: " + pattern + r".*", err[0]), (name, err)
    assert not marker.exists()


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(args):
        raise ValueError("an internal mistake, not the user's")  # a plain ValueError is not a named error

    monkeypatch.setattr("fcnkit.cli.models.cmd_forward", broken)
    with pytest.raises(ValueError, match="internal mistake"):
        main(["forward", "fcn_resnet18_d16"])


def test_named_errors_print_one_line_and_exit_2(tmp_path, capsys):
    assert main(["predict", "fcn_resnet18_d16.no_such_tag", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fcnkit: error: ") and "no published weights" in err[0]
    assert main(["predict", str(tmp_path / "absent.pth"), "x.png", "--out", str(tmp_path / "o")]) == 2
    assert "absent.pth" in capsys.readouterr().err
