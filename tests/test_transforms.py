"""Joint transforms and pad_collate, on crafted samples whose expected output is known by construction."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from fcnkit.data import EvalTransform, TrainTransform, pad_collate
from fcnkit.data.transforms import _resize_label_fast, adjust_gamma, jitter_colour, resize_label
from fcnkit.errors import ConfigError
from fcnkit.preprocessing import CAFFE_BGR, IMAGENET


def coded_sample(h: int, w: int, num_classes: int = 10) -> dict:
    """A sample whose red channel is ``20 * label`` everywhere, so alignment can be checked pixel by pixel.

    Label values vary along both axes (no symmetry a flip or crop could hide behind).
    """
    rows = torch.arange(h).view(-1, 1)
    cols = torch.arange(w).view(1, -1)
    label = (rows * 3 + cols * 7) % num_classes
    image = torch.stack([label * 20, (rows * 5 + cols) % 256 * torch.ones_like(label), 255 - label * 10]).to(
        torch.uint8
    )
    return {"image": image, "label": label.long(), "name": "coded"}


def red_of(image: torch.Tensor, preprocessing=IMAGENET) -> torch.Tensor:
    return preprocessing.invert(image)[0]


def test_eval_transform_only_normalises():
    sample = coded_sample(5, 7)
    out = EvalTransform(IMAGENET)(sample)
    assert out["image"].dtype == torch.float32 and out["image"].shape == (3, 5, 7)
    torch.testing.assert_close(out["image"], IMAGENET(sample["image"]))
    assert out["label"] is sample["label"] and out["name"] == "coded"


def test_crop_output_size_and_alignment():
    torch.manual_seed(0)
    t = TrainTransform(IMAGENET, crop_size=(6, 9), scale_range=None, hflip=0.5)
    for _ in range(10):
        out = t(coded_sample(20, 30))
        assert out["image"].shape == (3, 6, 9) and out["label"].shape == (6, 9)
        assert out["label"].dtype == torch.int64
        torch.testing.assert_close(red_of(out["image"]), out["label"].float() * 20, atol=1e-3, rtol=0)


@pytest.mark.parametrize("preprocessing", [IMAGENET, CAFFE_BGR], ids=["imagenet", "caffe_bgr"])
def test_padding_label_ignore_and_image_zero(preprocessing):
    sample = coded_sample(4, 5)
    t = TrainTransform(preprocessing, crop_size=8, scale_range=None, hflip=0.0, ignore_index=11)
    out = t(sample)
    image, label = out["image"], out["label"]
    assert image.shape == (3, 8, 8)
    # The image stays at the top-left; everything else is padding.
    assert torch.equal(label[:4, :5], sample["label"])
    assert (label[4:] == 11).all() and (label[:, 5:] == 11).all()  # the ignore value, not 0
    torch.testing.assert_close(image[:, :4, :5], preprocessing(sample["image"]))
    torch.testing.assert_close(image[:, 4:], torch.zeros(3, 4, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(image[:, :, 5:], torch.zeros(3, 8, 3), atol=1e-5, rtol=0)


def test_padding_stays_zero_with_colour_jitter():
    torch.manual_seed(1)
    t = TrainTransform(IMAGENET, crop_size=10, scale_range=None, hflip=0.0, color_jitter=0.5)
    sample = coded_sample(6, 6)
    out = t(sample)
    assert not torch.allclose(out["image"][:, :6, :6], IMAGENET(sample["image"]))  # jitter did something
    torch.testing.assert_close(out["image"][:, 6:], torch.zeros(3, 4, 10), atol=1e-5, rtol=0)
    assert (out["label"][6:] == 255).all()


def test_flip_flips_image_and_label_together():
    sample = coded_sample(5, 7)
    flipped = TrainTransform(IMAGENET, crop_size=None, scale_range=None, hflip=1.0)(sample)
    torch.testing.assert_close(flipped["image"], IMAGENET(sample["image"]).flip(-1))
    assert torch.equal(flipped["label"], sample["label"].flip(-1))
    assert flipped["label"][0, 0] == sample["label"][0, -1] != sample["label"][0, 0]
    kept = TrainTransform(IMAGENET, crop_size=None, scale_range=None, hflip=0.0)(sample)
    assert torch.equal(kept["label"], sample["label"])


def test_rescale_by_two_keeps_blocks_aligned():
    blocks = torch.tensor([[0, 1, 2], [3, 4, 5]])
    label = blocks.repeat_interleave(4, 0).repeat_interleave(4, 1)  # (8, 12), 4x4 blocks
    image = (label * 40).to(torch.uint8).expand(3, -1, -1).clone()
    out = TrainTransform(IMAGENET, crop_size=None, scale_range=(2.0, 2.0), hflip=0.0)(
        {"image": image, "label": label, "name": "b"}
    )
    expected = blocks.repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert out["label"].shape == (16, 24) and torch.equal(out["label"], expected)
    red = red_of(out["image"])
    # Inside each 8x8 block (away from the one-pixel blend at block edges) bilinear is exact.
    for by in range(2):
        for bx in range(3):
            inner = red[by * 8 + 1 : by * 8 + 7, bx * 8 + 1 : bx * 8 + 7]
            torch.testing.assert_close(inner, torch.full_like(inner, 40.0 * int(blocks[by, bx])), atol=0.6, rtol=0)


def test_resize_label_nearest_keeps_values():
    label = torch.tensor([[0, 1], [2, -1]])
    assert torch.equal(resize_label(label, (4, 4)), label.repeat_interleave(2, 0).repeat_interleave(2, 1))
    big = torch.arange(16).view(4, 4)
    assert resize_label(big, (2, 2)).tolist() == [[5, 7], [13, 15]]  # the pixel nearest each output centre


def test_base_size_sets_the_long_side():
    t = TrainTransform(IMAGENET, crop_size=None, scale_range=(1.0, 1.0), base_size=20, hflip=0.0)
    out = t(coded_sample(10, 16))
    assert out["image"].shape == (3, 13, 20) and out["label"].shape == (13, 20)  # 10 * 20 / 16 = 12.5 -> 13


def test_random_scale_is_reproducible_under_a_seed():
    t = TrainTransform(IMAGENET, crop_size=None, scale_range=(0.5, 2.0), color_jitter=0.3)
    sample = coded_sample(16, 20)

    def run(seed: int) -> list[dict]:
        torch.manual_seed(seed)
        return [t(sample) for _ in range(4)]

    first, again, other = run(0), run(0), run(1)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert [o["label"].shape for o in first] != [o["label"].shape for o in other]
    assert len({o["label"].shape for o in first}) > 1  # the scale really varies

    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    t1 = TrainTransform(IMAGENET, crop_size=8, generator=g1)
    t2 = TrainTransform(IMAGENET, crop_size=8, generator=g2)
    torch.manual_seed(123)  # the global RNG is not used when a generator is given
    a = t1(sample)
    torch.manual_seed(456)
    b = t2(sample)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_train_transform_rejects_unlabelled_and_bad_arguments():
    t = TrainTransform(IMAGENET, crop_size=4)
    with pytest.raises(ValueError, match="label"):
        t({"image": torch.zeros(3, 4, 4, dtype=torch.uint8), "name": "x"})
    with pytest.raises(ValueError, match="scale_range"):
        TrainTransform(IMAGENET, crop_size=4, scale_range=(2.0, 1.0))


def test_pad_collate_shapes_and_pad_values():
    a = {"image": torch.ones(3, 4, 5), "label": torch.zeros(4, 5, dtype=torch.long), "name": "a"}
    b = {"image": torch.full((3, 6, 3), 2.0), "label": torch.ones(6, 3, dtype=torch.long), "name": "b"}
    batch = pad_collate([a, b], ignore_index=11)
    assert batch["image"].shape == (2, 3, 6, 5) and batch["label"].shape == (2, 6, 5)
    assert batch["label"].dtype == torch.int64
    assert batch["size"] == [(4, 5), (6, 3)] and batch["name"] == ["a", "b"]
    assert (batch["image"][0, :, :4, :5] == 1).all() and (batch["image"][0, :, 4:] == 0).all()
    assert (batch["image"][1, :, :, :3] == 2).all() and (batch["image"][1, :, :, 3:] == 0).all()
    assert (batch["label"][0, :4, :5] == 0).all() and (batch["label"][0, 4:] == 11).all()
    assert (batch["label"][1, :, :3] == 1).all() and (batch["label"][1, :, 3:] == 11).all()


def test_pad_collate_in_a_dataloader():
    samples = [EvalTransform(IMAGENET)(coded_sample(h, w)) for h, w in [(5, 7), (6, 4), (3, 3)]]
    loader = torch.utils.data.DataLoader(
        samples, batch_size=3, collate_fn=functools.partial(pad_collate, ignore_index=255)
    )
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, 6, 7) and batch["size"] == [(5, 7), (6, 4), (3, 3)]
    assert (batch["label"][2, 3:] == 255).all()

    unlabelled = [{"image": torch.zeros(3, 2, 2), "name": "u"}]
    assert "label" not in pad_collate(unlabelled, ignore_index=255)
    with pytest.raises(ValueError, match="label"):
        pad_collate([samples[0], *unlabelled], ignore_index=255)


def test_crop_of_a_rescaled_image_equals_the_crop_of_the_whole_image_rescaled():
    """The transform resizes only the crop's window: it must match rescaling the whole frame, then cropping."""
    torch.manual_seed(0)
    sample = coded_sample(30, 40, num_classes=12)
    sample["label"] = sample["label"].to(torch.uint8)  # as the memory cache keeps it
    t = TrainTransform(IMAGENET, crop_size=(12, 16), scale_range=(2.0, 2.0), hflip=0.0)
    for _ in range(5):
        g = torch.Generator().manual_seed(int(torch.randint(0, 1000, ())))
        t.generator = g
        state = g.get_state()
        out = t(sample)
        g.set_state(state)
        torch.rand((), generator=g)  # the scale draw
        top, left = (int(torch.randint(0, hi + 1, (), generator=g)) for hi in (30 - 6, 40 - 8))  # source window
        whole = TF.resize(sample["image"], [60, 80], antialias=False)
        expected_label = resize_label(sample["label"].long(), (60, 80))[
            2 * top : 2 * top + 12, 2 * left : 2 * left + 16
        ]
        assert out["label"].dtype == torch.int64 and torch.equal(out["label"], expected_label)
        expected = IMAGENET(whole[:, 2 * top : 2 * top + 12, 2 * left : 2 * left + 16])
        # away from the window's border, where bilinear would blend with pixels outside the window
        torch.testing.assert_close(out["image"][:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=0.02, rtol=0)


def test_window_past_the_image_is_padded_and_keeps_the_scale():
    t = TrainTransform(IMAGENET, crop_size=(20, 20), scale_range=(2.0, 2.0), hflip=0.0, ignore_index=99)
    sample = coded_sample(6, 8)  # rescaled 12 x 16: smaller than the crop on both sides
    out = t(sample)
    assert out["label"].shape == (20, 20)
    assert torch.equal(out["label"][:12, :16], resize_label(sample["label"], (12, 16)))
    assert (out["label"][12:] == 99).all() and (out["label"][:, 16:] == 99).all()


def test_colour_jitter_matches_torchvision_on_float_images():
    """jitter_colour on 0-255 floats = torchvision's three adjustments on the same image in 0-1, times 255."""
    g = torch.Generator().manual_seed(3)
    image = torch.rand(3, 9, 11, generator=g)
    for b, c, s in [(1.2, 0.8, 1.1), (0.7, 1.3, 0.6), (1.0, 1.0, 1.0)]:
        expected = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(image, b), c), s) * 255
        torch.testing.assert_close(jitter_colour(image * 255, b, c, s), expected, atol=1e-3, rtol=0)


def test_gamma_matches_torchvision_on_float_images():
    """adjust_gamma on 0-255 floats = torchvision's adjust_gamma (gain 1) on the same image in 0-1, times 255."""
    g = torch.Generator().manual_seed(4)
    image = torch.rand(3, 7, 9, generator=g)
    for gamma in (0.5, 0.8, 1.0, 1.7):
        expected = TF.adjust_gamma(image, gamma) * 255
        torch.testing.assert_close(adjust_gamma(image * 255, gamma), expected, atol=1e-3, rtol=0)
    assert adjust_gamma(torch.tensor([64.0]), 0.5).item() == pytest.approx(255 * (64 / 255) ** 0.5)
    with pytest.raises(ConfigError, match="gamma"):
        adjust_gamma(image, 0.0)


def test_gamma_jitter_draws_log_uniform_gammas_in_range():
    """On a flat grey image the gamma of each draw can be read back: log(out / 255) / log(in / 255)."""
    t = TrainTransform(IMAGENET, crop_size=None, scale_range=None, hflip=0.0, gamma_jitter=1.0)
    grey = {"image": torch.full((3, 4, 4), 64, dtype=torch.uint8), "label": torch.zeros(4, 4, dtype=torch.long)}
    torch.manual_seed(0)
    gammas = []
    for _ in range(400):
        out = red_of(t(grey)["image"])
        assert torch.allclose(out, out[0, 0].expand_as(out), atol=1e-3)  # one curve for the whole image
        gammas.append(math.log(out[0, 0].item() / 255) / math.log(64 / 255))
    log_g = torch.tensor(gammas).log()
    # 1 + gamma_jitter = 2: gamma in [0.5, 2], log-uniform on [-ln 2, ln 2] (mean 0, sd ln 2 / sqrt 3 = 0.400)
    assert min(gammas) >= 0.5 - 1e-3 and max(gammas) <= 2 + 1e-3
    assert abs(log_g.mean().item()) < 0.06 and abs(log_g.std().item() - math.log(2) / math.sqrt(3)) < 0.04
    assert (log_g < -0.5).any() and (log_g > 0.5).any()  # both tails are drawn
    with pytest.raises(ConfigError, match="gamma_jitter"):
        TrainTransform(IMAGENET, crop_size=None, gamma_jitter=-0.1)


def test_fast_label_resize_agrees_with_the_exact_one_on_uint8():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 12, (37, 53), generator=g, dtype=torch.uint8)
    for size in [(74, 106), (20, 31), (37, 53), (50, 90)]:
        assert torch.equal(_resize_label_fast(label, size), resize_label(label, size))
    wide = torch.tensor([[300, -5], [7, 255]])  # not uint8: the exact path
    assert torch.equal(_resize_label_fast(wide, (4, 4)), resize_label(wide, (4, 4)))


def test_image_standardisation_undoes_brightness_and_contrast_but_not_gamma():
    """Why ``gamma_jitter`` exists beside ``color_jitter`` under ``input_norm: image``: per-channel standardisation
    removes any per-channel affine change (brightness scales, contrast scales and shifts), not a gamma curve."""
    from fcnkit.models.segmenter import image_standardisation

    norm = image_standardisation("image")
    g = torch.Generator().manual_seed(6)
    image = 40 + 150 * torch.rand(3, 12, 16, generator=g)  # away from 0 and 255: no clamping below
    plain = norm(image[None])
    for b, c in [(1.2, 0.8), (0.8, 1.25)]:
        jittered = jitter_colour(image.clone(), b, c, 1.0)
        torch.testing.assert_close(norm(jittered[None]), plain, atol=1e-3, rtol=0)
    assert (norm(adjust_gamma(image.clone(), 1.5)[None]) - plain).abs().max() > 0.05
