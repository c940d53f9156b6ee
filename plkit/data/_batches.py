"""In-memory datasets that hand the ``DataLoader`` whole batches, normalised and augmented as tensors.

The notes' pattern (a PIL image and a transform per sample, then ``default_collate``) spends most of an
epoch of a small model in per-sample Python. Here a batch is one gather from a uint8 tensor and a few
vectorised ops: the ``DataLoader`` calls ``__getitems__`` with the batch's indices and :func:`pass_batch`
hands the result on unchanged. Samplers, ``shuffle``, ``DistributedSampler`` and workers work as usual.

Every batch is a dict: ``"input"`` (float32 ``[B, C, H, W]``), ``"target"`` (int64 ``[B]``) and ``"id"``
(int64 ``[B]``, the sample's row in the original file).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ID", "INPUT", "TARGET", "BatchTransform", "InMemoryImages", "pass_batch"]

INPUT = "input"
TARGET = "target"
ID = "id"


def random_shift(images: Tensor, max_shift: int) -> Tensor:
    """Shift each image of a ``[B, C, H, W]`` batch by its own random offset of up to ``max_shift`` pixels.

    Pixels shifted in are zero (the background of the MNIST family, black for CIFAR), the same as
    torchvision's ``RandomCrop(size, padding=max_shift)``.

    Example:
        >>> images = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4)
        >>> _ = torch.manual_seed(0)
        >>> random_shift(images, 1).shape
        torch.Size([1, 1, 4, 4])
    """
    if max_shift <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, b, 1), device=images.device)
    rows = offsets[0] + torch.arange(h, device=images.device)
    cols = offsets[1] + torch.arange(w, device=images.device)
    batch = torch.arange(b, device=images.device)[:, None, None]
    # Advanced indexing puts the indexed dims first: [B, H, W, C].
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_hflip(images: Tensor) -> Tensor:
    """Mirror each image of a ``[B, C, H, W]`` batch left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


class BatchTransform:
    """Turn a uint8 ``[B, C, H, W]`` batch into normalised float32, augmenting it first if asked.

    Args:
        mean: per-channel mean of the pixel values scaled to [0, 1].
        std: per-channel standard deviation, likewise.
        max_shift: random shift of up to this many pixels (0: none).
        hflip: random left-right mirroring.

    Example:
        >>> transform = BatchTransform(mean=(0.5,), std=(0.5,))
        >>> transform(torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1)).flatten()
        tensor([-1.,  1.])
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], max_shift: int = 0, hflip: bool = False) -> None:
        std_t = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        # (x / 255 - mean) / std folded into one multiply-add.
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t
        self.max_shift = max_shift
        self.hflip = hflip

    def __call__(self, images: Tensor) -> Tensor:
        if self.max_shift:
            images = random_shift(images, self.max_shift)
        if self.hflip:
            images = random_hflip(images)
        out = images.to(torch.float32, memory_format=torch.contiguous_format)
        return out.mul_(self.scale).add_(self.shift)


class InMemoryImages(Dataset):
    """uint8 images, int64 targets and int64 ids held in memory, fetched a batch at a time.

    Args:
        images: ``[N, C, H, W]`` uint8.
        targets: ``[N]`` class indices.
        ids: ``[N]`` sample ids (rows of the original file).
        transform: applied to each batch of images.

    Raises:
        ValueError: the three tensors do not have the same length.

    Example:
        >>> images = torch.zeros(5, 1, 2, 2, dtype=torch.uint8)
        >>> data = InMemoryImages(images, torch.arange(5), torch.arange(5) + 10, BatchTransform((0.0,), (1.0,)))
        >>> batch = data.__getitems__([3, 1])
        >>> batch["input"].shape, batch["target"].tolist(), batch["id"].tolist()
        (torch.Size([2, 1, 2, 2]), [3, 1], [13, 11])
    """

    def __init__(self, images: Tensor, targets: Tensor, ids: Tensor, transform: BatchTransform) -> None:
        if not len(images) == len(targets) == len(ids):
            raise ValueError(f"{len(images)} images, {len(targets)} targets and {len(ids)} ids: they must match")
        self.images = images
        self.targets = targets.long()
        self.ids = ids.long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {INPUT: self.transform(self.images[index]), TARGET: self.targets[index], ID: self.ids[index]}

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}


def pass_batch(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``collate_fn`` for datasets whose ``__getitems__`` already returns a whole batch."""
    return batch
