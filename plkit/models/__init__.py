"""Reusable LightningModules, their backbones and learning-rate schedules.

Optimizers and schedulers are injected (``OptimizerCallable`` / ``LRSchedulerCallable``): a recipe names
them with ``class_path`` and ``init_args`` under the model's ``init_args``. Both modules build on
:class:`InjectedOptimization`, which turns them into ``configure_optimizers``; parameter groups come from each
module's ``parameter_groups()`` (``no_decay_bias_norm=True`` exempts biases and norm weights from weight
decay); subclass and override it for per-layer learning rates.
"""

from plkit.models._batch import unpack_batch
from plkit.models.autoencoder import AutoEncoder
from plkit.models.backbones import SmallCNN, SmallResNet, build_backbone, from_classifier
from plkit.models.image_classifier import ImageClassifier
from plkit.models.optimization import InjectedOptimization, parameter_groups
from plkit.models.schedulers import WarmupCosineLR

__all__ = [
    "AutoEncoder",
    "ImageClassifier",
    "InjectedOptimization",
    "SmallCNN",
    "SmallResNet",
    "WarmupCosineLR",
    "build_backbone",
    "from_classifier",
    "parameter_groups",
    "unpack_batch",
]
