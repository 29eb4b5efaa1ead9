"""fcnkit: Fully Convolutional Networks for semantic segmentation in pure PyTorch."""

from .checkpoint import load_checkpoint, save_checkpoint
from .inference import Predictor
from .models import create_model, init_from, list_models, list_weights
from .optimize import optimize_for_inference
from .preprocessing import CAFFE_BGR, IMAGENET, Preprocessing

__version__ = "0.1.0"

__all__ = [
    "CAFFE_BGR", "IMAGENET", "Predictor", "Preprocessing", "create_model", "init_from", "list_models", "list_weights",
    "load_checkpoint", "optimize_for_inference", "save_checkpoint",
]  # fmt: skip
