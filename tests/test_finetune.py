"""Fine-tuning to another set of classes: model.init_from loads what matches and re-initialises the classifier."""

import logging

import pytest
import torch
import torchvision

import fcnkit
from fcnkit.engine.train import train
from fcnkit.errors import CheckpointError
from synthetic_data import make_folder_dataset
from test_data_traps import make_binary_masks
from test_train import tiny_config

TINY = {"backbone": "regnetx_002", "upsample": "bilinear"}


@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory):
    root = make_folder_dataset(tmp_path_factory.mktemp("ft_data"), n_train=8, n_val=2)
    out = tmp_path_factory.mktemp("ft_run") / "run"
    train(tiny_config(root, out, "pictures=0", "schedule.epochs=1", "ema_decay=0.9"))
    return out / "best.pth"


def test_finetune_copies_what_matches_and_keeps_a_fresh_classifier(three_class_run):
    source = torch.load(three_class_run, weights_only=True)["state_dict"]
    torch.manual_seed(5)
    model = fcnkit.create_model("fcn8s_timm", num_classes=2, **TINY)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = fcnkit.finetune_from(model, three_class_run)
    state = model.state_dict()
    assert report.reinitialised and all(k.startswith("classifier.") for k in report.reinitialised)
    for key in report.reinitialised:  # the class-count layers are this model's own initialisation
        assert source[key].shape[0] == 3 and state[key].shape[0] == 2 and torch.equal(state[key], fresh[key])
    for key in report.loaded:  # everything else is the source's (the evaluated weights of best.pth)
        assert torch.equal(state[key], source[key])
    assert len(report.loaded) + len(report.reinitialised) == len(state) and not report.not_in_source
    assert any(k.startswith("backbone.") for k in report.loaded)
    assert "re-initialised for another class count: classifier." in report.format()


def test_a_recipe_fine_tunes_a_checkpoint_to_a_new_folder_dataset_and_logs_it(three_class_run, tmp_path, caplog):
    root = make_binary_masks(tmp_path / "lesions")
    (root / "classes.yaml").write_text("classes: [background, lesion]\nlabel_map: {255: 1}\n")
    caplog.set_level(logging.INFO, logger="fcnkit")
    result = train(
        tiny_config(root, tmp_path / "ft", "pictures=0", "schedule.epochs=1", f"model.init_from={three_class_run}")
    )
    assert f"init_from {three_class_run}:" in caplog.text and "re-initialised for another class count" in caplog.text
    model = fcnkit.load_checkpoint(result.run_dir / "best.pth")
    assert model.classes == ["background", "lesion"] and model.num_classes == 2


def test_a_torchvision_file_with_21_classes_starts_a_3_class_model(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True)
    torch.save(tv.state_dict(), tmp_path / "fcn_resnet50_coco.pth")
    model = fcnkit.create_model("fcn_resnet50_d8", num_classes=3, aux=True)
    report = fcnkit.finetune_from(model, tmp_path / "fcn_resnet50_coco.pth")
    assert sorted(report.reinitialised) == [
        "aux_classifier.4.bias", "aux_classifier.4.weight", "classifier.4.bias", "classifier.4.weight"
    ]  # fmt: skip
    reference = tv.state_dict()
    assert all(torch.equal(model.state_dict()[k], reference[k]) for k in report.loaded)
    assert len(report.loaded) == len(reference) - 4


def test_a_mismatch_outside_the_classifier_is_an_error(three_class_run):
    model = fcnkit.create_model("fcn8s_timm", num_classes=3, backbone="regnetx_004", upsample="bilinear")
    with pytest.raises(CheckpointError, match="Only classifier layers may differ"):
        fcnkit.finetune_from(model, three_class_run)
