"""SegmentationLoss against F.cross_entropy, hand-computed OHEM, and median frequency weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fcnkit.losses import SegmentationLoss, class_presence, class_weights_from_counts, median_frequency_weights

IGNORE = 255


def make_batch(seed: int = 0, b: int = 2, c: int = 4, h: int = 6, w: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, h, w, generator=g, requires_grad=True)
    target = torch.randint(0, c, (b, h, w), generator=g)
    target[torch.rand(b, h, w, generator=g) < 0.2] = IGNORE
    return logits, target


def test_mean_matches_torch():
    logits, target = make_batch()
    loss, parts = SegmentationLoss()({"out": logits}, target)
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE)
    torch.testing.assert_close(loss, expected)
    assert parts == pytest.approx({"main": expected.item(), "total": expected.item()})


def test_sum_is_mean_times_valid_pixels():
    logits, target = make_batch(1)
    mean, _ = SegmentationLoss(reduction="mean")({"out": logits}, target)
    total, _ = SegmentationLoss(reduction="sum")({"out": logits}, target)
    n_valid = int((target != IGNORE).sum())
    assert 0 < n_valid < target.numel()
    torch.testing.assert_close(total, mean * n_valid)
    torch.testing.assert_close(total, F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum"))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_class_weights_and_label_smoothing_match_torch(reduction, smoothing):
    logits, target = make_batch(2)
    weights = [0.5, 2.0, 1.0, 3.0]
    loss, _ = SegmentationLoss(reduction=reduction, class_weights=weights, label_smoothing=smoothing)(logits, target)
    expected = F.cross_entropy(
        logits,
        target,
        weight=torch.tensor(weights),
        ignore_index=IGNORE,
        reduction=reduction,
        label_smoothing=smoothing,
    )
    torch.testing.assert_close(loss, expected)


def test_aux_weight_adds_weighted_aux_loss():
    logits, target = make_batch(3)
    aux, _ = make_batch(4)
    loss, parts = SegmentationLoss(aux_weight=0.4)({"out": logits, "aux": aux, "se": torch.randn(2, 4)}, target)
    main = F.cross_entropy(logits, target, ignore_index=IGNORE)
    aux_loss = F.cross_entropy(aux, target, ignore_index=IGNORE)
    torch.testing.assert_close(loss, main + 0.4 * aux_loss)
    assert parts["main"] == pytest.approx(main.item())
    assert parts["aux"] == pytest.approx(aux_loss.item())
    assert parts["total"] == pytest.approx((main + 0.4 * aux_loss).item())


def test_aux_ignored_when_weight_is_zero():
    logits, target = make_batch(3)
    aux, _ = make_batch(4)
    loss, parts = SegmentationLoss()({"out": logits, "aux": aux}, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target, ignore_index=IGNORE))
    assert "aux" not in parts


def test_class_presence_by_hand():
    target = torch.tensor([[[0, 0, 2], [255, 2, 2]], [[255, 255, 255], [255, 255, 255]], [[3, 1, 255], [1, 1, 0]]])
    expected = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 1]], dtype=torch.float32)
    assert torch.equal(class_presence(target, 4, IGNORE), expected)
    with pytest.raises(ValueError, match="outside"):
        class_presence(torch.tensor([[[4]]]), 4, IGNORE)


def test_se_loss_is_weighted_bce_on_class_presence():
    logits, target = make_batch(5)
    target[1] = torch.where(target[1] == 3, IGNORE, target[1])  # image 1 lacks class 3
    se = torch.randn(2, 4, requires_grad=True)
    loss, parts = SegmentationLoss(se_weight=0.2)({"out": logits, "se": se}, target)
    presence = torch.tensor([[float((target[b] == c).any()) for c in range(4)] for b in range(2)])
    assert presence[1, 3] == 0 and presence[0].sum() == 4
    # the binary cross-entropy written out: -(y log s + (1 - y) log(1 - s)), averaged over B x C
    sig = se.detach().sigmoid()
    bce = -(presence * sig.log() + (1 - presence) * (1 - sig).log()).mean()
    main = F.cross_entropy(logits, target, ignore_index=IGNORE)
    torch.testing.assert_close(loss, main + 0.2 * bce)
    assert parts["se"] == pytest.approx(bce.item(), rel=1e-5)
    loss.backward()
    assert se.grad is not None and torch.isfinite(se.grad).all()
    with pytest.raises(ValueError, match="se_loss=True"):
        SegmentationLoss(se_weight=0.2)({"out": logits}, target)


def test_missing_aux_raises_with_hint():
    logits, target = make_batch()
    with pytest.raises(ValueError, match="aux=True"):
        SegmentationLoss(aux_weight=0.5)({"out": logits}, target)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored_gives_zero_loss_and_finite_grads(reduction, weighted):
    logits, _ = make_batch()
    target = torch.full((2, 6, 7), IGNORE)
    crit = SegmentationLoss(reduction=reduction, class_weights=[1.0, 2.0, 3.0, 4.0] if weighted else None)
    loss, parts = crit({"out": logits}, target)
    assert loss.item() == 0.0 and parts["total"] == 0.0
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert float(logits.grad.abs().sum()) == 0.0


def ohem_example() -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """2 classes, one image of 1 x 10 pixels, the true class always 0; its probability is chosen per pixel.

    With logits (log p, log(1 - p)) the softmax probability of class 0 is exactly p. The last pixel is ignored.
    """
    probs = [0.9, 0.1, 0.6, 0.3, 0.8, 0.2, 0.95, 0.4, 0.7, 0.05]
    p = torch.tensor(probs, dtype=torch.float64)
    logits = torch.stack([p.log(), (1 - p).log()]).view(1, 2, 1, 10).float().requires_grad_(True)
    target = torch.zeros(1, 1, 10, dtype=torch.long)
    target[0, 0, 9] = IGNORE
    return logits, target, probs


@pytest.mark.parametrize(
    ("thresh", "min_kept", "kept_probs"),
    [
        (0.35, 0, [0.1, 0.3, 0.2]),  # below the threshold
        (0.35, 5, [0.1, 0.3, 0.2, 0.4, 0.6]),  # min_kept hardest, more than the threshold keeps
        (0.35, 2, [0.1, 0.3, 0.2]),  # the threshold keeps more than min_kept
        (0.01, 1, [0.1]),  # nothing below the threshold: only the hardest
        (1.0, 0, [0.9, 0.1, 0.6, 0.3, 0.8, 0.2, 0.95, 0.4, 0.7]),  # every valid pixel, never the ignored one
        (0.01, 50, [0.9, 0.1, 0.6, 0.3, 0.8, 0.2, 0.95, 0.4, 0.7]),  # min_kept capped at the valid count
    ],
)
def test_ohem_keeps_expected_pixels(thresh, min_kept, kept_probs):
    logits, target, probs = ohem_example()
    crit = SegmentationLoss(ohem_thresh=thresh, ohem_min_kept=min_kept)
    mask = crit.hard_pixel_mask(logits, target)
    assert sorted(p for p, keep in zip(probs, mask.flatten().tolist(), strict=True) if keep) == sorted(kept_probs)

    loss, _ = crit({"out": logits}, target)
    expected_mean = sum(-math.log(p) for p in kept_probs) / len(kept_probs)
    assert loss.item() == pytest.approx(expected_mean, rel=1e-5)
    total, _ = SegmentationLoss(reduction="sum", ohem_thresh=thresh, ohem_min_kept=min_kept)(logits, target)
    assert total.item() == pytest.approx(expected_mean * len(kept_probs), rel=1e-5)


def test_ohem_min_kept_scales_with_batch():
    logits, target, _ = ohem_example()
    logits2, target2 = torch.cat([logits, logits]), torch.cat([target, target])
    mask = SegmentationLoss(ohem_thresh=0.01, ohem_min_kept=3).hard_pixel_mask(logits2, target2)
    assert int(mask.sum()) == 6  # 3 per image, counted over the batch as mmseg does


def test_argument_validation():
    logits, target = make_batch()
    with pytest.raises(ValueError, match="reduction"):
        SegmentationLoss(reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ohem_thresh"):
        SegmentationLoss(ohem_min_kept=10)
    with pytest.raises(ValueError, match="class_weights"):
        SegmentationLoss(class_weights=[1.0, 2.0])({"out": logits}, target)
    with pytest.raises(ValueError, match="label resolution"):
        SegmentationLoss()({"out": logits[:, :, :3]}, target)


def test_from_config_takes_the_loss_section_whole():
    from fcnkit.config import LossConfig

    logits, target = make_batch(4)
    cfg = LossConfig(
        reduction="sum", class_weights=[0.5, 2.0, 1.0, 3.0], label_smoothing=0.1, ohem_thresh=0.7, ohem_min_kept=5
    )
    built = SegmentationLoss.from_config(cfg, ignore_index=IGNORE)
    direct = SegmentationLoss(
        ignore_index=IGNORE,
        reduction="sum",
        class_weights=[0.5, 2.0, 1.0, 3.0],
        label_smoothing=0.1,
        ohem_thresh=0.7,
        ohem_min_kept=5,
    )
    assert repr(built) == repr(direct)
    torch.testing.assert_close(built(logits, target)[0], direct(logits, target)[0])
    # computed weights replace the section's (which may name the method, "median_frequency")
    weighted = SegmentationLoss.from_config(LossConfig(class_weights="median_frequency"), class_weights=[1.0, 2.0])
    assert weighted.class_weights.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match=r"median_frequency.*computed from the training labels"):
        SegmentationLoss.from_config(LossConfig(class_weights="median_frequency"))
    with pytest.raises(ValueError, match="reduction must be one of mean, sum"):
        SegmentationLoss.from_config(LossConfig(reduction="avg"))  # type: ignore[arg-type]


def test_median_frequency_weights():
    # Frequencies over 70 labelled pixels: 1/7, 2/7, 4/7 (class 3 never occurs); median 2/7.
    w = median_frequency_weights([10, 20, 40, 0])
    torch.testing.assert_close(w, torch.tensor([2.0, 1.0, 0.5, 0.0]))
    # SegNet's denominator: pixels of the images in which the class appears.
    # freq = 10/100, 20/50, 40/400 = 0.1, 0.4, 0.1; median 0.1.
    w = median_frequency_weights(torch.tensor([10.0, 20.0, 40.0]), image_pixel_counts=[100, 50, 400])
    torch.testing.assert_close(w, torch.tensor([1.0, 0.25, 1.0]))
    # Even number of classes: mean of the two middle frequencies, (0.2 + 0.3) / 2.
    w = median_frequency_weights([10, 20, 30, 40])
    torch.testing.assert_close(w, torch.tensor([2.5, 1.25, 2.5 / 3, 0.625]))


# ------------------------------------------------------------------------ Dice, Tversky, focal, Lovász


def _logits_and_target():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 7, 9, generator=g)
    target = torch.randint(0, 4, (2, 7, 9), generator=g)
    target[target == 3] = 1  # class 3 is absent from the batch
    target[0, :2] = 255  # two ignored rows
    return logits, target


def test_region_losses_equal_segmentation_models_pytorch():
    smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")
    from fcnkit.losses import dice_loss, lovasz_softmax_loss, tversky_loss

    logits, target = _logits_and_target()
    pairs = [
        (dice_loss(logits, target), smp_losses.DiceLoss("multiclass", ignore_index=255)(logits, target)),
        (
            tversky_loss(logits, target, alpha=0.3, beta=0.7),
            smp_losses.TverskyLoss("multiclass", ignore_index=255, alpha=0.3, beta=0.7)(logits, target),
        ),
        (lovasz_softmax_loss(logits, target), smp_losses.LovaszLoss("multiclass", ignore_index=255)(logits, target)),
    ]
    for ours, peer in pairs:
        torch.testing.assert_close(ours, peer, rtol=1e-6, atol=1e-7)
    # Tversky with alpha = beta = 1/2 is Dice
    torch.testing.assert_close(tversky_loss(logits, target), dice_loss(logits, target))


def test_lovasz_gradients_equal_segmentation_models_pytorch():
    """The batched sort of all classes gives smp's class-by-class gradient, a class absent from the batch left out."""
    smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")
    from fcnkit.losses import lovasz_softmax_loss

    logits, target = _logits_and_target()
    target = target.masked_fill(target == 2, 1)  # class 2 absent (ignored pixels stay)
    grads = []
    for loss in (lovasz_softmax_loss, smp_losses.LovaszLoss("multiclass", ignore_index=255)):
        x = logits.clone().requires_grad_(True)
        loss(x, target).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    assert grads[0].abs().sum() > 0


def test_dice_and_lovasz_hand_worked():
    from fcnkit.losses import dice_loss, lovasz_softmax_loss

    # two pixels, two classes: pixel 0 is class 0 with softmax (3/4, 1/4), pixel 1 is class 1 with (1/4, 3/4)
    logits = torch.tensor([[math.log(3), 0.0], [0.0, math.log(3)]]).view(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    torch.testing.assert_close(logits.softmax(1)[0, :, 0], torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    # Dice of each class: 2 * 3/4 / (1 + 1) = 3/4, so the loss is 1 - 3/4
    assert float(dice_loss(logits, target)) == pytest.approx(0.25)
    # Lovász, class 0: foreground (1, 0), errors |1 - 3/4| = |0 - 1/4| = 1/4 (a tie). Sorted foreground first,
    # Jaccard losses after each error are (1 - 0/1, 1 - 0/2) = (1, 1): gradient (1, 0), loss 1/4; background
    # first: (1 - 1/2, 1 - 0/2) = (1/2, 1): gradient (1/2, 1/2), loss 1/4 too. Class 1 is the mirror image.
    assert float(lovasz_softmax_loss(logits, target)) == pytest.approx(0.25)
    # a perfect, confident prediction costs (almost) nothing in both
    sure = torch.tensor([[20.0, -20.0], [-20.0, 20.0]]).view(1, 2, 1, 2)
    assert float(dice_loss(sure, target)) < 1e-6 and float(lovasz_softmax_loss(sure, target)) < 1e-6


def test_focal_loss_hand_worked_and_cross_entropy_at_gamma_0():
    from fcnkit.losses import focal_loss

    logits = torch.tensor([0.0, math.log(3)]).view(1, 2, 1, 1)  # softmax (1/4, 3/4)
    target = torch.tensor([[[1]]])
    # -(1 - 3/4)^2 * ln(3/4)
    assert float(focal_loss(logits, target, gamma=2.0)) == pytest.approx(-(0.25**2) * math.log(0.75), rel=1e-6)
    logits, target = _logits_and_target()
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0])
    for w in (None, weight):
        expected = F.cross_entropy(logits, target, weight=w, ignore_index=255)
        torch.testing.assert_close(focal_loss(logits, target, gamma=0.0, weight=w), expected, rtol=1e-6, atol=1e-6)
    assert focal_loss(logits, target, gamma=2.0) < focal_loss(logits, target, gamma=0.0)  # easy pixels weigh less


def test_segmentation_loss_sums_the_weighted_terms():
    from fcnkit.config import LossConfig
    from fcnkit.errors import ConfigError
    from fcnkit.losses import dice_loss, lovasz_softmax_loss

    logits, target = _logits_and_target()
    cfg = LossConfig(dice_weight=0.5, lovasz_weight=2.0, aux_weight=0.4)
    loss_fn = SegmentationLoss.from_config(cfg)
    aux = logits.flip(-1)
    loss, parts = loss_fn({"out": logits, "aux": aux}, target)
    ce = F.cross_entropy(logits, target, ignore_index=255)
    main = ce + 0.5 * dice_loss(logits, target) + 2.0 * lovasz_softmax_loss(logits, target)
    aux_total = F.cross_entropy(aux, target, ignore_index=255) + 0.5 * dice_loss(aux, target)
    aux_total = aux_total + 2.0 * lovasz_softmax_loss(aux, target)
    torch.testing.assert_close(loss, main + 0.4 * aux_total)
    assert parts["ce"] == pytest.approx(float(ce)) and parts["dice"] == pytest.approx(float(dice_loss(logits, target)))
    assert parts["main"] == pytest.approx(float(main)) and set(parts) == {
        "main",
        "ce",
        "dice",
        "lovasz",
        "aux",
        "total",
    }
    # cross-entropy alone keeps its old parts
    plain, plain_parts = SegmentationLoss()(logits, target)
    torch.testing.assert_close(plain, F.cross_entropy(logits, target, ignore_index=255))
    assert set(plain_parts) == {"main", "total"}
    with pytest.raises(ConfigError, match="reduction 'mean'"):
        SegmentationLoss(reduction="sum", dice_weight=1.0)
    with pytest.raises(ConfigError, match="not all 0"):
        SegmentationLoss(ce_weight=0.0)


def test_enet_and_square_root_class_weightings_by_hand():
    # ENet: 1 / ln(1.02 + share); shares 0.1, 0.3, 0.6 and an absent class
    w = class_weights_from_counts("enet", [10, 30, 60, 0])
    expected = [1 / math.log(1.12), 1 / math.log(1.32), 1 / math.log(1.62), 0.0]
    torch.testing.assert_close(w, torch.tensor(expected), rtol=1e-6, atol=0)
    assert 1 / math.log(2.02) <= float(w[:3].min()) and float(w.max()) <= 1 / math.log(1.02)
    # median frequency of [10, 20, 40] is 2, 1, 0.5: its square root
    w = class_weights_from_counts("sqrt_median_frequency", [10, 20, 40, 0])
    torch.testing.assert_close(w, torch.tensor([2**0.5, 1.0, 0.5**0.5, 0.0]), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"unknown class weighting 'inverse'.*median_frequency"):
        class_weights_from_counts("inverse", [1, 2])
