"""ImageClassifier: fit/validate/test/predict, what it logs, batch formats, checkpoints, export, bad arguments."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from plkit.data import CIFAR10DataModule, FashionMNISTDataModule, KMNISTDataModule, MNISTDataModule
from plkit.models import ImageClassifier, SmallCNN

from fakedata import make_cifar10

AdamW = functools.partial(torch.optim.AdamW, lr=3e-3)


def test_fit_validate_test_predict_on_tiny_mnist(
    make_trainer: Callable[..., pl.Trainer], mnist_dm: MNISTDataModule
) -> None:
    pl.seed_everything(0)
    model = ImageClassifier(backbone="cnn", width=8, num_classes=10, in_channels=1, optimizer=AdamW)
    trainer = make_trainer(max_epochs=2)
    trainer.fit(model, datamodule=mnist_dm)
    logged = trainer.callback_metrics
    assert {"train/loss", "train/loss_epoch", "val/loss", "val/acc"} <= set(logged)
    # Each class lights its own patch: 16 steps take the accuracy far above chance (0.1).
    assert logged["val/acc"] > 0.6

    (validated,) = trainer.validate(model, datamodule=mnist_dm, verbose=False)
    assert validated["val/acc"] == pytest.approx(float(logged["val/acc"]))
    (tested,) = trainer.test(model, datamodule=mnist_dm, verbose=False)
    assert set(tested) == {"test/loss", "test/acc"}
    assert tested["test/acc"] > 0.6

    predictions = trainer.predict(model, datamodule=mnist_dm)
    probs = torch.cat([p["probabilities"] for p in predictions])
    assert probs.shape == (64, 10)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(64))
    predicted = torch.cat([p["label"] for p in predictions])
    assert torch.equal(predicted, probs.argmax(dim=1))
    assert torch.cat([p["id"] for p in predictions]).tolist() == list(range(64))
    labels = mnist_dm.dataset("test").targets
    assert (predicted == labels).float().mean().item() == pytest.approx(tested["test/acc"])


def test_val_acc_is_the_accuracy_over_the_whole_epoch(
    make_trainer: Callable[..., pl.Trainer], mnist_dm: MNISTDataModule
) -> None:
    pl.seed_everything(0)
    model = ImageClassifier(width=4, optimizer=AdamW)
    make_trainer(max_epochs=1, limit_val_batches=0).fit(model, datamodule=mnist_dm)
    (validated,) = make_trainer().validate(model, datamodule=mnist_dm, verbose=False)
    model.eval()
    data = mnist_dm.dataset("val").__getitems__(list(range(64)))
    with torch.no_grad():
        logits = model(data["input"])
    accuracy = (logits.argmax(1) == data["target"]).float().mean().item()
    loss = nn.functional.cross_entropy(logits, data["target"]).item()
    assert validated["val/acc"] == pytest.approx(accuracy)
    assert validated["val/loss"] == pytest.approx(loss, rel=1e-5)


def test_tuple_batches_work_too(make_trainer: Callable[..., pl.Trainer]) -> None:
    pl.seed_everything(0)
    images, labels = torch.randn(24, 1, 28, 28), torch.randint(0, 3, (24,))
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    model = ImageClassifier(width=4, num_classes=3, optimizer=AdamW)
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    assert "val/acc" in trainer.callback_metrics
    predictions = trainer.predict(model, DataLoader(TensorDataset(images), batch_size=8))
    assert torch.cat([p["probabilities"] for p in predictions]).shape == (24, 3)
    assert all(set(p) == {"probabilities", "label"} for p in predictions)  # a tuple batch has no ids


def test_a_batch_without_targets_cannot_train() -> None:
    model = ImageClassifier()
    with pytest.raises(ValueError, match="cannot train on a batch without targets"):
        model.training_step({"input": torch.zeros(2, 1, 28, 28)}, 0)
    with pytest.raises(TypeError, match="without 'input'"):
        model.training_step({"image": torch.zeros(2, 1, 28, 28)}, 0)


def test_return_embeddings_predicts_the_backbone_features(make_trainer: Callable[..., pl.Trainer]) -> None:
    model = ImageClassifier(return_embeddings=True).eval()
    images = torch.randn(6, 1, 28, 28)
    (prediction,) = make_trainer().predict(model, DataLoader(TensorDataset(images), batch_size=6))
    features = prediction["embeddings"]
    assert set(prediction) == {"embeddings"}
    assert features.shape == (6, model.backbone.out_features)
    with torch.no_grad():
        torch.testing.assert_close(model.head(features), model(images))


def test_checkpoint_round_trip_needs_no_arguments(
    make_trainer: Callable[..., pl.Trainer], mnist_dm: MNISTDataModule, tmp_path: Path
) -> None:
    pl.seed_everything(0)
    model = ImageClassifier(backbone="resnet", width=4, label_smoothing=0.1, dropout=0.2, optimizer=AdamW)
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, datamodule=mnist_dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    loaded = ImageClassifier.load_from_checkpoint(path)
    assert loaded.hparams["backbone"] == "resnet"
    assert loaded.label_smoothing == 0.1
    images = torch.randn(4, 1, 28, 28)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))

    dm = MNISTDataModule.load_from_checkpoint(path)
    assert (dm.data_dir, dm.batch_size, dm.val_size) == (mnist_dm.data_dir, 32, 64)


def test_a_module_backbone_is_passed_again_to_load(
    make_trainer: Callable[..., pl.Trainer], mnist_dm: MNISTDataModule, tmp_path: Path
) -> None:
    model = ImageClassifier(backbone=SmallCNN(widths=(8, 16)))
    assert "backbone" not in model.hparams
    trainer = make_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=mnist_dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "m.ckpt", backbone=SmallCNN(widths=(8, 16)))
    assert torch.equal(loaded.head.weight, model.head.weight)


def test_backbone_choices() -> None:
    images = torch.randn(2, 1, 28, 28)
    assert ImageClassifier(backbone="resnet")(images).shape == (2, 10)
    # A torchvision classifier by name: first convolution adapted to 1 channel, its fc replaced by the head.
    torchvision_model = ImageClassifier(backbone="resnet18", num_classes=7, in_channels=1)
    assert torchvision_model.backbone.conv1.in_channels == 1
    assert isinstance(torchvision_model.backbone.fc, nn.Identity)
    assert torchvision_model(images).shape == (2, 7)
    # A network ending in nn.Linear: the last Linear becomes the head.
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 5))
    model = ImageClassifier(backbone=mlp, num_classes=4)
    assert model.backbone.out_features == 32
    assert model(images).shape == (2, 4)
    colour = ImageClassifier(backbone="cnn", in_channels=3)
    assert colour(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(("backbone", "width", "channels"), [("cnn", 8, [8, 16, 32]), ("resnet", 4, [4, 4, 8, 16])])
def test_width_sets_the_channels_of_plkits_backbones(backbone: str, width: int, channels: list[int]) -> None:
    model = ImageClassifier(backbone=backbone, width=width)
    convs = [m.out_channels for m in model.backbone.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert sorted(set(convs)) == sorted(set(channels))
    assert model.head.in_features == model.backbone.out_features
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert model.hparams["width"] == width


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "resnet9000"}, "backbone='resnet9000' is neither one of plkit's .cnn, resnet."),
        ({"backbone": nn.Sequential(nn.Conv2d(1, 4, 3))}, "has no nn.Linear layer"),
        ({"scheduler_interval": "batch"}, "scheduler_interval='batch': choose 'step', 'epoch' or None"),
        ({"label_smoothing": 1.0}, r"label_smoothing=1\.0: it must be in \[0, 1\)"),
        ({"dropout": -0.5}, "dropout=-0.5"),
        ({"num_classes": 0}, "num_classes=0"),
        ({"in_channels": 0}, "in_channels=0"),
        ({"width": 0}, "width=0: it must be >= 1"),
        (
            {"backbone": "resnet18", "width": 8},
            "width=8 applies to plkit's backbones .cnn, resnet., not to torchvision",
        ),
        ({"backbone": nn.Sequential(nn.Flatten(), nn.Linear(784, 3)), "width": 8}, "not to a module"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageClassifier(**kwargs)


def test_channels_last_gives_the_same_outputs() -> None:
    torch.manual_seed(0)
    fast = ImageClassifier(backbone="resnet", channels_last=True).eval()
    plain = ImageClassifier(backbone="resnet", channels_last=False).eval()
    plain.load_state_dict(fast.state_dict())
    assert fast.backbone.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), plain(images), rtol=1e-4, atol=1e-5)


def test_fit_without_validation_data(make_trainer: Callable[..., pl.Trainer], mnist_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=mnist_dir, batch_size=64, val_size=0, download=False)
    trainer = make_trainer(max_epochs=1, limit_train_batches=2)
    trainer.fit(ImageClassifier(width=4), datamodule=dm)
    assert "train/loss" in trainer.callback_metrics
    assert "val/acc" not in trainer.callback_metrics


@pytest.mark.parametrize("backbone", ["cnn", "resnet"])
def test_torch_export_matches_eager(backbone: str) -> None:
    torch.manual_seed(0)
    model = ImageClassifier(backbone=backbone).eval()
    example = torch.randn(3, 1, 28, 28)
    exported = torch.export.export(model, (example,))
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(images), model(images))


@pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxscript") is None,
    reason="to_onnx needs the onnx and onnxscript packages, which are not installed",
)
def test_to_onnx(tmp_path: Path) -> None:
    model = ImageClassifier().eval()
    model.to_onnx(tmp_path / "model.onnx", torch.randn(1, 1, 28, 28))
    assert (tmp_path / "model.onnx").stat().st_size > 0


@pytest.mark.parametrize("module", [MNISTDataModule, FashionMNISTDataModule, KMNISTDataModule, CIFAR10DataModule])
def test_every_image_data_module_runs_all_four_verbs(
    module: type, make_trainer: Callable[..., pl.Trainer], mnist_dir: Path, tmp_path: Path
) -> None:
    # The MNIST family reads the same tiny IDX files; CIFAR-10 gets its own pickled batches.
    data_dir = make_cifar10(tmp_path / "cifar") if module is CIFAR10DataModule else mnist_dir
    dm = module(data_dir=data_dir, batch_size=16, val_size=32, download=False, augment=True)
    channels = dm.image_shape[0]
    model = ImageClassifier(backbone="cnn", width=4, in_channels=channels, optimizer=AdamW)
    trainer = make_trainer(max_epochs=1, limit_train_batches=2)
    trainer.fit(model, datamodule=dm)
    assert {"train/loss", "val/loss", "val/acc"} <= set(trainer.callback_metrics)
    (validated,) = trainer.validate(model, datamodule=dm, verbose=False)
    assert set(validated) == {"val/loss", "val/acc"}
    (tested,) = trainer.test(model, datamodule=dm, verbose=False)
    assert 0.0 <= tested["test/acc"] <= 1.0
    probs = torch.cat([p["probabilities"] for p in trainer.predict(model, datamodule=dm)])
    assert probs.shape == (len(dm.dataset("test")), 10)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(len(probs)))


@pytest.mark.parametrize("model_channels_last", [False, True])
def test_channels_last_model_and_data_train_and_log_together(
    model_channels_last: bool, make_trainer: Callable[..., pl.Trainer], mnist_dir: Path, tmp_path: Path
) -> None:
    # Both classes take channels_last; a logger records both modules' hyperparameters, which must not clash.
    dm = MNISTDataModule(data_dir=mnist_dir, batch_size=16, val_size=16, download=False, channels_last=True)
    model = ImageClassifier(width=4, channels_last=model_channels_last)
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=CSVLogger(tmp_path))
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2
    assert model.hparams["channels_last"] is model_channels_last
