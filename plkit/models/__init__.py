"""Reusable LightningModules, their backbones and learning-rate schedules.

Optimizers and schedulers are injected (``OptimizerCallable`` / ``LRSchedulerCallable``): a recipe names
them with ``class_path`` and ``init_args`` under the model's ``init_args``. Parameter groups come from each
module's ``parameter_groups()`` (``no_decay_bias_norm=True`` exempts biases and norm weights from weight
decay); subclass and override it for per-layer learning rates.
"""

from plkit.models._batch import unpack_batch
from plkit.models._optim import parameter_groups
from plkit.models.autoencoder import AutoEncoder
from plkit.models.backbones import SmallCNN, SmallResNet, build_backbone, from_classifier
from plkit.models.image_classifier import ImageClassifier
from plkit.models.schedulers import WarmupCosineLR

__all__ = [
    "AutoEncoder",
    "ImageClassifier",
    "SmallCNN",
    "SmallResNet",
    "WarmupCosineLR",
    "build_backbone",
    "from_classifier",
    "parameter_groups",
    "unpack_batch",
]
