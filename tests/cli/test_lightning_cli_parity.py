"""``PlkitCLI`` is a drop-in ``LightningCLI``: every way Lightning's docs and test-suite construct the CLI.

Each test runs the same body against both classes (the ``cli_class`` fixture) and asserts the same outcome;
where plkit's documented defaults make a difference (a run folder under ``runs/``, ``last.ckpt``, the config
saved with ``overwrite``), the test says so and checks plkit's side of it. The cases follow Lightning's own
``tests/tests_pytorch/test_cli.py`` (2.6) and ``examples/pytorch/basics/autoencoder.py``.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

from plkit.cli import PlkitCLI

from fakedata import make_mnist

# Keep every real fit to one batch of each loop, quietly.
TINY = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture(params=[LightningCLI, PlkitCLI], ids=["LightningCLI", "PlkitCLI"])
def cli_class(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> type[LightningCLI]:
    """Both CLIs, each run in an empty working directory (Lightning's tests use ``cleandir`` the same way)."""
    monkeypatch.chdir(tmp_path)
    return request.param


def plkit(cli_class: type) -> bool:
    return issubclass(cli_class, PlkitCLI)


class FooModel(BoringModel):
    def __init__(self, foo: int = 123) -> None:
        super().__init__()
        self.foo = foo


def test_positional_model_and_datamodule_classes_fit(cli_class: type[LightningCLI], tmp_path: Path) -> None:
    with mock.patch("sys.argv", ["any.py", "fit", *TINY]):
        cli = cli_class(BoringModel, BoringDataModule)
    assert type(cli.model) is BoringModel
    assert type(cli.datamodule) is BoringDataModule
    assert cli.trainer.global_step == 2
    assert cli.trainer.state.finished
    run = Path(cli.trainer.log_dir).resolve()
    assert (run / "config.yaml").is_file()
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    if plkit(cli_class):
        # plkit's defaults: runs/<model>/version_0, and BoringModel logs no val/loss: last.ckpt only.
        assert run == tmp_path / "runs" / "boring_model" / "version_0"
        assert checkpoints == ["last.ckpt"]
    else:
        assert run == tmp_path / "lightning_logs" / "version_0"
        assert checkpoints == ["epoch=0-step=2.ckpt"]


def test_the_same_training_as_lightning_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = {}
    for cli_class in (LightningCLI, PlkitCLI):
        (tmp_path / cli_class.__name__).mkdir()
        monkeypatch.chdir(tmp_path / cli_class.__name__)
        cli = cli_class(BoringModel, BoringDataModule, seed_everything_default=7, args=["fit", *TINY])
        weights[cli_class] = {k: v.clone() for k, v in cli.model.state_dict().items()}
    assert weights[LightningCLI].keys() == weights[PlkitCLI].keys()
    for key, value in weights[LightningCLI].items():
        assert torch.equal(value, weights[PlkitCLI][key]), key


def test_subclass_mode_with_model_given_by_class_path(cli_class: type[LightningCLI]) -> None:
    args = ["fit", "--model=lightning.pytorch.demos.boring_classes.BoringModel", "--trainer.logger=false"]
    with mock.patch("lightning.pytorch.Trainer.fit", autospec=True) as fit:
        cli = cli_class(BoringModel, BoringDataModule, subclass_mode_model=True, args=args)
    fit.assert_called_once()
    assert type(cli.model) is BoringModel
    assert cli.config.fit.model.class_path == "lightning.pytorch.demos.boring_classes.BoringModel"


def test_no_classes_given_means_subclass_mode(cli_class: type[LightningCLI]) -> None:
    args = ["fit", "--model=BoringModel", "--data=BoringDataModule", "--trainer.logger=false"]
    with mock.patch("lightning.pytorch.Trainer.fit", autospec=True):
        cli = cli_class(args=args)
    assert type(cli.model) is BoringModel
    assert type(cli.datamodule) is BoringDataModule


def test_run_false_instantiates_only(cli_class: type[LightningCLI]) -> None:
    with mock.patch("sys.argv", ["any.py", "--trainer.logger=false", "--trainer.max_epochs=1", *TINY[1:]]):
        cli = cli_class(BoringModel, run=False)
    assert cli.subcommand is None
    assert isinstance(cli.trainer, Trainer)
    assert cli.trainer.max_epochs == 1
    save_config = next(c for c in cli.trainer.callbacks if isinstance(c, SaveConfigCallback))
    assert save_config.overwrite is plkit(cli_class)  # plkit's default: overwrite=True
    assert not save_config.already_saved
    cli.trainer.fit(cli.model)
    assert Path("config.yaml").is_file()
    cli.trainer.test(cli.model)  # the config is not saved twice


@pytest.mark.parametrize(
    "args",
    [
        ["--trainer.logger=False", "--model.foo=456"],
        {"trainer": {"logger": False}, "model": {"foo": 456}},
        Namespace(trainer=Namespace(logger=False), model=Namespace(foo=456)),
    ],
    ids=["list", "dict", "Namespace"],
)
def test_args_as_list_dict_or_namespace(cli_class: type[LightningCLI], args: object) -> None:
    with mock.patch("sys.argv", [""]):
        cli = cli_class(FooModel, run=False, args=args)
    assert isinstance(cli.model, FooModel)
    assert cli.config.trainer.logger is False
    assert cli.model.foo == 456


def test_args_and_sys_argv_warn_as_in_lightning(cli_class: type[LightningCLI]) -> None:
    with mock.patch("sys.argv", ["", "--model.foo=456"]), pytest.warns(Warning, match="LightningCLI's args parameter"):
        cli = cli_class(FooModel, run=False, args=["--model.foo=789", "--trainer.logger=false"])
    assert cli.model.foo == 789


def test_subclass_hooks_without_super(cli_class: type[LightningCLI]) -> None:
    calls = []

    class MyCLI(cli_class):  # type: ignore[valid-type,misc]
        def add_arguments_to_parser(self, parser):  # no super(): the normal LightningCLI pattern
            parser.add_lightning_class_args(EarlyStopping, "my_early_stopping")
            parser.set_defaults({"my_early_stopping.monitor": "valid_loss", "my_early_stopping.patience": 5})
            parser.link_arguments("trainer.max_epochs", "model.foo")

        def before_instantiate_classes(self):
            calls.append("before")

        def after_instantiate_classes(self):
            calls.append("after")

    with mock.patch("lightning.pytorch.Trainer.fit", autospec=True):
        cli = MyCLI(FooModel, args=["fit", "--trainer.max_epochs=3", "--trainer.logger=false"])
    assert calls == ["before", "after"]
    stoppers = [c for c in cli.trainer.callbacks if isinstance(c, EarlyStopping)]
    assert [(s.monitor, s.patience) for s in stoppers] == [("valid_loss", 5)]
    assert cli.model.foo == 3


def test_save_config_kwargs_config_filename(cli_class: type[LightningCLI], tmp_path: Path) -> None:
    defaults = {"default_root_dir": str(tmp_path), "logger": False, "max_steps": 1, "max_epochs": 1}
    cli_class(BoringModel, trainer_defaults=defaults, save_config_kwargs={"config_filename": "name.yaml"}, args=["fit"])
    assert (tmp_path / "name.yaml").is_file()
    assert not (tmp_path / "config.yaml").exists()


def test_save_config_overwrite_is_plkits_default(cli_class: type[LightningCLI]) -> None:
    defaults = {"max_steps": 1, "max_epochs": 1, "logger": False}
    cli_class(BoringModel, trainer_defaults=defaults, args=["fit"])
    if plkit(cli_class):
        cli_class(BoringModel, trainer_defaults=defaults, args=["fit"])  # overwrites
        with pytest.raises(RuntimeError, match="Aborting to avoid overwriting"):
            cli_class(BoringModel, trainer_defaults=defaults, save_config_kwargs={"overwrite": False}, args=["fit"])
    else:
        with pytest.raises(RuntimeError, match="Aborting to avoid overwriting"):
            cli_class(BoringModel, trainer_defaults=defaults, args=["fit"])


class Model(LightningModule):
    def __init__(self, model_param: int) -> None:
        super().__init__()
        self.model_param = model_param


def _model_builder(model_param: int) -> Model:
    return Model(model_param)


def _trainer_builder(
    limit_train_batches: int, fast_dev_run: bool = False, callbacks: list[Callback] | Callback | None = None
) -> Trainer:
    return Trainer(limit_train_batches=limit_train_batches, fast_dev_run=fast_dev_run, callbacks=callbacks)


@pytest.mark.parametrize(("trainer_class", "model_class"), [(Trainer, Model), (_trainer_builder, _model_builder)])
def test_trainer_and_model_classes_or_callables(
    cli_class: type[LightningCLI], trainer_class: Callable, model_class: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = {}

    def fit(trainer: Trainer, model: LightningModule) -> None:
        seen.update(model_param=model.model_param, limit=trainer.limit_train_batches)

    monkeypatch.setattr(Trainer, "fit", fit)
    args = ["fit", "--model.model_param=7", "--trainer.limit_train_batches=100"]
    with mock.patch("sys.argv", ["any.py", *args]):
        cli_class(model_class, trainer_class=trainer_class, save_config_callback=SaveConfigCallback)
    assert seen == {"model_param": 7, "limit": 100}


def test_parser_kwargs_per_subcommand(cli_class: type[LightningCLI]) -> None:
    Path("fit.yaml").write_text("trainer:\n  limit_train_batches: 2\n")
    Path("validate.yaml").write_text("trainer:\n  limit_val_batches: 3\n")
    parser_kwargs = {
        "fit": {"default_config_files": ["fit.yaml"]},
        "validate": {"default_config_files": ["validate.yaml"]},
    }
    with mock.patch("lightning.pytorch.Trainer.fit", autospec=True):
        cli = cli_class(BoringModel, parser_kwargs=parser_kwargs, args=["fit"])
    assert (cli.trainer.limit_train_batches, cli.trainer.limit_val_batches) == (2, 1.0)
    with mock.patch("lightning.pytorch.Trainer.validate", autospec=True):
        cli = cli_class(BoringModel, parser_kwargs=parser_kwargs, args=["validate"])
    assert (cli.trainer.limit_train_batches, cli.trainer.limit_val_batches) == (1.0, 3)


def test_environment_variables(cli_class: type[LightningCLI]) -> None:
    env = {"PL_FIT__TRAINER__MAX_EPOCHS": "1", "PL_FIT__TRAINER__LOGGER": "False", "PL_FIT__MODEL__FOO": "5"}
    with mock.patch.dict(os.environ, env), mock.patch("lightning.pytorch.Trainer.fit", autospec=True):
        cli = cli_class(FooModel, parser_kwargs={"default_env": True}, args=["fit"])
    assert cli.config.fit.trainer.max_epochs == 1
    assert cli.config.fit.trainer.logger is False
    assert cli.model.foo == 5


def test_config_before_the_subcommand_in_lightnings_form(cli_class: type[LightningCLI]) -> None:
    config = {
        "validate": {"trainer": {"limit_val_batches": 1}, "verbose": False},
        "test": {"trainer": {"limit_test_batches": 1}, "verbose": True},
    }
    with mock.patch("lightning.pytorch.Trainer.test", autospec=True) as test:
        cli = cli_class(BoringModel, args=[f"--config={config}", "test", "--trainer.logger=false"])
    # Trainer.test has weights_only from Lightning 2.6; LightningCLI passes it where it exists.
    weights_only = {"weights_only": None} if "weights_only" in inspect.signature(Trainer.test).parameters else {}
    test.assert_called_once_with(cli.trainer, model=cli.model, verbose=True, ckpt_path=None, **weights_only)
    assert cli.trainer.limit_test_batches == 1


@pytest.mark.skipif(
    "load_from_checkpoint_support" not in inspect.signature(LightningCLI.__init__).parameters,
    reason="this Lightning's CLI does not read hyperparameters from --ckpt_path (neither CLI does)",
)
def test_ckpt_path_restores_the_model_hyperparameters(cli_class: type[LightningCLI]) -> None:
    class CkptPathModel(BoringModel):
        def __init__(self, out_dim: int = 2, hidden_dim: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(32, out_dim)

    class CkptPathCLI(cli_class):  # type: ignore[valid-type,misc]
        def add_arguments_to_parser(self, parser):
            parser.link_arguments("model.out_dim", "model.hidden_dim", compute_fn=lambda x: x * 2)

    cli = CkptPathCLI(CkptPathModel, args=["fit", "--model.out_dim=3", *TINY])
    assert cli.config.fit.model.hidden_dim == 6
    run = Path(cli.trainer.log_dir)
    checkpoint = next((run / "checkpoints").glob("*.ckpt"))
    with mock.patch("lightning.pytorch.Trainer.predict", autospec=True):
        cli = CkptPathCLI(CkptPathModel, args=["predict", f"--ckpt_path={checkpoint}"])
    assert cli.config.predict.model.out_dim == 3
    assert cli.config.predict.model.hidden_dim == 6
    assert cli.config_init.predict.model.layer.out_features == 3
    if plkit(cli_class):
        assert Path(cli.trainer.log_dir) == run, "plkit continues the checkpoint's own run folder"


def test_print_config(cli_class: type[LightningCLI], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        cli_class(FooModel, args=["fit", "--model.foo=9", "--print_config"])
    assert exit.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["foo"] == 9
    assert ("checkpoint" in config) is plkit(cli_class)  # plkit's checkpoint: settings


@pytest.mark.integration  # a process per CLI, reading 60,000 MNIST images through torchvision twice
def test_lightnings_autoencoder_example_with_only_the_import_changed(
    cli_class: type[LightningCLI], tmp_path: Path
) -> None:
    """Lightning's ``examples/pytorch/basics/autoencoder.py``: positional classes, ``run=False``, ``val_loss``.

    It runs as a script of its own, as a user runs it; in this process its demo ``MNISTDataModule`` would
    also make the recipes' short class name ``MNISTDataModule`` ambiguous for the tests that follow.
    """
    example = tmp_path / "examples" / "pytorch" / "basics" / "autoencoder.py"
    example.parent.mkdir(parents=True)
    swap = f"from {cli_class.__module__} import {cli_class.__name__} as LightningCLI"
    example.write_text(AUTOENCODER.replace("from lightning.pytorch.cli import LightningCLI", swap))
    # It reads MNIST with torchvision (60,000 training images, split 55,000/5,000), from two folders.
    raw = make_mnist(tmp_path / "examples" / "Datasets" / "MNIST" / "raw", n_train=60000, n_test=64, gz=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "MNIST").symlink_to(raw.parent)
    limits = ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1"]
    limits += ["--trainer.limit_predict_batches=1", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false"]
    proc = subprocess.run(
        [sys.executable, str(example), *limits], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test_loss" in proc.stdout  # trainer.test(ckpt_path="best") ran
    assert "tensor(" in proc.stdout  # and the example printed its first predictions
    assert (tmp_path / "grid_generated_0.png").is_file()
    if plkit(cli_class):
        # No val/loss logged: one warning, plkit keeps last.ckpt only, and "best" means it.
        assert re.search(r"checkpoint.monitor 'val/loss' is never logged.*did you mean 'val_loss'", proc.stderr)
        run = tmp_path / "runs" / "lit_auto_encoder" / "version_0"
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    else:
        run = tmp_path / "lightning_logs" / "version_0"
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch=0-step=2.ckpt"]
    assert (run / "config.yaml").is_file()


# Lightning 2.6's examples/pytorch/basics/autoencoder.py, verbatim but for its license header.
AUTOENCODER = '''
"""MNIST autoencoder example.

To run: python autoencoder.py --trainer.max_epochs=50

"""

from os import path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, random_split

from lightning.pytorch import LightningDataModule, LightningModule, Trainer, callbacks, cli_lightning_logo
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.mnist_datamodule import MNIST
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.imports import _TORCHVISION_AVAILABLE

if _TORCHVISION_AVAILABLE:
    import torchvision
    from torchvision import transforms
    from torchvision.utils import save_image

DATASETS_PATH = path.join(path.dirname(__file__), "..", "..", "Datasets")


class ImageSampler(callbacks.Callback):
    def __init__(
        self,
        num_samples: int = 3,
        nrow: int = 8,
        padding: int = 2,
        normalize: bool = True,
        value_range: Optional[tuple[int, int]] = None,
        scale_each: bool = False,
        pad_value: int = 0,
    ) -> None:
        """
        Args:
            num_samples: Number of images displayed in the grid. Default: ``3``.
            nrow: Number of images displayed in each row of the grid.
                The final grid size is ``(B / nrow, nrow)``. Default: ``8``.
            padding: Amount of padding. Default: ``2``.
            normalize: If ``True``, shift the image to the range (0, 1),
                by the min and max values specified by :attr:`range`. Default: ``False``.
            value_range: Tuple (min, max) where min and max are numbers,
                then these numbers are used to normalize the image. By default, min and max
                are computed from the tensor.
            scale_each: If ``True``, scale each image in the batch of
                images separately rather than the (min, max) over all images. Default: ``False``.
            pad_value: Value for the padded pixels. Default: ``0``.
        """
        if not _TORCHVISION_AVAILABLE:  # pragma: no cover
            raise ModuleNotFoundError("You want to use `torchvision` which is not installed yet.")

        super().__init__()
        self.num_samples = num_samples
        self.nrow = nrow
        self.padding = padding
        self.normalize = normalize
        self.value_range = value_range
        self.scale_each = scale_each
        self.pad_value = pad_value

    def _to_grid(self, images):
        return torchvision.utils.make_grid(
            tensor=images,
            nrow=self.nrow,
            padding=self.padding,
            normalize=self.normalize,
            value_range=self.value_range,
            scale_each=self.scale_each,
            pad_value=self.pad_value,
        )

    @rank_zero_only
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not _TORCHVISION_AVAILABLE:
            return

        images, _ = next(iter(DataLoader(trainer.datamodule.mnist_val, batch_size=self.num_samples)))
        images_flattened = images.view(images.size(0), -1)

        # generate images
        with torch.no_grad():
            pl_module.eval()
            images_generated = pl_module(images_flattened.to(pl_module.device))
            pl_module.train()

        if trainer.current_epoch == 0:
            save_image(self._to_grid(images), f"grid_ori_{trainer.current_epoch}.png")
        save_image(self._to_grid(images_generated.reshape(images.shape)), f"grid_generated_{trainer.current_epoch}.png")


class LitAutoEncoder(LightningModule):
    """
    >>> LitAutoEncoder()  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    LitAutoEncoder(
      (encoder): ...
      (decoder): ...
    )
    """

    def __init__(self, hidden_dim: int = 64, learning_rate=10e-3):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(nn.Linear(28 * 28, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 3))
        self.decoder = nn.Sequential(nn.Linear(3, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 28 * 28))

    def forward(self, x):
        z = self.encoder(x)
        return self.decoder(z)

    def training_step(self, batch, batch_idx):
        return self._common_step(batch, batch_idx, "train")

    def validation_step(self, batch, batch_idx):
        self._common_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        self._common_step(batch, batch_idx, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=None):
        x = self._prepare_batch(batch)
        return self(x)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)

    def _prepare_batch(self, batch):
        x, _ = batch
        return x.view(x.size(0), -1)

    def _common_step(self, batch, batch_idx, stage: str):
        x = self._prepare_batch(batch)
        loss = F.mse_loss(x, self(x))
        self.log(f"{stage}_loss", loss, on_step=True)
        return loss


class MyDataModule(LightningDataModule):
    def __init__(self, batch_size: int = 32):
        super().__init__()
        dataset = MNIST(DATASETS_PATH, train=True, download=True, transform=transforms.ToTensor())
        self.mnist_test = MNIST(DATASETS_PATH, train=False, download=True, transform=transforms.ToTensor())
        self.mnist_train, self.mnist_val = random_split(
            dataset, [55000, 5000], generator=torch.Generator().manual_seed(42)
        )
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.mnist_train, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.mnist_val, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.mnist_test, batch_size=self.batch_size)

    def predict_dataloader(self):
        return DataLoader(self.mnist_test, batch_size=self.batch_size)


def cli_main():
    cli = LightningCLI(
        LitAutoEncoder,
        MyDataModule,
        seed_everything_default=1234,
        run=False,  # used to de-activate automatic fitting.
        trainer_defaults={"callbacks": ImageSampler(), "max_epochs": 10},
        save_config_kwargs={"overwrite": True},
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.test(ckpt_path="best", datamodule=cli.datamodule)
    predictions = cli.trainer.predict(ckpt_path="best", datamodule=cli.datamodule)
    print(predictions[0])


if __name__ == "__main__":
    cli_lightning_logo()
    cli_main()
'''
