"""benchmarks/train_speed.py --config: the training loop of a recipe against its own compute, on a tiny folder."""

import importlib.util
import json
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
            "--variant", "data.cache=true", "--variant", "data.cache=false", "--json", str(tmp_path / "t.json")]  # fmt: skip
    assert _script().main(argv) == 0
    saved = json.loads((tmp_path / "t.json").read_text())
    table = {row["setting"]: row for row in saved["rows"]}
    assert list(table) == ["compute", "data.cache=true", "data.cache=false"]
    assert table["compute"]["vs compute"] == 1.0
    compute_rate = table["compute"]["images/s"]
    for name in ("data.cache=true", "data.cache=false"):
        rate, ratio = table[name]["images/s"], table[name]["vs compute"]
        # one round: the ratio is the variant's images/s over compute's
        assert rate > 0 and ratio == pytest.approx(rate / compute_rate, rel=1e-9)
    # 8 samples in batches of 4: two steps per compute round and per epoch
    assert "compute = 2 steps of the loop's step code" in saved["protocol"] and "1 rounds" in saved["protocol"]
    # what was printed is the saved table
    out = capsys.readouterr().out
    assert all(line in out for line in ("setting", "data.cache=false", f"protocol: {saved['protocol']}"))
    # only the cached variant decoded its samples into memory
    decoded = [r.getMessage() for r in caplog.records if "decoded into memory" in r.getMessage()]
    assert len(decoded) == 1 and decoded[0].startswith("data.cache: 8 training samples")
