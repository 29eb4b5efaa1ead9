import os

import pytest
import torch

# Deterministic, quiet and cheap on 2 cores.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never read or write the user's weights cache; never reach the network."""
    monkeypatch.setenv("FCNKIT_CACHE", str(tmp_path / "fcnkit-cache"))
    monkeypatch.setenv("FCNKIT_OFFLINE", "1")
    # backend "auto" (Predictor, eval, predict) would export each test's freshly made model to ONNX: a few
    # seconds a test. The tests of that path (test_export_cache.py) delete this.
    monkeypatch.setenv("FCNKIT_BACKEND", "torch")


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and BN statistic a non-trivial random value (zero-initialised score layers
    and identity BN statistics would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim >= 2:
                fan_in = t[0].numel() if t.ndim == 4 else t.shape[1]
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model
