"""CutMix, MixUp and Mosaic of training batches, on batches whose every pixel says where it came from."""

from __future__ import annotations

import pytest
import torch

from fcnkit.data.mixing import BatchMixer, _box, cutmix, mixup, mosaic
from fcnkit.errors import ConfigError


def constant_batch(b: int = 4, h: int = 8, w: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample k is the value k everywhere: image (float, 3 channels) and label alike."""
    values = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1)
    return values.expand(b, 3, h, w).clone(), values[:, 0].expand(b, h, w).long().clone()


def test_cutmix_pastes_the_partners_box_into_image_and_label():
    images, labels = constant_batch()
    perm = torch.tensor([2, 3, 0, 1])
    out, out_labels = cutmix(images, labels, perm, (1, 2, 3, 4))
    for i in range(4):
        inside = torch.zeros(8, 8, dtype=torch.bool)
        inside[1:4, 2:6] = True
        assert (out_labels[i][inside] == perm[i]).all() and (out_labels[i][~inside] == i).all()
        assert (out[i][:, inside] == float(perm[i])).all() and (out[i][:, ~inside] == float(i)).all()
    assert (labels == torch.arange(4).view(4, 1, 1)).all()  # the input is left alone


def test_mixup_blends_images_and_keeps_both_labels():
    images, labels = constant_batch()
    perm = torch.tensor([1, 0, 3, 2])
    out, partner = mixup(images, labels, perm, 0.3)
    expected = 0.3 * torch.arange(4.0) + 0.7 * perm.float()
    torch.testing.assert_close(out[:, 0, 0, 0], expected)
    assert torch.equal(partner, labels[perm])


def test_mosaic_puts_four_half_size_samples_around_the_centre():
    images, labels = constant_batch()
    perms = [torch.tensor([1, 2, 3, 0]), torch.tensor([2, 3, 0, 1]), torch.tensor([3, 0, 1, 2])]
    out, out_labels = mosaic(images, labels, perms, (4, 4), ignore_index=255)
    # centre in the middle: each quadrant is exactly one half-size (4 x 4) sample
    for i in range(4):
        quadrants = [out_labels[i, :4, :4], out_labels[i, :4, 4:], out_labels[i, 4:, :4], out_labels[i, 4:, 4:]]
        sources = [i, int(perms[0][i]), int(perms[1][i]), int(perms[2][i])]
        for q, src in zip(quadrants, sources, strict=True):
            assert (q == src).all()
    # off-centre (2, 6): the top-left quadrant is 2 x 6, its 4-wide sample touches the centre, the rest is pad
    out, out_labels = mosaic(images, labels, perms, (2, 6), ignore_index=255)
    assert (out_labels[0, :2, 2:6] == 0).all() and (out_labels[0, :2, :2] == 255).all()
    assert (out[0, :, :2, :2] == 0).all()  # padding is 0, the mean after normalisation
    assert (out_labels[0, :2, 6:] == 1).all()  # top-right: 2 x 2 of sample perms[0][0] = 1
    assert (out_labels[0, 2:6, :2] == 255).all() and (out_labels[0, 2:6, 2:6] == 2).all()  # bottom-left
    assert (out_labels[0, 6:] == 255).all()  # below the half-size samples


def test_batch_mixer_is_seeded_by_its_key_and_follows_its_probabilities():
    images, labels = constant_batch(b=6, h=16, w=16)
    batch = {"image": images, "label": labels, "name": list("abcdef")}
    mixer = BatchMixer(mosaic=0.25, cutmix=0.25, mixup=0.25, alpha=1.0, ignore_index=255)
    kinds = [mixer(batch, (0, 0, 0, i)).get("mixed") for i in range(400)]
    counts = {k: kinds.count(k) for k in ("mosaic", "cutmix", "mixup", None)}
    assert all(70 <= n <= 130 for n in counts.values()), counts  # 100 each expected
    a, b = mixer(batch, (3, 0, 1, 7)), mixer(batch, (3, 0, 1, 7))
    assert a.get("mixed") == b.get("mixed") and torch.equal(a["image"], b["image"])
    assert torch.equal(a["label"], b["label"])
    mixup_only = BatchMixer(mixup=1.0)(batch, (0, 0, 0, 0))
    assert mixup_only["mixed"] == "mixup" and 0.0 <= mixup_only["lam"] <= 1.0 and "label_b" in mixup_only
    assert BatchMixer()(batch, (0, 0, 0, 0)) is batch
    with pytest.raises(ConfigError, match="must not exceed 1"):
        BatchMixer(mosaic=0.6, cutmix=0.6)
    with pytest.raises(ConfigError, match="probability"):
        BatchMixer(mixup=-0.1)


def test_cutmix_box_covers_one_minus_lam_unless_clipped_at_the_border():
    g = torch.Generator().manual_seed(0)
    h, w = 60, 80
    inside = 0
    for lam in (0.1, 0.5, 0.9, 0.99):
        r = (1 - lam) ** 0.5
        full = round(h * r) * round(w * r)
        for _ in range(50):
            top, left, bh, bw = _box(h, w, lam, g)
            assert top >= 0 and left >= 0 and top + bh <= h and left + bw <= w
            assert bh * bw <= full
            if top > 0 and left > 0 and top + bh < h and left + bw < w:  # not clipped: exactly (1 - lam) h w
                assert bh * bw == full
                inside += 1
    assert inside > 20


@pytest.mark.slow
def test_training_with_every_mix_resumes_to_the_same_weights(tmp_path):
    from fcnkit.engine.train import train
    from synthetic_data import make_folder_dataset
    from test_train import tiny_config

    root = make_folder_dataset(tmp_path / "data")
    common = ("data.mosaic=0.3", "data.cutmix=0.3", "data.mixup=0.3", "pictures=0", "eval_every=0",
              "deterministic=true", "checkpoint_every=1")  # fmt: skip
    whole = train(tiny_config(root, tmp_path / "whole", *common))
    assert whole.steps == 6
    assert train(tiny_config(root, tmp_path / "split", *common, "max_steps=2")).steps == 2
    assert train(tiny_config(root, tmp_path / "split", *common)).steps == 6
    a = torch.load(tmp_path / "whole" / "last.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "split" / "last.pth", weights_only=True)["state_dict"]
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


MIX_IN_A_NEW_PROCESS = """
import sys, torch
from fcnkit.data.mixing import BatchMixer
images = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 3, 16, 16).contiguous()
labels = torch.arange(6).view(6, 1, 1).expand(6, 16, 16).contiguous()
out = BatchMixer(mosaic=0.3, cutmix=0.3, mixup=0.3)({"image": images, "label": labels}, (4, 0, 2, 9))
torch.save({"mixed": out.get("mixed"), "image": out["image"], "label": out["label"]}, sys.argv[1])
"""


@pytest.mark.slow
def test_mixing_draws_are_the_same_in_every_process(tmp_path):
    """Resuming runs in a new process, with a new string-hash seed: the draws must not depend on it."""
    import os
    import subprocess
    import sys

    files = []
    for hash_seed in ("1", "2"):
        path = tmp_path / f"mix{hash_seed}.pt"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", MIX_IN_A_NEW_PROCESS, str(path)], env=env, check=True, timeout=120)
        files.append(torch.load(path, weights_only=True))
    a, b = files
    assert a["mixed"] == b["mixed"] is not None
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
