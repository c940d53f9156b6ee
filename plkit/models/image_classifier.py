"""``ImageClassifier``: a backbone, a linear head, cross-entropy, and epoch-level accuracy synced across ranks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from plkit.callbacks import EmbeddingWriter
from plkit.models._batch import ID, unpack_batch
from plkit.models._train_loss import epoch_mean_metric, log_train_loss, log_train_loss_epoch
from plkit.models.backbones import build_backbone, from_classifier
from plkit.models.optimization import InjectedOptimization

__all__ = ["ImageClassifier"]


class ImageClassifier(InjectedOptimization):
    """Classify images with an injectable backbone and optimizer.

    Logs ``train/loss`` every step (this rank's batch) and ``train/loss_epoch``, ``val/loss`` and
    ``val/acc`` every validation epoch, ``test/loss`` and ``test/acc``: epoch values over all ranks.
    ``forward`` returns the logits. ``predict_step`` returns ``{"probabilities": [B, C], "label": [B]}`` (the
    argmax), or ``{"embeddings": [B, F]}`` (the backbone's features) with ``return_embeddings=True``, plus the
    batch's ``"id"`` when it has one; :meth:`prediction_writer` is the writer for it. Batches are dicts
    (``"input"``, ``"target"``, ``"id"``) as ``plkit.data`` yields them, or ``(images, labels)`` tuples.

    Args:
        backbone: ``"cnn"`` (plkit's :class:`~plkit.models.SmallCNN`), ``"resnet"``
            (:class:`~plkit.models.SmallResNet`), the name of any ``torchvision.models`` classifier
            (``"resnet18"``: built without pretrained weights, first convolution adapted to
            ``in_channels``, its classifier replaced by this module's head), or an ``nn.Module``: a
            feature extractor with an ``out_features`` attribute, or a network ending in ``nn.Linear``
            (which is replaced). A module is not saved in the hyperparameters: pass it again to
            ``load_from_checkpoint(path, backbone=...)``; names need nothing.
        width: channels of the first block of ``"cnn"`` or ``"resnet"``, doubled in each later block;
            ``None`` for their defaults (32 and 16). The cost of a step grows with its square.
        num_classes: number of classes.
        in_channels: image channels (1 for the MNIST family, 3 for CIFAR-10).
        optimizer: builds the optimizer from the parameter groups (in a recipe: ``class_path`` + ``init_args``).
            A recipe's optimizer config is saved with the checkpoint; one passed from Python (a class or
            ``functools.partial``) is not, so that checkpoints load with ``weights_only=True``.
        scheduler: builds a learning-rate scheduler from the optimizer, or ``None`` for a constant rate.
        scheduler_interval: step the scheduler every ``"step"`` or every ``"epoch"``; ``None`` picks
            ``"step"`` for schedules counted in steps (``WarmupCosineLR``, ``OneCycleLR``) and ``"epoch"`` otherwise.
        scheduler_monitor: the metric a ``ReduceLROnPlateau`` scheduler watches.
        no_decay_bias_norm: exempt biases and normalisation weights from weight decay (a second
            parameter group with ``weight_decay=0``; override ``parameter_groups`` for other groupings).
        label_smoothing: label smoothing of the training loss (validation and test losses use none).
        dropout: dropout before the head.
        return_embeddings: ``predict_step`` returns the backbone's features instead of probabilities.
        channels_last: keep the backbone's convolution weights in the channels-last memory layout, so
            convolutions run channels-last (the same numbers, often faster on CPUs and recent GPUs; pair it
            with the data module's ``channels_last`` so the batches arrive in that layout too).
        compile: compile the network (backbone, dropout, head) with ``torch.compile`` when a trainer starts;
            the first batches pay the compilation, inside the run's time. Where compilation fails (no C++
            compiler, an unsupported backend) the network runs eager, with one warning. Checkpoints are the
            same as without it.

    Raises:
        ValueError: a bad ``num_classes``, ``in_channels``, ``scheduler_interval``, ``label_smoothing``,
            ``dropout`` or backbone name.

    Example:
        >>> model = ImageClassifier(backbone="cnn", num_classes=10, in_channels=1)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> prediction = model.predict_step({"input": torch.zeros(2, 1, 28, 28), "id": torch.tensor([7, 9])}, 0)
        >>> sorted(prediction), prediction["probabilities"].shape
        (['id', 'label', 'probabilities'], torch.Size([2, 10]))
    """

    def __init__(
        self,
        backbone: str | nn.Module = "cnn",
        width: int | None = None,
        num_classes: int = 10,
        in_channels: int = 1,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] | None = None,
        scheduler_monitor: str = "val/loss",
        no_decay_bias_norm: bool = False,
        label_smoothing: float = 0.0,
        dropout: float = 0.0,
        return_embeddings: bool = False,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval, scheduler_monitor, no_decay_bias_norm)
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}: it must be >= 1")
        if in_channels < 1:
            raise ValueError(f"in_channels={in_channels}: it must be >= 1 (1 for grayscale, 3 for colour)")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing}: it must be in [0, 1), e.g. 0.1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout}: it must be in [0, 1)")
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, nn.Module) else None)
        if isinstance(backbone, str):
            self.backbone = build_backbone(backbone, in_channels, channels_last=channels_last, width=width)
        elif isinstance(backbone, nn.Module):
            if width is not None:
                raise ValueError(f"width={width} applies to backbone names ('cnn', 'resnet'), not to a module")
            self.backbone = backbone if hasattr(backbone, "out_features") else from_classifier(backbone)
            if channels_last:
                self.backbone.to(memory_format=torch.channels_last)
        else:
            raise ValueError(f"backbone={backbone!r}: give a name such as 'cnn' or 'resnet18', or an nn.Module")
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(self.backbone.out_features), num_classes)
        self.label_smoothing = label_smoothing
        self.return_embeddings = return_embeddings
        self.compile_network = compile
        self._compiled: Callable[[Tensor], Tensor] | None = None
        self.train_loss = epoch_mean_metric()
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)

    def embed(self, images: Tensor) -> Tensor:
        """The backbone's features (the input of the head), ``[B, out_features]``."""
        return self.backbone(images)

    def _network(self, images: Tensor) -> Tensor:
        return self.head(self.dropout(self.embed(images)))

    @override
    def configure_model(self) -> None:
        # Lightning calls this as fit, validate, test or predict starts: torch.compile itself is cheap, the work
        # happens at the first batch. Compiling a function, not wrapping the modules, keeps the state-dict keys.
        if self.compile_network and self._compiled is None:
            self._compiled = torch.compile(self._network)

    @override
    def forward(self, images: Tensor) -> Tensor:
        # Under torch.export (or an outer torch.compile) the eager network is what gets traced.
        if self._compiled is None or torch.compiler.is_compiling():
            return self._network(images)
        try:
            return self._compiled(images)
        except Exception as err:
            # A mistake of the model or the data raises here again, as it would without compile.
            logits = self._network(images)
            self._compiled = None
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            rank_zero_warn(
                f"model.init_args.compile=true: torch.compile failed ({type(err).__name__}: {reason}); the network "
                "runs eager. Set model.init_args.compile to false to skip the attempt."
            )
            return logits

    def _labelled(self, batch: Any, stage: str) -> tuple[Tensor, Tensor]:
        images, targets, _ = unpack_batch(batch)
        if targets is None:
            raise ValueError(f"ImageClassifier cannot {stage} on a batch without targets (no 'target' key)")
        return images, targets

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, targets = self._labelled(batch, "train")
        loss = F.cross_entropy(self(images), targets, label_smoothing=self.label_smoothing)
        log_train_loss(self, loss, self.train_loss, len(targets))
        return loss

    @override
    def on_train_epoch_end(self) -> None:
        log_train_loss_epoch(self, self.train_loss)

    def _evaluate(self, batch: Any, stage: str, accuracy: MulticlassAccuracy) -> None:
        images, targets = self._labelled(batch, stage)
        logits = self(images)
        self.log(f"{stage}/loss", F.cross_entropy(logits, targets), sync_dist=True, batch_size=len(targets))
        accuracy.update(logits, targets)
        # A torchmetrics object: Lightning computes it over the epoch, synced across ranks, then resets it.
        self.log(f"{stage}/acc", accuracy, prog_bar=True)

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        images, _, ids = unpack_batch(batch)
        if self.return_embeddings:
            prediction: dict[str, Any] = {"embeddings": self.embed(images)}
        else:
            probabilities = self(images).softmax(dim=-1)
            prediction = {"probabilities": probabilities, "label": probabilities.argmax(dim=-1)}
        if ids is not None:
            prediction[ID] = ids
        return prediction

    def prediction_writer(self, output_dir: str | Path, id_key: str | None = ID) -> EmbeddingWriter:
        """The writer that stores what :meth:`predict_step` returns, one row per sample in dataset order.

        ``probabilities.npy`` and the predicted labels, or ``embeddings.npy`` with ``return_embeddings``, and
        the ids; a previous result in ``output_dir`` is replaced.

        Args:
            output_dir: the folder to write to.
            id_key: the batch key of the sample ids (plkit's data modules always give ``"id"``); ``None`` for
                batches without ids, whose rows are then named by their dataset index.
        """
        if self.return_embeddings:
            return EmbeddingWriter(output_dir, id_key=id_key, prediction_key="embeddings", overwrite=True)
        return EmbeddingWriter(
            output_dir,
            id_key=id_key,
            prediction_key="probabilities",
            label_key="label",  # type: ignore[call-arg]
            overwrite=True,
        )
