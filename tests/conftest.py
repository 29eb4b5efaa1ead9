import os
import re

import pytest
import torch

from fcnkit.utils import tune_malloc

# Deterministic, quiet and cheap on 2 cores.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

#: FCNKIT_REQUIRE_ALL=1 (scripts/test.sh sets it, having installed every extra): a test or a whole module that
#: would be skipped because an optional package is missing (or too old) fails instead, so that a run never passes
#: with tests silently left out. Skips for what no package brings (a CUDA device, glibc, the browser of the
#: serve test, which has FCNKIT_REQUIRE_BROWSER) stay skips.
REQUIRE_ALL = os.environ.get("FCNKIT_REQUIRE_ALL") == "1"
#: the reasons pytest.importorskip gives
_MISSING_PACKAGE = re.compile(r"could not import '[^']+'|module '[^']+' has __version__ .*, required is")


def _missing_package(report: pytest.CollectReport | pytest.TestReport) -> str | None:
    """The reason of a skip that a missing or too old package caused; None for any other report."""
    if not (report.skipped and isinstance(report.longrepr, tuple)):
        return None
    reason = str(report.longrepr[2])
    return reason if _MISSING_PACKAGE.search(reason) else None


def _required_message(reason: str) -> str:
    return (
        f"FCNKIT_REQUIRE_ALL=1, and this was skipped for a missing package ({reason}). "
        "Install the dev extras (bash scripts/setup.sh), or unset FCNKIT_REQUIRE_ALL to allow the skip"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """A test that skipped itself for a missing package (``pytest.importorskip`` in its body) fails instead."""
    report = yield
    reason = _missing_package(report) if REQUIRE_ALL else None
    if reason:
        report.outcome = "failed"
        report.longrepr = _required_message(reason)
    return report


class RequiredPackages(pytest.Item):
    """Stands for a test module that ``pytest.importorskip`` skipped whole, and fails (FCNKIT_REQUIRE_ALL=1). As a
    failing item rather than a collection error, it leaves the rest of the suite running."""

    def __init__(self, *, reason: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def runtest(self) -> None:
        pytest.fail(_required_message(self.reason), pytrace=False)

    def repr_failure(self, excinfo: pytest.ExceptionInfo) -> str:
        return _required_message(self.reason)

    def reportinfo(self) -> tuple:
        return self.path, None, self.name


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    """A module skipped whole for a missing package collects one failing item instead of nothing."""
    report = yield
    reason = _missing_package(report) if REQUIRE_ALL and isinstance(collector, pytest.Module) else None
    if reason:
        report.outcome = "passed"
        report.longrepr = None
        report.result = [RequiredPackages.from_parent(collector, name="required_packages", reason=reason)]
    return report


@pytest.fixture(autouse=True)
def _fixed_malloc_thresholds():
    """The suite's process runs hundreds of tests; blocks of 1 MiB and more are mmap'd and handed back when freed.

    An in-process training run applies ``tune_malloc`` (keep up to 1 GiB freed, mmap only above 32 MiB), which
    suits one training process but, left in place, fragments the heap of everything after it: the VGG tests,
    which allocate half-gigabyte models, then ran 2-4x slower in the kernel (test_vgg_fcn.py 97 -> 72 s with
    fixed thresholds). Set before and after every test, so each starts the same way whatever ran before it.
    """
    tune_malloc(mmap_threshold=2**20, trim_threshold=2**17)
    yield
    tune_malloc(mmap_threshold=2**20, trim_threshold=2**17)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never read or write the user's weights cache; never reach the network."""
    monkeypatch.setenv("FCNKIT_CACHE", str(tmp_path / "fcnkit-cache"))
    monkeypatch.setenv("FCNKIT_OFFLINE", "1")
    # backend "auto" (Predictor, eval, predict) would export each test's freshly made model to ONNX: a few
    # seconds a test. The tests of that path (test_export_cache.py, test_default_backend.py) delete this.
    monkeypatch.setenv("FCNKIT_BACKEND", "torch")


def random_model(build, seed: int = 0) -> torch.nn.Module:
    """``randomize_(build())`` without the constructor's own initialisation: built on the meta device, then given
    memory and random values. For the VGG16 models (134M parameters), whose init costs seconds a model here."""
    with torch.device("meta"):
        model = build()
    model.to_empty(device="cpu")
    assert {n for n, _ in model.named_buffers()} <= set(model.state_dict()), "a buffer randomize_ would not see"
    with torch.no_grad():
        for t in model.state_dict().values():
            if not t.is_floating_point():
                t.zero_()  # num_batches_tracked
    return randomize_(model, seed)


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and BN statistic a non-trivial random value (zero-initialised score layers
    and identity BN statistics would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            # in place: no temporary of the tensor's size (VGG16's fc6 alone is 0.4 GB)
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5, generator=g)
            elif t.ndim >= 2:
                fan_in = t[0].numel() if t.ndim == 4 else t.shape[1]
                t.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=g)
            else:
                t.normal_(0.0, 0.1, generator=g)
    return model
