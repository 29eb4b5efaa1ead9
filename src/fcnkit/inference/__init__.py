"""Running a trained model: loading a model spec (:mod:`.loading`), test-time augmentation (:mod:`.tta`),
the fast exact path (:mod:`.optimize`), :class:`Predictor` (:mod:`.predictor`) and writing predictions of
image files (:mod:`.files`). Layer: above export, models and data; below engine."""

from .files import IMAGE_SUFFIXES, PredictionReport, expand_inputs, predict_files
from .loading import is_bare_model_name, load_model, model_from_spec
from .optimize import (
    OptimizedModel,
    describe_backend,
    fold_batchnorm,
    optimize_for_inference,
    optimized_or_plain,
    resolve_backend,
)
from .predictor import InOrder, Prediction, Predictor, to_rgb_tensor
from .tta import describe_inference, infer_logits, is_plain, sliding_window_logits

__all__ = [
    "IMAGE_SUFFIXES",
    "InOrder",
    "OptimizedModel",
    "Prediction",
    "PredictionReport",
    "Predictor",
    "describe_backend",
    "describe_inference",
    "expand_inputs",
    "fold_batchnorm",
    "infer_logits",
    "is_bare_model_name",
    "is_plain",
    "load_model",
    "model_from_spec",
    "optimize_for_inference",
    "optimized_or_plain",
    "predict_files",
    "resolve_backend",
    "sliding_window_logits",
    "to_rgb_tensor",
]
