"""benchmarks/train_speed.py --config: the training loop of a recipe against its own compute, on a tiny folder."""

import importlib.util
import logging
from pathlib import Path

import pytest

from synthetic_data import make_folder_dataset
from test_train import tiny_overrides

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("train_speed", REPO / "benchmarks" / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_loop_variants_are_timed_against_compute_in_one_table(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="fcnkit")
    root = make_folder_dataset(tmp_path / "data", n_train=8, n_val=2, size=(40, 48))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("pictures: 0\nema_decay: 0.99\n")
    overrides = tiny_overrides(root, tmp_path / "unused")
    argv = ["--config", str(recipe), "--set", *overrides, "--rounds", "1", "--warmup", "1",
            "--variant", "data.cache=true", "--variant", "data.cache=false"]  # fmt: skip
    assert _script().main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line[:46].strip(): line[46:].split() for line in lines[2:5]}
    assert list(table) == ["compute", "data.cache=true", "data.cache=false"]
    assert table["compute"][2] == "100.0%"
    compute_rate = float(table["compute"][1])
    for name in ("data.cache=true", "data.cache=false"):
        rate, ratio = float(table[name][1]), float(table[name][2].rstrip("%"))
        # one round: the ratio is the variant's images/s over compute's
        assert rate > 0 and ratio == pytest.approx(100 * rate / compute_rate, abs=0.06)
    # 8 samples in batches of 4: two steps per compute round and per epoch
    assert "compute = 2 steps of the loop's step code" in lines[-1] and "1 rounds" in lines[-1]
    # only the cached variant decoded its samples into memory
    decoded = [r.getMessage() for r in caplog.records if "decoded into memory" in r.getMessage()]
    assert len(decoded) == 1 and decoded[0].startswith("data.cache: 8 training samples")
