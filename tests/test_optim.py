"""Parameter groups, optimisers, lr schedules against closed forms, and the weight EMA by hand."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from fcnkit.config import OptimConfig, ScheduleConfig, config_from_dict
from fcnkit.engine.clock import BudgetClock
from fcnkit.engine.ema import ModelEMA
from fcnkit.engine.optim import build_optimizer, build_scheduler, param_groups


class ToySegmenter(nn.Module):
    """backbone (conv + BN), classifier (conv + frozen bilinear deconv), optional aux_classifier."""

    def __init__(self, aux: bool = True) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.classifier = nn.Sequential(nn.Conv2d(4, 2, 1), nn.ConvTranspose2d(2, 2, 4, stride=2, bias=False))
        self.classifier[1].weight.requires_grad_(False)  # frozen upsampling, as in FCN
        self.aux_classifier = nn.Conv2d(4, 2, 1) if aux else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.backbone(x)
        out = {"out": self.classifier(f)}
        if self.aux_classifier is not None:
            out["aux"] = self.aux_classifier(f)
        return out


def settings_by_name(model: nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    """parameter name -> (lr, weight_decay) of the group holding it, checking that no parameter is in two groups."""
    group_of = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in group_of, "parameter in two groups"
            group_of[id(p)] = (g["lr"], g["weight_decay"])
    return {n: group_of[id(p)] for n, p in model.named_parameters() if id(p) in group_of}


def test_caffe_groups_bias_double_lr_no_decay():
    model = ToySegmenter()
    groups = param_groups(model, lr=0.01, weight_decay=5e-4, bias_lr_mult=2.0, bias_decay=False)
    got = settings_by_name(model, groups)
    expected = {
        "backbone.0.weight": (0.01, 5e-4),
        "backbone.0.bias": (0.02, 0.0),
        "backbone.1.weight": (0.01, 5e-4),  # BN: a norm parameter, not a Caffe bias
        "backbone.1.bias": (0.01, 5e-4),
        "classifier.0.weight": (0.01, 5e-4),
        "classifier.0.bias": (0.02, 0.0),
        "aux_classifier.weight": (0.01, 5e-4),
        "aux_classifier.bias": (0.02, 0.0),
    }
    assert got == pytest.approx(expected)
    for g in groups:
        assert g["lr"] == pytest.approx(0.01 * g["lr_mult"])
        assert isinstance(g["name"], str)


def test_frozen_params_excluded_and_everything_trainable_included():
    model = ToySegmenter()
    groups = param_groups(model, lr=0.1, weight_decay=1e-4)
    grouped = [p for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) < len(list(model.parameters()))  # the deconv weight is frozen
    assert len(grouped) == len(trainable) == len({id(p) for p in grouped})
    assert sum(p.numel() for p in grouped) == sum(p.numel() for p in trainable)
    assert all(p.requires_grad for p in grouped)
    assert "classifier.1.weight" not in [n for g in groups for n in g["param_names"]]


def test_head_lr_mult_and_norm_decay():
    model = ToySegmenter()
    groups = param_groups(model, lr=0.02, weight_decay=1e-4, head_lr_mult=10.0, norm_decay=False)
    got = settings_by_name(model, groups)
    for name, (lr, wd) in got.items():
        head = name.startswith(("classifier", "aux_classifier"))
        assert lr == pytest.approx(0.2 if head else 0.02), name
        assert wd == (0.0 if name.startswith("backbone.1") else 1e-4), name
    assert {g["name"] for g in groups} == {
        "backbone.weight",
        "backbone.bias",
        "backbone.norm",
        "head.weight",
        "head.bias",
    }


def test_model_without_aux_and_without_heads():
    groups = param_groups(ToySegmenter(aux=False), lr=0.1, weight_decay=0.0, head_lr_mult=10.0)
    assert sum(len(g["params"]) for g in groups) == 6  # conv w/b, BN w/b, classifier conv w/b
    with pytest.raises(ValueError, match="head"):
        param_groups(nn.Conv2d(3, 2, 1), lr=0.1, weight_decay=0.0, head_lr_mult=10.0)
    # A custom head attribute.
    model = ToySegmenter(aux=False)
    groups = param_groups(model, lr=0.1, weight_decay=0.0, head_lr_mult=3.0, head_names=("backbone",))
    assert settings_by_name(model, groups)["backbone.0.weight"][0] == pytest.approx(0.3)
    assert settings_by_name(model, groups)["classifier.0.weight"][0] == pytest.approx(0.1)


def test_build_optimizer():
    model = ToySegmenter()
    sgd = build_optimizer(model, "sgd", lr=0.1, momentum=0.99, weight_decay=5e-4, nesterov=True, bias_lr_mult=2)
    assert isinstance(sgd, torch.optim.SGD)
    assert all(g["momentum"] == 0.99 and g["nesterov"] for g in sgd.param_groups)
    adamw = build_optimizer(model, "adamw", lr=1e-3, betas=(0.8, 0.9), weight_decay=0.05, bias_decay=False)
    assert isinstance(adamw, torch.optim.AdamW)
    assert {g["weight_decay"] for g in adamw.param_groups} == {0.05, 0.0}
    assert all(g["betas"] == (0.8, 0.9) for g in adamw.param_groups)
    with pytest.raises(ValueError, match="sgd, adamw"):
        build_optimizer(model, "adam", lr=0.1)
    # One real step: frozen weight untouched, the rest moves.
    frozen = model.classifier[1].weight.clone()
    before = model.backbone[0].weight.clone()
    sum(v.sum() for v in model(torch.randn(1, 3, 8, 8)).values()).backward()
    sgd.step()
    assert torch.equal(model.classifier[1].weight, frozen)
    assert not torch.equal(model.backbone[0].weight, before)


def lrs_over_schedule(
    name: str, steps: int, head_lr_mult: float = 1.0, **kwargs
) -> tuple[list[list[float]], list[float]]:
    """lr of every group at steps 0..steps, and the groups' lr_mult."""
    model = ToySegmenter()
    opt = build_optimizer(model, "sgd", lr=0.1, head_lr_mult=head_lr_mult)
    sched = build_scheduler(opt, name, **kwargs)
    history = []
    for _ in range(steps + 1):
        history.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return history, [g["lr_mult"] for g in opt.param_groups]


@pytest.mark.parametrize(
    ("name", "kwargs", "closed_form"),
    [
        ("constant", {}, lambda t: 1.0),
        ("poly", {"total_steps": 20, "power": 0.9}, lambda t: (1 - min(t, 20) / 20) ** 0.9),
        (
            "poly",
            {"total_steps": 20, "power": 2.0, "min_lr_factor": 0.1},
            lambda t: 0.1 + 0.9 * (1 - min(t, 20) / 20) ** 2.0,
        ),
        (
            "cosine",
            {"total_steps": 20, "min_lr_factor": 0.05},
            lambda t: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 20) / 20)),
        ),
        ("step", {"step_size": 7, "gamma": 0.5}, lambda t: 0.5 ** (t // 7)),
    ],
)
def test_schedules_match_closed_form(name, kwargs, closed_form):
    history, mults = lrs_over_schedule(name, 24, head_lr_mult=10.0, **kwargs)
    assert sorted(set(mults)) == [1.0, 10.0]
    for t, lrs in enumerate(history):
        for lr, mult in zip(lrs, mults, strict=True):
            assert lr == pytest.approx(0.1 * mult * closed_form(t), abs=1e-12), (t, mult)


def test_linear_warmup_multiplies_the_decay():
    start, w, total = 0.01, 5, 20
    history, mults = lrs_over_schedule(
        "poly", total, total_steps=total, warmup_steps=w, warmup_start_factor=start, power=1.0
    )
    for t, lrs in enumerate(history):
        warm = start + (1 - start) * t / w if t < w else 1.0
        expected = 0.1 * warm * (1 - t / total)
        assert lrs[0] == pytest.approx(expected * mults[0], abs=1e-12), t
    assert history[0][0] == pytest.approx(0.1 * start)
    assert history[w][0] == pytest.approx(0.1 * (1 - w / total))


def test_scheduler_state_dict_round_trip_mid_schedule():
    def make():
        torch.manual_seed(0)
        model = ToySegmenter()
        opt = build_optimizer(model, "sgd", lr=0.1, head_lr_mult=10.0, bias_lr_mult=2.0)
        return opt, build_scheduler(opt, "cosine", total_steps=30, warmup_steps=4)

    opt_a, sched_a = make()
    for _ in range(11):
        opt_a.step()
        sched_a.step()
    opt_b, sched_b = make()
    opt_b.load_state_dict(opt_a.state_dict())
    sched_b.load_state_dict(sched_a.state_dict())
    assert sched_b.last_epoch == 11
    for _ in range(25):
        assert [g["lr"] for g in opt_b.param_groups] == pytest.approx([g["lr"] for g in opt_a.param_groups])
        for opt, sched in ((opt_a, sched_a), (opt_b, sched_b)):
            opt.step()
            sched.step()


def test_scheduler_validation():
    opt = build_optimizer(ToySegmenter(), "sgd", lr=0.1)
    with pytest.raises(ValueError, match="constant, poly, cosine, step"):
        build_scheduler(opt, "exp", total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        build_scheduler(opt, "poly")
    with pytest.raises(ValueError, match="step_size"):
        build_scheduler(opt, "step")


def test_config_sections_build_what_the_keyword_arguments_build():
    cfg = config_from_dict(
        {
            "optim": {
                "name": "sgd",
                "lr": 0.1,
                "momentum": 0.99,
                "weight_decay": 5e-4,
                "nesterov": True,
                "bias_lr_mult": 2,
                "bias_decay": False,
                "head_lr_mult": 10,
            },
            "schedule": {
                "name": "poly",
                "warmup_steps": 3,
                "warmup_start_factor": 0.01,
                "power": 2.0,
                "min_lr_factor": 0.1,
            },
        }
    )
    a = build_optimizer(ToySegmenter(), cfg.optim)
    b = build_optimizer(
        ToySegmenter(),
        "sgd",
        lr=0.1,
        momentum=0.99,
        weight_decay=5e-4,
        nesterov=True,
        bias_lr_mult=2,
        bias_decay=False,
        head_lr_mult=10,
    )
    settings = ("name", "lr", "lr_mult", "weight_decay", "momentum", "nesterov")
    assert [[g[k] for k in settings] for g in a.param_groups] == [[g[k] for k in settings] for g in b.param_groups]
    sched_a = build_scheduler(a, cfg.schedule, total_steps=20)
    sched_b = build_scheduler(
        b, "poly", total_steps=20, warmup_steps=3, warmup_start_factor=0.01, power=2.0, min_lr_factor=0.1
    )
    for t in range(22):
        assert [g["lr"] for g in a.param_groups] == [g["lr"] for g in b.param_groups], t
        warm = 0.01 + 0.99 * t / 3 if t < 3 else 1.0
        assert a.param_groups[0]["lr"] == pytest.approx(0.1 * warm * (0.1 + 0.9 * (1 - min(t, 20) / 20) ** 2))
        for opt, sched in ((a, sched_a), (b, sched_b)):
            opt.step()
            sched.step()
    adamw = build_optimizer(ToySegmenter(), OptimConfig(name="adamw", lr=1e-3, betas=[0.8, 0.9]))
    assert all(g["betas"] == (0.8, 0.9) and g["weight_decay"] in (1e-4, 0.0) for g in adamw.param_groups)
    with pytest.raises(TypeError, match="lr="):
        build_optimizer(ToySegmenter(), "sgd")
    with pytest.raises(TypeError, match="not also"):
        build_scheduler(a, ScheduleConfig(name="poly"), total_steps=10, power=2.0)


def test_budget_schedule_decays_over_the_clock_and_its_state_round_trips():
    """The lr factor asks the clock for the fraction of the budget spent; nothing writes it into the factor."""
    opt = build_optimizer(ToySegmenter(), "sgd", lr=0.1)
    clock = BudgetClock(budget=100.0)
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", warmup_steps=2), clock=clock)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.001)  # warm-up still counts steps
    for seconds in (10.0, 25.0, 60.0, 150.0):
        clock.reset(seconds)  # as if mark() had read these seconds before the step
        opt.step()
        sched.step()
        warm = 0.001 + 0.999 * sched.last_epoch / 2 if sched.last_epoch < 2 else 1.0
        expected = 0.1 * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, seconds / 100)))
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12), seconds
    assert clock.out_of_time and opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    # the state holds the settings and the step count, not the clock, and loads with weights_only
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert all("clock" not in d for d in state["lr_lambdas"])
    other_clock = BudgetClock(budget=100.0, seconds=50.0)
    opt_b = build_optimizer(ToySegmenter(), "sgd", lr=0.1)
    restored = build_scheduler(opt_b, ScheduleConfig(name="cosine", warmup_steps=2), clock=other_clock)
    # a checkpoint of an earlier version holds the budget fraction as "progress": ignored, the clock decides
    restored.load_state_dict({**state, "lr_lambdas": [{**d, "progress": 0.9} for d in state["lr_lambdas"]]})
    assert restored.last_epoch == 4 and restored.lr_lambdas[0].clock is other_clock
    assert not hasattr(restored.lr_lambdas[0], "progress")
    opt_b.step()
    restored.step()
    assert opt_b.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_budget_clock_counts_only_while_running_and_agrees_on_a_reading():
    clock = BudgetClock(budget=10.0, agree=lambda s: 7.0, seconds=2.0)
    assert clock.seconds == 2.0 and clock.reading == 2.0 and not clock.running
    clock.start()
    assert clock.seconds > 2.0
    clock.stop()
    stopped = clock.seconds
    assert clock.seconds == stopped  # stopped: evaluation does not count
    assert clock.mark() == 7.0 and clock.fraction_spent() == pytest.approx(0.7) and not clock.out_of_time
    no_budget = BudgetClock(agree=lambda s: pytest.fail("only a budget needs the ranks to agree"))
    assert no_budget.mark() == 0.0 and no_budget.fraction_spent() == 0.0 and not no_budget.out_of_time
    with pytest.raises(ValueError, match="budget"):
        BudgetClock(budget=0.0)


class OneWeight(nn.Module):
    """A single scalar parameter and a BN-like buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0]))
        self.register_buffer("running_mean", torch.tensor([0.0]))


def test_ema_by_hand_without_warmup():
    model = OneWeight()
    ema = ModelEMA(model, decay=0.9)
    assert ema.module is not model and not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        model.w.fill_(2.0)
        model.running_mean.fill_(5.0)
    ema.update(model)
    # 0.9 * 1 + 0.1 * 2 = 1.1; the buffer is copied, not averaged.
    assert ema.module.w.item() == pytest.approx(1.1)
    assert ema.module.running_mean.item() == 5.0
    with torch.no_grad():
        model.w.fill_(4.0)
    ema.update(model)
    # 0.9 * 1.1 + 0.1 * 4 = 1.39
    assert ema.module.w.item() == pytest.approx(1.39)
    assert model.w.item() == 4.0  # the trained model is never touched


def test_ema_warmup_ramp_and_state_round_trip():
    model = OneWeight()
    ema = ModelEMA(model, decay=0.9, warmup_steps=100)
    with torch.no_grad():
        model.w.fill_(2.0)
    ema.update(model)
    # n = 0: d = min(0.9, 1/10) = 0.1 -> 0.1 * 1 + 0.9 * 2 = 1.9
    assert ema.module.w.item() == pytest.approx(1.9)
    with torch.no_grad():
        model.w.fill_(4.0)
    ema.update(model)
    # n = 1: d = min(0.9, 2/11) -> (2 * 1.9 + 9 * 4) / 11 = 39.8 / 11
    assert ema.module.w.item() == pytest.approx(39.8 / 11)
    # Inside the warm-up the ramp applies while it is below the decay; after it, the plain decay.
    ema.updates = 50
    assert ema.current_decay() == pytest.approx(51 / 60)
    ema.updates = 100
    assert ema.current_decay() == 0.9
    ema.updates = 2

    state = ema.state_dict()
    restored = ModelEMA(OneWeight(), decay=0.9, warmup_steps=100)
    restored.load_state_dict(state)
    assert restored.updates == 2
    assert restored.module.w.item() == pytest.approx(39.8 / 11)
    with torch.no_grad():
        model.w.fill_(0.0)
    ema.update(model)
    restored.update(model)
    # n = 2: d = 3/12 for both
    assert restored.module.w.item() == pytest.approx(ema.module.w.item())
    assert ema.module.w.item() == pytest.approx(3 / 12 * 39.8 / 11)
