"""The base-layer helpers: device names, eval mode, size pairs, optional imports, logit parity."""

import pytest
import torch
from torch import nn

from fcnkit.errors import ConfigError, FcnkitError, MissingDependencyError
from fcnkit.utils import as_pair, compare_logits, eval_mode, require, resolve_device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_eval_mode_restores_the_mode_also_on_errors():
    model = nn.Sequential(nn.Dropout(0.5)).train()
    with eval_mode(model):
        assert not model.training and not model[0].training
    assert model.training and model[0].training
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("inside")
    assert model.training
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training  # an eval-mode model stays in eval mode


def test_as_pair():
    assert as_pair(5) == (5, 5) and as_pair([7]) == (7, 7) and as_pair((3, 4)) == (3, 4)
    with pytest.raises(ConfigError, match=r"crop must be N, \[N\] or \[H, W\], got \[1, 2, 3\]"):
        as_pair([1, 2, 3], "crop")


def test_require_names_the_extra():
    assert require("math", "none", "arithmetic").sqrt(4.0) == 2.0
    with pytest.raises(MissingDependencyError, match=r"pip install 'fcnkit\[onnx\]'") as info:
        require("no_such_module_for_fcnkit", "onnx", "ONNX export")
    assert isinstance(info.value, (ImportError, FcnkitError))


def test_compare_logits_hand_worked():
    expected = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # (1, 2, 1, 2): arg-max (0, 1)
    got = torch.tensor([[[[1.5, 3.0]], [[0.0, 2.0]]]])  # arg-max (0, 0): one pixel of two differs
    parity = compare_logits(expected, got)
    assert parity.max_abs_diff == 3.0 and parity.max_abs_logit == 2.0 and parity.argmax_agreement == 0.5
    assert not parity.passed(atol=1.0, rtol=0.0)
    assert parity.passed(atol=0.0, rtol=0.0, min_agreement=0.5, exact_logits=False)  # arg-max only
    assert compare_logits(expected, expected.clone()).passed(atol=0.0, rtol=0.0, min_agreement=1.0)


def test_preprocessing_gives_the_formula_s_values_and_leaves_the_input_alone():
    """(x * scale - mean) / std, computed in place on a new tensor: the same float32 values as the plain formula,
    BGR reversing the channels first, and a float input is never modified."""
    import torch

    from fcnkit.preprocessing import IMAGENET, Preprocessing

    x = torch.randint(0, 256, (2, 3, 9, 11), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(IMAGENET.mean).view(3, 1, 1), torch.tensor(IMAGENET.std).view(3, 1, 1)
    assert torch.equal(IMAGENET(x), (x.float() * IMAGENET.scale - mean) / std)
    bgr = Preprocessing("BGR", 1.0, (101.0, 112.0, 123.0), (51.0, 62.0, 73.0))
    expected = (x.float().flip(1) - torch.tensor([101.0, 112.0, 123.0]).view(3, 1, 1)) / torch.tensor(
        [51.0, 62.0, 73.0]
    ).view(3, 1, 1)
    assert torch.equal(bgr(x), expected)
    floats = x.float()
    kept = floats.clone()
    IMAGENET(floats)
    assert torch.equal(floats, kept)
