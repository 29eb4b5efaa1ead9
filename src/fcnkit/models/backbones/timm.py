"""Any timm model that supports ``features_only`` as an fcnkit backbone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ...errors import ConfigError, UnknownNameError
from ...registry import unknown_name_message
from ...utils import require
from ..segmenter import Backbone, FeatureInfo


def import_timm() -> Any:
    return require("timm", "timm", "timm backbones")


class TimmBackbone(Backbone):
    """Wraps ``timm.create_model(name, features_only=True)``; taps are named ``stage<index>``.

    Channels and strides come from timm's own ``feature_info``. ``output_stride`` (8 or 16) is passed to
    timm, which turns the last strides into dilation where the architecture supports it. Never downloads:
    ``pretrained`` is always False here; load weights from a file with ``backbone_weights``.
    """

    def __init__(
        self,
        name: str,
        output_stride: int | None = None,
        out_indices: Sequence[int] | None = None,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        timm = import_timm()
        name = name.removeprefix("timm:")
        if not timm.is_model(name):
            raise UnknownNameError(unknown_name_message("timm backbone", name, timm.list_models()))
        kwargs: dict[str, Any] = {"features_only": True, "pretrained": False, **timm_kwargs}
        if output_stride not in (None, 32):
            kwargs["output_stride"] = output_stride
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        try:
            self.body = timm.create_model(name, **kwargs)
        except Exception as e:
            raise ConfigError(f"timm could not build {name!r} with features_only=True and {kwargs}: {e}") from e
        self.timm_name = name
        info = self.body.feature_info
        indices = info.out_indices if hasattr(info, "out_indices") else range(len(info.channels()))
        self.feature_info = [
            FeatureInfo(f"stage{i}", c, s) for i, c, s in zip(indices, info.channels(), info.reduction(), strict=True)
        ]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {info.name: f for info, f in zip(self.feature_info, self.body(x), strict=True)}
