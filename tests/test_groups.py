"""Splits by group (drive, video, scene): CamVid drives, folder-format groups, `fcnkit data check`, training."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnkit.cli import main
from fcnkit.config import load_config
from fcnkit.data import build_dataset, shared_groups
from fcnkit.engine.loader import check_command
from fcnkit.engine.run import build_run
from fcnkit.errors import ConfigError, DataError
from synthetic_data import make_folder_dataset

#: frames per drive and split, as in SegNet's CamVid (in miniature): val's drive also has train frames
CAMVID_FRAMES = {"train": {"0001TP": 2, "0006R0": 3, "0016E5": 2}, "val": {"0016E5": 2}}


@pytest.fixture
def camvid_root(tmp_path: Path) -> Path:
    root = tmp_path / "CamVid"
    for split, drives in CAMVID_FRAMES.items():
        lines = []
        for drive, count in drives.items():
            for i in range(count):
                name = f"{drive}_{split}{i:03d}"
                for folder, array in (
                    (split, np.zeros((4, 6, 3), np.uint8)),
                    (f"{split}annot", np.zeros((4, 6), np.uint8)),
                ):
                    (root / folder).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(array).save(root / folder / f"{name}.png")
                lines.append(f"{split}/{name}.png {split}annot/{name}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_camvid_groups_are_drives_and_splits_combine(camvid_root):
    train, val = build_dataset("camvid", camvid_root, "train"), build_dataset("camvid", camvid_root, "val")
    assert train.group_counts() == {"0001TP": 2, "0006R0": 3, "0016E5": 2} and val.group_counts() == {"0016E5": 2}
    assert shared_groups(train, val) == ["0016E5"]  # SegNet's val leaks: its drive is also in train
    # the held-out-drive protocol: train on train + val without 0006R0, validate on 0006R0 only
    fold_train = build_dataset("camvid", camvid_root, "train+val", exclude_groups=["0006R0"])
    fold_val = build_dataset("camvid", camvid_root, "train+val", groups=["0006R0"])
    assert fold_train.group_counts() == {"0001TP": 2, "0016E5": 4} and len(fold_val) == 3
    assert shared_groups(fold_train, fold_val) == []
    assert {s.name for s in fold_val.samples} == {"0006R0_train000", "0006R0_train001", "0006R0_train002"}
    with pytest.raises(ConfigError, match=r"no sample is in group '0006RO'\. Did you mean: 0006R0"):
        build_dataset("camvid", camvid_root, "train", groups=["0006RO"])
    with pytest.raises(ConfigError, match=r"no sample is in group '0006RO'\. Did you mean: 0006R0"):
        build_dataset("camvid", camvid_root, "train", exclude_groups=["0006RO"])  # a typo, not an absent drive
    assert len(build_dataset("camvid", camvid_root, "val", exclude_groups=["0006R0"])) == 2  # absent here: fine
    with pytest.raises(ConfigError, match=r"'train\+'"):
        build_dataset("camvid", camvid_root, "train+")


def test_folder_groups_from_a_pattern_or_a_file(tmp_path):
    root = make_folder_dataset(tmp_path / "data", n_train=6, n_val=2)  # stems s000 .. s005 and s000, s001
    by_pattern = build_dataset("folder", root, "train", group_pattern=r"s00([0-2])")
    assert by_pattern.group_counts() == {"0": 1, "1": 1, "2": 1}  # s003..s005 match no group
    assert build_dataset("folder", root, "train", group_pattern=r"s00([0-2])", groups=[1, 2]).group_counts() == {
        "1": 1,
        "2": 1,
    }  # numbers from YAML name the groups "1" and "2"
    assert build_dataset("folder", root, "train").group_counts() == {}  # no pattern, no file: no groups
    with pytest.raises(ConfigError, match="assigns no groups"):
        build_dataset("folder", root, "train", groups=["a"])
    (root / "groups.txt").write_text("# stem group\ns000 street1\ns001 street1\ns002 street2\ns003 street2\n"
                                     "s004 street3\ns005 street3\n")  # fmt: skip
    train = build_dataset("folder", root, "train", exclude_groups=["street1"])
    val = build_dataset("folder", root, "val")
    assert [s.name for s in train.samples] == ["s002", "s003", "s004", "s005"]
    assert val.group_counts() == {"street1": 2} and shared_groups(train, val) == []
    both = build_dataset("folder", root, "train+val", groups=["street1"])
    assert len(both) == 4 and both.split == "train+val"
    (root / "groups.txt").write_text("s000\n")
    with pytest.raises(DataError, match=r"groups\.txt:1: expected '<stem> <group>'"):
        build_dataset("folder", root, "train")


def test_data_check_lists_groups_and_warns_about_shared_ones(camvid_root, capsys):
    assert main(["data", "check", "camvid", "--root", str(camvid_root), "--split", "train", "--split", "val"]) == 0
    captured = capsys.readouterr()
    assert "groups (3): 0001TP 2, 0006R0 3, 0016E5 2" in captured.out and "groups (1): 0016E5 2" in captured.out
    assert "warning: splits 'train' and 'val' share 1 group(s): 0016E5." in captured.err
    # with the leaking drive held out of train, nothing is shared
    argv = ["data", "check", "camvid", "--root", str(camvid_root), "--split", "train", "--split", "val",
            "--option", "exclude_groups=[0016E5]"]  # fmt: skip
    assert main(argv) == 2  # val is then empty: a named error, not a traceback
    assert "split 'val' is empty" in capsys.readouterr().err
    argv[-1] = "exclude_groups=[0001TP]"
    assert main(argv) == 0 and "share" in capsys.readouterr().err


def test_training_warns_when_train_and_val_share_groups(tmp_path, caplog):
    root = make_folder_dataset(tmp_path / "data", n_train=4, n_val=2)
    (root / "groups.txt").write_text("s000 a\ns001 b\ns002 c\ns003 c\n")  # val's s000 / s001: groups a, b
    overrides = ["model.name=fcn_resnet18_d16", "data.name=folder", f"data.root={root}", "data.workers=0",
                 f"output_dir={tmp_path / 'run'}"]  # fmt: skip
    caplog.set_level(logging.WARNING, logger="fcnkit")
    build_run(load_config(None, overrides))
    assert any("train and val share 2 group(s) (a, b)" in r.getMessage() for r in caplog.records)
    caplog.clear()
    cfg = load_config(None, [*overrides, "data.options={exclude_groups: [a, b]}", "data.val_options={}"])
    build_run(cfg)
    assert not [r for r in caplog.records if "share" in r.getMessage()]
    assert check_command(cfg.data) == (
        f'fcnkit data check folder --root {root} --split train --option \'exclude_groups=["a","b"]\''
    )
