"""``plkit export``: ImageClassifier and AutoEncoder checkpoints in every format, checked against the eager model.

The default run exports checkpoints made here in milliseconds (an untrained ``ImageClassifier`` of width 4
and its data module, recorded the way ``LightningCLI`` records them) to ``exported_program``, the fastest
format, and checks every refusal. The ``integration`` tests train the ``mnist`` and ``mnist_autoencoder``
recipes once with ``plkit fit`` on tiny generated IDX files and export both in every format (about a minute
on two busy cores). Every exported file is loaded back here with its own runtime, independently of the
command's verification, and compared with the eager model on a batch size that differs from the ones the
command used (the batch dimension is dynamic).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import shutil
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import pytest
import torch
import yaml
from torch import Tensor
from typing_extensions import override

from plkit.cli import main
from plkit.cli._export_formats import FILENAMES, FORMATS
from plkit.data import MNISTDataModule
from plkit.models import AutoEncoder, ImageClassifier

from cli_helpers import run
from fakedata import make_mnist

RUNS = {"mnist": ImageClassifier, "mnist_autoencoder": AutoEncoder}
needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("onnx", "onnxruntime", "onnxscript")),
    reason='the onnx format needs the export extra: pip install "plkit[export]"',
)
FORMAT_PARAMS = [pytest.param(fmt, marks=needs_onnx) if fmt == "onnx" else fmt for fmt in FORMATS]


def run_file(path: Path, fmt: str, inputs: Tensor) -> Tensor:
    """Run an exported file the way a deployment would, without plkit."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["input"]
        return torch.from_numpy(session.run(None, {"input": inputs.numpy()})[0])
    if fmt == "torchscript":
        return torch.jit.load(str(path))(inputs)
    return torch.export.load(str(path)).module()(inputs)


def first_test_images(data_dir: str | Path, n: int) -> Tensor:
    """The first ``n`` normalised images of the test split, read by plkit's data module."""
    datamodule = MNISTDataModule(data_dir=data_dir)
    datamodule.setup("test")
    return next(iter(datamodule.test_dataloader()))["input"][:n]


def one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``plkit ARGS``, expect exit status 2 and a single line on stderr, and return that line."""
    code, out, err = run(args, capsys)
    assert code == 2, err
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    return err


def checkpoint_of(model: pl.LightningModule, path: Path, datamodule: pl.LightningDataModule | None = None) -> Path:
    """A checkpoint as ``plkit fit`` writes it: the weights, and the classes and arguments of model and data."""
    hparams: dict[str, Any] = {"_class_path": f"{type(model).__module__}.{type(model).__name__}", **model.hparams}
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": hparams}
    if datamodule is not None:
        checkpoint["datamodule_hyper_parameters"] = {"_class_path": "plkit.data.MNISTDataModule", **datamodule.hparams}
    torch.save({**checkpoint, "pytorch-lightning_version": lightning.__version__}, path)
    return path


@pytest.fixture
def classifier_ckpt(tmp_path: Path, mnist_dir: Path) -> Path:
    """An ImageClassifier of width 4 and its MNIST data module, moved out of any run folder."""
    torch.manual_seed(0)
    model = ImageClassifier(num_classes=10, in_channels=1, width=4)
    return checkpoint_of(model, tmp_path / "classifier.ckpt", MNISTDataModule(data_dir=mnist_dir))


# The default run: hand-made checkpoints, the exported_program format.


def test_a_checkpoint_alone_exports_with_its_metadata(
    classifier_ckpt: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["export", "--ckpt_path", str(classifier_ckpt), "--format", "exported_program"], capsys)
    assert code == 0, err
    export_dir = classifier_ckpt.parent / "export"  # not in a run folder: beside the checkpoint
    path = export_dir / "model.pt2"
    assert sorted(p.name for p in export_dir.iterdir()) == ["model.pt2", "model.pt2.json"]

    model = ImageClassifier.load_from_checkpoint(classifier_ckpt, map_location="cpu").eval()
    inputs = first_test_images(mnist_dir, 5)  # 5 rows: neither the export's example (2) nor its checks (32, 1)
    with torch.no_grad():
        torch.testing.assert_close(run_file(path, "exported_program", inputs), model(inputs), atol=1e-5, rtol=1e-4)

    meta = json.loads(path.with_name("model.pt2.json").read_text())
    assert meta["model"] == "plkit.models.image_classifier.ImageClassifier"
    assert meta["data_module"] == "plkit.data.MNISTDataModule"
    assert meta["input"] == {"name": "input", "shape": ["batch", 1, 28, 28], "dtype": "float32"}
    assert meta["output"] == {"name": "output", "shape": ["batch", 10], "dtype": "float32"}
    assert meta["output_is"] == "logits"
    assert meta["num_classes"] == 10
    assert meta["class_names"] == list("0123456789")
    assert meta["normalisation"]["mean"] == list(MNISTDataModule.mean)
    assert meta["normalisation"]["std"] == list(MNISTDataModule.std)
    assert meta["checkpoint"]["sha256"] == hashlib.sha256(classifier_ckpt.read_bytes()).hexdigest()
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    check = meta["verification"]
    assert check["inputs"] == "real"
    assert check["source"] == "the first 32 of MNISTDataModule's test split"
    assert check["batch_sizes"] == [32, 1]
    assert 0 <= check["max_abs_diff"] <= check["tolerance"]
    assert f"max abs difference {check['max_abs_diff']:.2e}" in out
    assert meta["versions"]["torch"] == torch.__version__


def test_bad_input_gets_one_line_and_leaves_nothing(
    classifier_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = str(classifier_ckpt)
    export_dir = tmp_path / "export"

    err = one_line_error(["export", "--ckpt_path", ckpt, "--format", "onxx"], capsys)
    assert "--format 'onxx': did you mean 'onnx'?" in err

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(classifier_ckpt.read_bytes()[:1000])
    err = one_line_error(["export", "--ckpt_path", str(truncated), "--format", "exported_program"], capsys)
    assert f"{truncated} cannot be read as a checkpoint" in err

    err = one_line_error(["export", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--format", "torchscript"], capsys)
    assert "missing.ckpt' is not a file" in err

    err = one_line_error(["export", "--ckpt_path", ckpt, "--format", "exported_program", "--part", "full"], capsys)
    assert "--part full applies to an AutoEncoder; ImageClassifier exports its forward" in err

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "onnxruntime" else real_find_spec(name, *args)
    )
    err = one_line_error(["export", "--ckpt_path", ckpt, "--format", "onnx"], capsys)
    assert 'needs onnxruntime, which is not installed: pip install "plkit[export]"' in err
    assert not export_dir.exists()

    export_dir.mkdir()
    (export_dir / "model.pt2").write_bytes(b"an earlier export")
    err = one_line_error(["export", "--ckpt_path", ckpt, "--format", "exported_program"], capsys)
    assert f"{export_dir} already holds an export as exported_program (model.pt2): pass --force" in err
    assert (export_dir / "model.pt2").read_bytes() == b"an earlier export"


class ScaleModel(pl.LightningModule):
    """The smallest model that exports: it multiplies its ``[B, 3, 3]`` inputs by one learned number."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.example_input_array = torch.zeros(2, 3, 3)

    @override
    def forward(self, inputs: Tensor) -> Tensor:
        return inputs * self.scale


class DataDependentModel(ScaleModel):
    """A Python branch on a tensor's values: no format that starts from torch.export can capture it."""

    @override
    def forward(self, inputs: Tensor) -> Tensor:
        if inputs.sum() > 0:
            return inputs * self.scale
        return inputs


def test_a_failed_verification_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from plkit.cli import export

    ckpt = checkpoint_of(ScaleModel(), tmp_path / "scale.ckpt")
    real_load = export.load
    # The file as written, run back shifted by 0.01: what an exporter that changed the numbers would give.
    monkeypatch.setattr(export, "load", lambda path, fmt: lambda batch: real_load(path, fmt)(batch) + 0.01)
    err = one_line_error(["export", "--ckpt_path", str(ckpt), "--format", "exported_program"], capsys)
    assert "outputs differ from the eager model's by 1.00e-02 (tolerance" in err
    assert "on 32 random inputs; the run names no data module: nothing kept" in err
    assert not (tmp_path / "export").exists()

    def broken(path: Path, fmt: str) -> Any:
        raise RuntimeError("the runtime refuses the file\nand says more on later lines")

    monkeypatch.setattr(export, "load", broken)
    err = one_line_error(["export", "--ckpt_path", str(ckpt), "--format", "exported_program"], capsys)
    assert "the exported_program file fails in torch.export.load: RuntimeError: the runtime refuses the file" in err
    assert not (tmp_path / "export").exists()


class EigenvaluesModel(ScaleModel):
    """Eigenvalues of a symmetric matrix made from each input: torch.export captures them, ONNX has no such op."""

    @override
    def forward(self, inputs: Tensor) -> Tensor:
        return torch.linalg.eigvalsh(inputs @ inputs.transpose(1, 2) * self.scale)


def test_data_dependent_control_flow_is_named_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = checkpoint_of(DataDependentModel(), tmp_path / "branch.ckpt")
    err = one_line_error(["export", "--ckpt_path", str(ckpt), "--format", "exported_program"], capsys)
    assert "exported_program cannot export DataDependentModel: control flow that depends on a tensor's values" in err
    assert "test_export.py" in err
    assert "`if inputs.sum() > 0:`" in err
    assert "no other format exports it either" in err

    err = one_line_error(["export", "--ckpt_path", str(ckpt), "--format", "torchscript"], capsys)
    source, first = inspect.getsourcelines(DataDependentModel.forward)
    line = first + next(i for i, text in enumerate(source) if "if inputs.sum() > 0:" in text)
    assert "torch.jit.trace would fix a value computed from the inputs: Converting a tensor to a Python boolean" in err
    assert f"at test_export.py:{line}" in err
    assert not (tmp_path / "export").exists()


# The integration run: the recipes trained with plkit fit, every format.


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``runs/mnist/version_0`` and ``runs/mnist_autoencoder/version_0``, each a finished tiny fit."""
    root = tmp_path_factory.mktemp("trained")
    data_dir = make_mnist(root / "data", n_train=160, n_test=40)
    overlay = {
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "log_every_n_steps": 1,
            "default_root_dir": str(root),
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "data": {"init_args": {"data_dir": str(data_dir), "val_size": 32, "batch_size": 32}},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(overlay))
    for recipe in RUNS:
        try:
            main(["fit", "--config", recipe, "--config", str(root / "tiny.yaml")])
        except SystemExit as exit:
            if exit.code:
                pytest.fail(f"plkit fit --config {recipe} exited with {exit.code}")
    return root


@pytest.fixture
def runs(trained: Path, tmp_path: Path) -> Path:
    """This test's own copy of the trained runs: ``runs/<recipe>/version_0``."""
    shutil.copytree(trained / "runs", tmp_path / "runs")
    return tmp_path / "runs"


def best(runs: Path, recipe: str) -> Path:
    return runs / recipe / "version_0" / "checkpoints" / "best.ckpt"


def data_dir_of(runs: Path, recipe: str) -> str:
    return yaml.safe_load((runs / recipe / "version_0" / "config.yaml").read_text())["data"]["init_args"]["data_dir"]


@pytest.mark.integration
@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
@pytest.mark.parametrize("recipe", list(RUNS))
def test_trained_runs_export_in_every_format_and_match_the_eager_model(
    runs: Path, recipe: str, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = best(runs, recipe)
    code, out, err = run(["export", "--ckpt_path", str(ckpt), "--format", fmt], capsys)
    assert code == 0, err
    export_dir = runs / recipe / "version_0" / "export"
    path = export_dir / FILENAMES[fmt]
    assert sorted(p.name for p in export_dir.iterdir()) == sorted([path.name, f"{path.name}.json"])

    model = RUNS[recipe].load_from_checkpoint(ckpt, map_location="cpu").eval()
    inputs = first_test_images(data_dir_of(runs, recipe), 5)
    with torch.no_grad():
        expected, got = model(inputs), run_file(path, fmt, inputs)
    assert got.shape == expected.shape == (5, 10 if recipe == "mnist" else 16)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    meta = json.loads((export_dir / f"{path.name}.json").read_text())
    assert meta["format"] == fmt
    assert meta["model"] == f"plkit.models.{RUNS[recipe].__name__}"  # from the run's config.yaml
    assert meta["part"] == ("forward" if recipe == "mnist" else "encoder")
    assert meta["output_is"] == ("logits" if recipe == "mnist" else "embeddings")
    assert meta["input"]["shape"] == ["batch", 1, 28, 28]
    assert meta["checkpoint"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["verification"]["inputs"] == "real"
    assert 0 <= meta["verification"]["max_abs_diff"] <= meta["verification"]["tolerance"]
    assert f"{meta['verification']['max_abs_diff']:.2e}" in out
    if fmt == "onnx":
        assert meta["versions"]["opset"] >= 17
        assert meta["versions"]["onnxruntime"] == importlib.metadata.version("onnxruntime")


@pytest.mark.integration
@needs_onnx
def test_raw_images_classifier_takes_uint8_pixels_and_returns_probabilities(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = best(runs, "mnist")
    code, _, err = run(["export", "--ckpt_path", str(ckpt), "--format", "onnx", "--raw_images"], capsys)
    assert code == 0, err
    path = runs / "mnist" / "version_0" / "export" / "model.onnx"
    pixels = torch.randint(0, 256, (3, 1, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    model = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    with torch.no_grad():
        expected = model((pixels / 255.0 - MNISTDataModule.mean[0]) / MNISTDataModule.std[0]).softmax(dim=-1)
    torch.testing.assert_close(run_file(path, "onnx", pixels), expected, atol=1e-5, rtol=1e-4)
    meta = json.loads(path.with_name("model.onnx.json").read_text())
    assert meta["input"]["dtype"] == "uint8"
    assert meta["output_is"] == "class probabilities (softmax)"
    assert meta["normalisation"]["applied"] == "inside the file (it takes uint8 pixels)"


@pytest.mark.integration
def test_an_existing_export_is_replaced_only_with_force(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["export", "--ckpt_path", str(best(runs, "mnist")), "--format", "exported_program"]
    assert run(args, capsys)[0] == 0
    path = runs / "mnist" / "version_0" / "export" / "model.pt2"
    first = path.read_bytes()
    path.with_name("model.pt2.json").write_text("{}")  # so that a replacement shows

    err = one_line_error(args, capsys)
    assert "already holds an export as exported_program (model.pt2): pass --force to replace it" in err
    assert path.read_bytes() == first

    code, _, err = run([*args, "--force"], capsys)
    assert code == 0, err
    assert (
        json.loads(path.with_name("model.pt2.json").read_text())["sha256"]
        == hashlib.sha256(path.read_bytes()).hexdigest()
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt2", "model.pt2.json"]


@pytest.mark.integration
def test_autoencoder_full_part_returns_reconstructions(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = best(runs, "mnist_autoencoder")
    args = ["export", "--ckpt_path", str(ckpt), "--format", "torchscript", "--part", "full"]
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "TorchScript is deprecated" in out
    model = AutoEncoder.load_from_checkpoint(ckpt, map_location="cpu").eval()
    inputs = first_test_images(data_dir_of(runs, "mnist_autoencoder"), 3)
    with torch.no_grad():
        expected = model.decoder(model(inputs)).view_as(inputs)
    got = run_file(runs / "mnist_autoencoder" / "version_0" / "export" / "model.torchscript.pt", "torchscript", inputs)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.integration
def test_without_the_data_files_it_verifies_on_synthetic_inputs_and_says_so(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = runs / "mnist" / "version_0" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["data"]["init_args"]["data_dir"] = str(tmp_path / "moved")
    config_path.write_text(yaml.safe_dump(config))
    code, out, err = run(["export", "--ckpt_path", str(best(runs, "mnist")), "--format", "exported_program"], capsys)
    assert code == 0, err
    check = json.loads((runs / "mnist" / "version_0" / "export" / "model.pt2.json").read_text())["verification"]
    assert check["inputs"] == "synthetic"
    assert "MNISTDataModule's files are not here: DatasetNotFoundError: MNIST: no t10k-images" in check["source"]
    assert "verified with torch.export.load on synthetic inputs" in out


@pytest.mark.integration
@needs_onnx
def test_an_op_without_onnx_translation_is_named_with_the_formats_that_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = checkpoint_of(EigenvaluesModel(), tmp_path / "eigen.ckpt")
    err = one_line_error(["export", "--ckpt_path", str(ckpt), "--format", "onnx"], capsys)
    assert "onnx cannot export EigenvaluesModel: aten._linalg_eigh.default has no ONNX translation" in err
    assert "exported_program and torchscript work: --format exported_program" in err
    assert not (tmp_path / "export").exists()

    # The format it names works, verified on synthetic inputs shaped like example_input_array.
    code, _, err = run(["export", "--ckpt_path", str(ckpt), "--format", "exported_program"], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "export" / "model.pt2.json").read_text())
    assert meta["verification"]["inputs"] == "synthetic"
    assert meta["input"]["shape"] == ["batch", 3, 3]
