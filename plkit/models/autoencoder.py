"""``AutoEncoder``: an MLP encoder and decoder whose ``forward`` is the embedding."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from typing_extensions import override

from plkit.callbacks import EmbeddingWriter
from plkit.models._batch import ID, unpack_batch
from plkit.models._train_loss import epoch_mean_metric, log_train_loss, log_train_loss_epoch
from plkit.models.optimization import InjectedOptimization

__all__ = ["AutoEncoder"]


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class AutoEncoder(InjectedOptimization):
    """Encode inputs to ``latent_dim`` numbers and decode them back; trained on the reconstruction's MSE.

    ``forward`` returns the embedding. ``predict_step`` returns ``{"embeddings": [B, latent_dim]}``,
    with the batch's ``"id"`` as well when it has one; :meth:`prediction_writer` (an ``EmbeddingWriter``)
    exports the embeddings with their ids and no extra code. Logs ``train/loss`` (every step), ``train/loss_epoch``,
    ``val/loss`` and ``test/loss`` (epoch values over all ranks).
    The defaults are Lightning's introductory autoencoder (784 -> 64 -> 3 and back, Adam).

    Args:
        input_shape: the shape of one input, e.g. ``(1, 28, 28)``.
        latent_dim: size of the embedding.
        hidden_dims: widths of the encoder's hidden layers (the decoder mirrors them).
        optimizer: builds the optimizer from the parameter groups (saved with the checkpoint when it
            comes from a recipe, not when passed from Python; see :class:`~plkit.models.ImageClassifier`).
        scheduler: builds a learning-rate scheduler from the optimizer, or ``None``.
        scheduler_interval: ``"step"``, ``"epoch"``, or ``None`` (``"step"`` for schedules counted in steps).
        scheduler_monitor: the metric a ``ReduceLROnPlateau`` scheduler watches.
        no_decay_bias_norm: exempt biases (and other 1-d parameters) from weight decay.

    Raises:
        ValueError: a bad ``input_shape``, ``latent_dim``, ``hidden_dims`` or ``scheduler_interval``.

    Example:
        >>> model = AutoEncoder(input_shape=(1, 28, 28), latent_dim=3, hidden_dims=(64,))
        >>> model(torch.zeros(5, 1, 28, 28)).shape
        torch.Size([5, 3])
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 3,
        hidden_dims: Sequence[int] = (64,),
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] | None = None,
        scheduler_monitor: str = "val/loss",
        no_decay_bias_norm: bool = False,
    ) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval, scheduler_monitor, no_decay_bias_norm)
        if not input_shape or min(input_shape) < 1:
            raise ValueError(
                f"input_shape={tuple(input_shape)}: give the positive shape of one input, e.g. [1, 28, 28]"
            )
        if latent_dim < 1:
            raise ValueError(f"latent_dim={latent_dim}: it must be >= 1")
        if any(width < 1 for width in hidden_dims):
            raise ValueError(f"hidden_dims={tuple(hidden_dims)}: every width must be >= 1")
        self.save_hyperparameters()
        self.input_shape = tuple(int(d) for d in input_shape)
        sizes = [math.prod(self.input_shape), *hidden_dims, latent_dim]
        self.encoder = _mlp(sizes)
        self.decoder = _mlp(sizes[::-1])
        self.train_loss = epoch_mean_metric()

    def _inputs(self, batch: Any) -> tuple[Tensor, Any]:
        inputs, _, ids = unpack_batch(batch)
        if inputs.ndim == 1:
            raise ValueError(
                f"AutoEncoder got one number per sample (inputs of shape [{len(inputs)}], e.g. from a 1-d features "
                "file): give each sample a feature axis (numpy: features.reshape(-1, 1)) and set input_shape to [1]"
            )
        if tuple(inputs.shape[1:]) != self.input_shape:
            raise ValueError(
                f"AutoEncoder(input_shape={list(self.input_shape)}) got inputs of shape {list(inputs.shape[1:])}: "
                f"set input_shape to {list(inputs.shape[1:])} (--model.init_args.input_shape)"
            )
        return inputs, ids

    @override
    def forward(self, inputs: Tensor) -> Tensor:
        return self.encoder(inputs.flatten(1))

    def _reconstruction_loss(self, batch: Any) -> tuple[Tensor, int]:
        inputs, _ = self._inputs(batch)
        reconstruction = self.decoder(self(inputs)).view_as(inputs)
        return F.mse_loss(reconstruction, inputs), len(inputs)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, n = self._reconstruction_loss(batch)
        log_train_loss(self, loss, self.train_loss, n)
        return loss

    @override
    def on_train_epoch_end(self) -> None:
        log_train_loss_epoch(self, self.train_loss)

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, n = self._reconstruction_loss(batch)
        self.log("val/loss", loss, sync_dist=True, batch_size=n, prog_bar=True)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, n = self._reconstruction_loss(batch)
        self.log("test/loss", loss, sync_dist=True, batch_size=n)

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        inputs, ids = self._inputs(batch)
        prediction: dict[str, Any] = {"embeddings": self(inputs)}
        if ids is not None:
            prediction[ID] = ids
        return prediction

    def prediction_writer(self, output_dir: str | Path, id_key: str | None = ID) -> EmbeddingWriter:
        """The writer that stores what :meth:`predict_step` returns: ``embeddings.npy`` and the ids, in dataset order.

        A previous result in ``output_dir`` is replaced.

        Args:
            output_dir: the folder to write to.
            id_key: the batch key of the sample ids (plkit's data modules always give ``"id"``); ``None`` for
                batches without ids, whose rows are then named by their dataset index.
        """
        return EmbeddingWriter(output_dir, id_key=id_key, prediction_key="embeddings", overwrite=True)
