"""What a model is, in one object: :class:`ModelCard`.

A card holds everything besides the tensors that running a set of weights the way they were measured needs:
the architecture (registry name, class count, builder options), the class names and palette, the input
preprocessing, the test-time passes of the recipe that trained them (``test``: flips, scales, sliding
windows), which weights these are (``"raw"`` or the ``"ema"`` average) and where they came from
(``provenance``: run folder, step, epoch, dataset, validation score, fcnkit version).

It is written once, by whoever makes the weights (:func:`fcnkit.create_model`, the training loop), into the
checkpoint (``"card"``) and into an exported ONNX file's metadata (``fcnkit.card``), and read once by every
consumer: ``fcnkit eval``, ``predict``, ``serve``, ``export``, ``quantize`` and :class:`fcnkit.Predictor` all
take their defaults from it, so the model a command runs is the model that was evaluated. timm's
``PretrainedCfg`` plays the same part for timm's weights.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .config import InferenceConfig, inference_config
from .errors import ConfigError
from .preprocessing import IMAGENET, Preprocessing

__all__ = ["WEIGHT_KINDS", "CardAttributes", "ModelCard", "card_of"]

#: ``ModelCard.weights``: the weights as trained, or their exponential moving average
WEIGHT_KINDS = ("raw", "ema")


@dataclass(frozen=True)
class ModelCard:
    """Architecture, classes, palette, preprocessing, test-time passes and provenance of one set of weights."""

    #: ``{"name": registry name, "num_classes": int, "options": builder options}`` (empty for a foreign model)
    arch: dict[str, Any] = field(default_factory=dict)
    preprocessing: Preprocessing = IMAGENET
    classes: tuple[str, ...] | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None
    #: the passes the weights were measured with (the training recipe's ``test:`` section); one pass by default
    test: InferenceConfig = field(default_factory=InferenceConfig)
    #: "raw" (as trained) or "ema" (the exponential moving average of a run with ``ema_decay``)
    weights: str = "raw"
    #: where the weights came from: a training run writes ``run_dir``, ``step``, ``epoch``, ``dataset``,
    #: ``best_val_miou`` and ``fcnkit`` (its version); loading adds ``file``
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_KINDS:
            raise ConfigError(f"card.weights must be one of {WEIGHT_KINDS}, got {self.weights!r}")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if self.palette is not None:
            object.__setattr__(self, "palette", tuple(tuple(int(v) for v in c) for c in self.palette))

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)

    @property
    def num_classes(self) -> int | None:
        n = self.arch.get("num_classes") if self.arch else None
        return int(n) if n else (len(self.classes) if self.classes else None)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, strings and numbers: ``weights_only``-loadable and JSON-serialisable."""
        return {
            "arch": json.loads(json.dumps(self.arch, default=str)),
            "preprocessing": self.preprocessing.to_dict(),
            "classes": list(self.classes) if self.classes else None,
            "palette": [list(c) for c in self.palette] if self.palette else None,
            "test": dataclasses.asdict(self.test),
            "weights": self.weights,
            "provenance": json.loads(json.dumps(self.provenance, default=str)),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"model card: unknown keys {sorted(unknown)} (written by a newer fcnkit?)")
        return cls(
            arch=dict(d.get("arch") or {}),
            preprocessing=Preprocessing.from_dict(d["preprocessing"]) if d.get("preprocessing") else IMAGENET,
            classes=tuple(d["classes"]) if d.get("classes") else None,
            palette=tuple(tuple(c) for c in d["palette"]) if d.get("palette") else None,
            test=inference_config(d.get("test") or {}),
            weights=d.get("weights", "raw"),
            provenance=dict(d.get("provenance") or {}),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        return cls.from_dict(json.loads(text))

    def describe_weights(self) -> str:
        """``ema, step 5890`` / ``raw`` ..., for the first line a command prints."""
        where = self.provenance.get("step")
        return f"{self.weights}" + (f", step {where}" if where is not None else "")


class CardAttributes:
    """``preprocessing``, ``classes``, ``palette`` and ``arch`` of a model, read from and written to its
    ``card`` (mixed into every model class fcnkit runs, so that older code that sets ``model.classes = ...``
    keeps one source of truth)."""

    card: ModelCard

    @property
    def preprocessing(self) -> Preprocessing:
        return self.card.preprocessing

    @preprocessing.setter
    def preprocessing(self, value: Preprocessing) -> None:
        self.card = self.card.replace(preprocessing=value)

    @property
    def classes(self) -> list[str] | None:
        return list(self.card.classes) if self.card.classes else None

    @classes.setter
    def classes(self, value: Any) -> None:
        self.card = self.card.replace(classes=tuple(value) if value else None)

    @property
    def palette(self) -> list[tuple[int, int, int]] | None:
        return list(self.card.palette) if self.card.palette else None

    @palette.setter
    def palette(self, value: Any) -> None:
        self.card = self.card.replace(palette=tuple(tuple(c) for c in value) if value else None)

    @property
    def arch(self) -> dict[str, Any]:
        return self.card.arch

    @arch.setter
    def arch(self, value: dict[str, Any]) -> None:
        self.card = self.card.replace(arch=dict(value or {}))


def card_of(model: Any) -> ModelCard:
    """The card of any model fcnkit runs; a module built elsewhere gets one from what it has (or the defaults)."""
    card = getattr(model, "card", None)
    if isinstance(card, ModelCard):
        return card
    num_classes = getattr(model, "num_classes", None)
    return ModelCard(
        arch={"name": type(model).__name__, "num_classes": num_classes} if num_classes else {},
        preprocessing=getattr(model, "preprocessing", None) or IMAGENET,
        classes=getattr(model, "classes", None),
        palette=getattr(model, "palette", None),
    )
