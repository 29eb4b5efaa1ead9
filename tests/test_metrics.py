"""ConfusionMatrix / SegMetrics against torchmetrics, a hand-worked example and the Caffe numpy formulas."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
)

from fcnkit.metrics import ConfusionMatrix, SegMetrics, metrics_from_matrix, miou_zero_for_absent

IGNORE = 255


def random_batch(seed: int, num_classes: int = 5, shape: tuple[int, ...] = (3, 17, 23)) -> tuple[torch.Tensor, ...]:
    """Random labels where every class occurs in both gt and prediction, plus ~10% ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, shape, generator=g)
    # Predictions agree with the target ~60% of the time so that the scores are not all near 1/C.
    pred = torch.where(torch.rand(shape, generator=g) < 0.6, target, torch.randint(0, num_classes, shape, generator=g))
    target[torch.rand(shape, generator=g) < 0.1] = IGNORE
    return pred, target


def caffe_scores(hist: np.ndarray) -> dict[str, float]:
    """shelhamer/fcn.berkeleyvision.org score.py / torchfcn label_accuracy_score, written out in numpy."""
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(hist).sum() / hist.sum()
        acc_cls = np.nanmean(np.diag(hist) / hist.sum(axis=1))
        iu = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
        mean_iu = np.nanmean(iu)
        freq = hist.sum(axis=1) / hist.sum()
        fwavacc = (freq[freq > 0] * iu[freq > 0]).sum()
    return {"pixel_acc": acc, "mean_acc": acc_cls, "miou": mean_iu, "fwiou": fwavacc}


def test_against_torchmetrics_every_class_present():
    c = 5
    pred, target = random_batch(0, c)
    cm = ConfusionMatrix(c, ignore_index=IGNORE)
    # Two updates: the matrix must accumulate over the split, not be replaced.
    cm.update(pred[:2], target[:2])
    cm.update(pred[2], target[2])
    m = cm.compute()

    tm_cm = MulticlassConfusionMatrix(c, ignore_index=IGNORE)(pred, target)
    assert torch.equal(cm.matrix, tm_cm.long())
    tm_iou = MulticlassJaccardIndex(c, average=None, ignore_index=IGNORE)(pred, target)
    torch.testing.assert_close(m.iou.float(), tm_iou, rtol=0, atol=1e-6)
    tm_miou = MulticlassJaccardIndex(c, average="macro", ignore_index=IGNORE)(pred, target)
    assert m.miou == pytest.approx(float(tm_miou), abs=1e-6)
    tm_pix = MulticlassAccuracy(c, average="micro", ignore_index=IGNORE)(pred, target)
    assert m.pixel_acc == pytest.approx(float(tm_pix), abs=1e-6)
    tm_macc = MulticlassAccuracy(c, average="macro", ignore_index=IGNORE)(pred, target)
    assert m.mean_acc == pytest.approx(float(tm_macc), abs=1e-6)
    tm_acc = MulticlassAccuracy(c, average=None, ignore_index=IGNORE)(pred, target)
    torch.testing.assert_close(m.acc.float(), tm_acc, rtol=0, atol=1e-6)

    ref = caffe_scores(cm.matrix.numpy())
    assert m.fwiou == pytest.approx(ref["fwiou"], abs=1e-12)
    assert 0.0 < m.fwiou < 1.0
    for metric, ours, mean in (
        (MulticlassPrecision, m.precision, m.mean_precision),
        (MulticlassRecall, m.recall, m.mean_recall),
        (MulticlassF1Score, m.dice, m.mean_dice),
    ):
        per_class = metric(c, average=None, ignore_index=IGNORE)(pred, target)
        torch.testing.assert_close(ours.float(), per_class, rtol=0, atol=1e-6)
        assert mean == pytest.approx(float(metric(c, average="macro", ignore_index=IGNORE)(pred, target)), abs=1e-6)


def test_hand_worked_example():
    # Four classes: 0 and 1 occur in gt and pred, 2 is only predicted (IoU 0, counted), 3 never occurs outside
    # ignored pixels (excluded). The two last pixels are ignored; one of them predicts class 3.
    target = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, IGNORE, IGNORE]])
    pred = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 1, 3, 0]])
    expected = torch.tensor(
        [
            # pred: 0  1  2  3
            [3, 1, 1, 0],  # gt 0: 5 pixels
            [1, 2, 0, 0],  # gt 1: 3 pixels
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ]
    )
    cm = ConfusionMatrix(4, ignore_index=IGNORE)
    cm.update(pred, target)  # (H, W) input
    assert torch.equal(cm.matrix, expected)

    m = cm.compute()
    # IoU: class 0: 3 / (5 + 4 - 3) = 1/2; class 1: 2 / (3 + 3 - 2) = 1/2; class 2: 0 / (0 + 1 - 0) = 0;
    # class 3: 0 / 0 -> excluded.
    assert m.iou[:3].tolist() == [0.5, 0.5, 0.0]
    assert math.isnan(m.iou[3])
    assert m.miou == pytest.approx(1 / 3)
    # Accuracy: class 0: 3/5, class 1: 2/3; classes 2 and 3 have no gt pixel -> excluded.
    assert m.acc[:2].tolist() == pytest.approx([0.6, 2 / 3])
    assert math.isnan(m.acc[2]) and math.isnan(m.acc[3])
    assert m.mean_acc == pytest.approx((0.6 + 2 / 3) / 2)
    assert m.pixel_acc == pytest.approx(5 / 8)
    # fwIoU: 5/8 * 1/2 + 3/8 * 1/2.
    assert m.fwiou == pytest.approx(0.5)
    ref = caffe_scores(expected.numpy().astype(np.float64))
    for key, value in ref.items():
        assert getattr(m, key) == pytest.approx(value), key
    # FastFCN: (1/2 + 1/2 + 0 + 0) / 4.
    assert miou_zero_for_absent(cm.matrix) == pytest.approx(0.25)
    # Precision: class 0: 3 of 4 predicted, class 1: 2 of 3, class 2: 0 of 1; class 3 never predicted -> excluded.
    assert m.precision[:3].tolist() == pytest.approx([0.75, 2 / 3, 0.0]) and math.isnan(m.precision[3])
    assert m.mean_precision == pytest.approx((0.75 + 2 / 3) / 3)
    # Dice: 2 tp / (gt + pred): class 0: 6/9, class 1: 4/6, class 2: 0/1; class 3 excluded. Dice = 2 IoU / (1 + IoU).
    assert m.dice[:3].tolist() == pytest.approx([2 / 3, 2 / 3, 0.0]) and math.isnan(m.dice[3])
    assert m.mean_dice == pytest.approx(4 / 9)
    assert m.recall is m.acc and m.mean_recall == m.mean_acc


def test_fwiou_random_against_numpy_formula():
    pred, target = random_batch(3, num_classes=7, shape=(2, 31, 29))
    target[target == 6] = 2  # class 6 then occurs in prediction only
    cm = ConfusionMatrix(7)
    cm.update(pred, target)
    m = cm.compute()
    ref = caffe_scores(cm.matrix.numpy().astype(np.float64))
    for key, value in ref.items():
        assert getattr(m, key) == pytest.approx(value, abs=1e-12), key
    assert m.iou[6] == 0.0


def test_ignore_index_is_excluded():
    pred, target = random_batch(1)
    cm_all = ConfusionMatrix(5)
    cm_all.update(pred, target)
    valid = target != IGNORE
    cm_valid = ConfusionMatrix(5)
    cm_valid.update(pred[valid], target[valid])
    assert torch.equal(cm_all.matrix, cm_valid.matrix)
    assert int(cm_all.matrix.sum()) == int(valid.sum())


def test_other_ignore_value_and_uint8_labels():
    target = torch.tensor([[0, 1, 2, 3]], dtype=torch.uint8)
    pred = torch.tensor([[0, 1, 1, 0]], dtype=torch.uint8)
    cm = ConfusionMatrix(3, ignore_index=3)
    cm.update(pred, target)
    assert int(cm.matrix.sum()) == 3
    assert cm.compute().pixel_acc == pytest.approx(2 / 3)


@pytest.mark.parametrize("bad", [7, -1, 5])
def test_out_of_range_label_raises(bad):
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[1, 2, 3] = bad
    cm = ConfusionMatrix(5)
    with pytest.raises(ValueError, match=str(bad)):
        cm.update(torch.zeros_like(target), target)
    assert int(cm.matrix.sum()) == 0  # nothing half-counted


def test_bad_prediction_and_inputs_raise():
    cm = ConfusionMatrix(3)
    target = torch.zeros(4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="9"):
        cm.update(torch.full((4, 4), 9), target)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(4, 5, dtype=torch.long), target)
    with pytest.raises(TypeError, match="argmax"):
        cm.update(torch.zeros(4, 4), target)


def test_reset_and_empty():
    pred, target = random_batch(2)
    cm = ConfusionMatrix(5)
    cm.update(pred, target)
    cm.reset()
    assert int(cm.matrix.sum()) == 0
    m = cm.compute()
    assert math.isnan(m.miou) and math.isnan(m.pixel_acc) and math.isnan(m.fwiou)


def test_two_ranks_equal_one_pass():
    p1, t1 = random_batch(10)
    p2, t2 = random_batch(11)
    rank0, rank1, single = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    rank0.update(p1, t1)
    rank1.update(p2, t2)
    single.update(torch.cat([p1, p2]), torch.cat([t1, t2]))
    summed = rank0.matrix + rank1.matrix
    assert torch.equal(summed, single.matrix)
    a, b = metrics_from_matrix(summed), single.compute()
    assert (a.pixel_acc, a.mean_acc, a.miou, a.fwiou) == (b.pixel_acc, b.mean_acc, b.miou, b.fwiou)
    assert torch.equal(a.iou, b.iou)


def test_all_reduce_is_noop_without_process_group():
    pred, target = random_batch(4)
    cm = ConfusionMatrix(5)
    cm.update(pred, target)
    before = cm.matrix.clone()
    cm.all_reduce()
    assert torch.equal(cm.matrix, before)


# Each rank is a fresh interpreter that imports only torch and fcnkit.metrics (not this module, whose
# torchmetrics import would double the start-up time). Rank r counts the labels 0..4 repeated r + 1 times.
_RANK_SCRIPT = """
import sys, torch, torch.distributed as dist
from fcnkit.metrics import ConfusionMatrix
rank, init_file, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2)
labels = torch.arange(5).repeat(rank + 1)
cm = ConfusionMatrix(5)
cm.update(labels.flip(0), labels)
cm.all_reduce()
if rank == 0:
    torch.save(cm.matrix, out)
dist.destroy_process_group()
"""


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
@pytest.mark.slow
def test_all_reduce_two_real_processes(tmp_path):
    out = tmp_path / "matrix.pt"
    procs = [
        subprocess.Popen([sys.executable, "-c", _RANK_SCRIPT, str(rank), str(tmp_path / "init"), str(out)])
        for rank in range(2)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    single = ConfusionMatrix(5)
    for rank in range(2):
        labels = torch.arange(5).repeat(rank + 1)
        single.update(labels.flip(0), labels)
    assert torch.equal(torch.load(out), single.matrix)
    assert int(single.matrix.sum()) == 15


def test_as_dict_and_table():
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    m = cm.compute()
    assert isinstance(m, SegMetrics)
    d = m.as_dict()
    assert d["pixel_acc"] == pytest.approx(0.75)
    assert len(d["iou"]) == 3 and math.isnan(d["iou"][2])
    table = m.table(["background", "cat", "dog"])
    assert "background" in table and "dog" in table
    # class 1: IoU 2/3 -> 66.67 %; headline pixel acc 75.00 %.
    assert "66.67" in table and "75.00" in table
    dog_line = next(line for line in table.splitlines() if line.startswith("dog"))
    assert "-" in dog_line and "0.00" not in dog_line
    # cat: IoU 66.67, Acc 100.00 (recall 2/2), Prec 66.67 (2 of 3 predicted), Dice 80.00 (4 / 5)
    cat_line = next(line for line in table.splitlines() if line.startswith("cat"))
    assert cat_line.split()[1:] == ["66.67", "100.00", "66.67", "80.00"]
    assert d["dice"][1] == pytest.approx(0.8) and d["precision"][0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="class names"):
        m.table(["a", "b"])
