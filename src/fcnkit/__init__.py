"""fcnkit: Fully Convolutional Networks for semantic segmentation in pure PyTorch.

Layers, top to bottom; each imports only those below it (an import-linter contract in ``pyproject.toml``):

* ``cli``: the ``fcnkit`` command (argument parsing lives only here);
* ``apps``: the demo and the benchmark functions;
* ``engine``: training, evaluation, optimisers, EMA, distributed helpers;
* ``inference``: model specs, test-time augmentation, ``Predictor``, ``optimize_for_inference``;
* ``export``: ONNX export and ONNX Runtime models;
* ``checkpoint``, ``losses``, ``metrics``, ``visualize``; below them ``models`` and ``data``;
* the base: ``config``, ``hub``, ``preprocessing``; ``registry``, ``utils``, ``progress``, ``version``; ``errors``.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import FcnkitError
from .inference import Predictor, optimize_for_inference
from .models import create_model, finetune_from, init_from, list_models, list_weights
from .preprocessing import CAFFE_BGR, IMAGENET, Preprocessing
from .version import __version__

__all__ = [
    "CAFFE_BGR",
    "IMAGENET",
    "FcnkitError",
    "Predictor",
    "Preprocessing",
    "__version__",
    "create_model",
    "finetune_from",
    "init_from",
    "list_models",
    "list_weights",
    "load_checkpoint",
    "optimize_for_inference",
    "save_checkpoint",
]
