"""``ImageClassifier(compile=True)``: compiled when a trainer starts, the same checkpoints, eager when it cannot work.

The default tests compile with dynamo's ``eager`` backend (the same capture, no C++ build, a second instead of
half a minute); the ``slow`` test runs the real inductor backend.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from plkit.data import MNISTDataModule
from plkit.models import ImageClassifier

REAL_COMPILE = torch.compile


@pytest.fixture
def compile_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """torch.compile with the eager backend, counting the calls of each compiled function (one entry each)."""
    calls: list[int] = []

    def compile_counting(function: Callable, **kwargs: Any) -> Callable:
        compiled = REAL_COMPILE(function, backend="eager")
        index = len(calls)
        calls.append(0)

        def run(*args: Any) -> Any:
            calls[index] += 1
            return compiled(*args)

        return run

    monkeypatch.setattr(torch, "compile", compile_counting)
    return calls


def test_compiled_training_saves_plain_checkpoints_that_load_and_export(
    compile_calls: list[int], make_trainer: Callable[..., pl.Trainer], mnist_dm: MNISTDataModule, tmp_path: Path
) -> None:
    pl.seed_everything(0)
    model = ImageClassifier(width=4, compile=True)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)  # outside a trainer: eager
    assert compile_calls == []
    trainer = make_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=2, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=mnist_dm)
    assert compile_calls == [5]  # compiled once, at fit's start; 3 training and 2 validation batches ran through it
    trainer.save_checkpoint(tmp_path / "compiled.ckpt")

    state = torch.load(tmp_path / "compiled.ckpt", weights_only=True)["state_dict"]
    assert not [key for key in state if "_orig_mod" in key]
    plain = ImageClassifier(width=4)
    plain.load_state_dict(state)
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "compiled.ckpt").eval()
    images = torch.randn(3, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        expected = model(images)
        torch.testing.assert_close(plain.eval()(images), expected)
        torch.testing.assert_close(loaded(images), expected)
    # The trained module itself exports: torch.export traces the eager network.
    exported = torch.export.export(model, (images,))
    torch.testing.assert_close(exported.module()(images), expected)


def test_a_compiler_that_fails_falls_back_to_eager_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, make_trainer: Callable[..., pl.Trainer], mnist_dm: MNISTDataModule
) -> None:
    attempts = []

    def broken_compile(function: Callable, **kwargs: Any) -> Callable:
        def run(*args: Any) -> Any:
            attempts.append(1)
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    pl.seed_everything(0)
    model = ImageClassifier(width=4, compile=True)
    trainer = make_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    with pytest.warns(UserWarning, match=r"model\.init_args\.compile=true: torch\.compile failed") as warned:
        trainer.fit(model, datamodule=mnist_dm)
    assert len([w for w in warned if "torch.compile failed" in str(w.message)]) == 1
    assert "No working C++ compiler" in str(next(w for w in warned if "compile" in str(w.message)).message)
    assert attempts == [1]  # tried once; every later batch ran eager
    assert trainer.global_step == 3


def test_a_mistake_of_the_data_still_raises_its_own_error(
    compile_calls: list[int], make_trainer: Callable[..., pl.Trainer], mnist_dm: MNISTDataModule
) -> None:
    model = ImageClassifier(width=4, in_channels=3, compile=True)
    model.configure_model()
    with pytest.raises(RuntimeError, match=r"expected input.* to have 3 channels"):
        model(torch.zeros(2, 1, 28, 28))


@pytest.mark.slow
def test_inductor_compiles_the_network_to_the_same_logits() -> None:
    torch.manual_seed(0)
    model = ImageClassifier(width=8, compile=True).eval()
    images = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        eager = model(images)
        model.configure_model()
        compiled = model(images)
    assert model._compiled is not None  # it did compile, and did not fall back
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_compile_is_off_by_default_and_kept_in_the_hyperparameters() -> None:
    assert ImageClassifier().hparams["compile"] is False
    assert ImageClassifier(compile=True).hparams["compile"] is True
