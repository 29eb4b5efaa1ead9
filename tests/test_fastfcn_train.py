"""FastFCN models in the training loop: every optional part on (JPU, aux, SE loss) and every one off."""

import json

import pytest

from fcnkit.config import load_config
from fcnkit.engine.train import train
from synthetic_data import make_folder_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("fastfcn_data"), n_train=4, n_val=1, size=(40, 48))


def _run(data, out, *overrides):
    cfg = load_config(None, [
        "data.name=folder", f"data.root={data}", "data.crop_size=[32, 32]", "data.batch_size=2", "data.workers=0",
        "optim.name=sgd", "optim.lr=0.01", "schedule.epochs=1", "max_steps=2", "log_every=1", "pictures=0",
        "eval_every=0", f"output_dir={out}", *overrides,
    ])  # fmt: skip
    result = train(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return result, [r for r in records if "loss_total" in r]


@pytest.mark.slow
def test_encnet_jpu_with_aux_and_se_loss_trains(data, tmp_path):
    result, steps = _run(
        data, tmp_path / "all_on", "model.name=enc_resnet50_jpu", "model.options={aux: true, se_loss: true}",
        "loss.aux_weight=0.2", "loss.se_weight=0.2", "optim.head_lr_mult=10",
    )  # fmt: skip
    assert result.steps == 2 and len(steps) == 2
    for r in steps:
        expected = r["loss_main"] + 0.2 * r["loss_aux"] + 0.2 * r["loss_se"]
        assert r["loss_total"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["enc_resnet50_d8", "psp_resnet50_d8", "deeplabv3_resnet50_d8"])
@pytest.mark.slow
def test_dilated_baselines_train_with_everything_off(data, tmp_path, name):
    options = "{aux: false, se_loss: false}" if name.startswith("enc") else "{aux: false}"
    result, steps = _run(data, tmp_path / name, f"model.name={name}", f"model.options={options}")
    assert result.steps == 2 and all(set(r) >= {"loss_main", "loss_total"} for r in steps)
    assert not any("loss_aux" in r or "loss_se" in r for r in steps)


def test_se_weight_without_se_branch_is_an_error_naming_the_fix(data, tmp_path):
    with pytest.raises(ValueError, match="se_loss=True"):
        _run(data, tmp_path / "bad", "model.name=enc_resnet50_d8", "model.options={se_loss: false}",
             "loss.se_weight=0.2")  # fmt: skip
