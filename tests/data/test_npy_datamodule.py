"""NpyDataModule: memory-mapped arrays, a fixed split, ids in every batch, separate test/predict files, bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from plkit.data import DatasetFormatError, DatasetNotFoundError, NpyDataModule, NpySplit

from fakedata import make_npy


def all_batches(loader: torch.utils.data.DataLoader) -> list[dict]:
    return list(loader)


def test_fit_split_is_fixed_and_batches_carry_ids(tmp_path: Path) -> None:
    files = make_npy(tmp_path, n=60)
    dm = NpyDataModule(files["features"], files["targets"], files["ids"], val_fraction=0.25, batch_size=16)
    dm.setup("fit")
    train, val = dm.dataset("train"), dm.dataset("val")
    assert (len(train), len(val)) == (45, 15)
    again = NpyDataModule(files["features"], files["targets"], files["ids"], val_fraction=0.25)
    again.setup("fit")
    assert np.array_equal(again.dataset("val").rows, val.rows)
    assert not set(train.rows) & set(val.rows)

    features, targets = np.load(files["features"]), np.load(files["targets"])
    batch = next(iter(dm.val_dataloader()))
    assert batch["input"].dtype == torch.float32
    assert batch["target"].dtype == torch.int64
    rows = batch["id"].numpy() - 1000  # ids are 1000 + row
    assert np.array_equal(rows, val.rows[:15])
    np.testing.assert_allclose(batch["input"].numpy(), features[rows].astype(np.float32))
    assert np.array_equal(batch["target"].numpy(), targets[rows])


def test_shuffled_training_batches_keep_rows_ids_and_targets_together(tmp_path: Path) -> None:
    files = make_npy(tmp_path, n=50)
    dm = NpyDataModule(files["features"], files["targets"], files["ids"], val_fraction=0.0, batch_size=7)
    dm.setup("fit")
    assert dm.val_dataloader() == []
    features, targets = np.load(files["features"]), np.load(files["targets"])
    torch.manual_seed(0)
    seen = []
    for batch in dm.train_dataloader():
        rows = batch["id"].numpy() - 1000
        np.testing.assert_allclose(batch["input"].numpy(), features[rows].astype(np.float32))
        assert np.array_equal(batch["target"].numpy(), targets[rows])
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(50))
    assert seen != list(range(50))


def test_files_are_memory_mapped_and_workers_get_no_copy(tmp_path: Path) -> None:
    files = make_npy(tmp_path, n=2000, dim=64)
    dm = NpyDataModule(files["features"], files["targets"], files["ids"], val_fraction=0.1)
    dm.setup("fit")
    dataset = dm.dataset("train")
    assert isinstance(dataset._arrays["input"], np.memmap)
    # Pickled for a worker process, the dataset carries paths, not the 1 MB of features.
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < 50_000
    assert torch.equal(clone.__getitems__([3, 1])["input"], dataset.__getitems__([3, 1])["input"])


def test_predict_defaults_to_every_row_in_order_with_string_ids(tmp_path: Path) -> None:
    files = make_npy(tmp_path, n=10, string_ids=True)
    dm = NpyDataModule(files["features"], ids=files["ids"], batch_size=4)
    dm.setup("predict")
    ids = [i for batch in dm.predict_dataloader() for i in batch["id"]]
    assert ids == [f"s{i:04d}" for i in range(10)]
    assert "target" not in next(iter(dm.predict_dataloader()))


def test_rows_are_the_ids_when_there_are_none(tmp_path: Path) -> None:
    files = make_npy(tmp_path, n=10)
    dm = NpyDataModule(files["features"], batch_size=4)
    dm.setup("predict")
    assert [i for batch in dm.predict_dataloader() for i in batch["id"].tolist()] == list(range(10))


def test_separate_test_and_predict_files(tmp_path: Path) -> None:
    train = make_npy(tmp_path / "train", n=30)
    test = make_npy(tmp_path / "test", n=12, seed=1)
    other = make_npy(tmp_path / "other", n=5, string_ids=True)
    dm = NpyDataModule(
        train["features"],
        train["targets"],
        test=NpySplit(str(test["features"]), str(test["targets"]), str(test["ids"])),
        predict=NpySplit(str(other["features"]), ids=str(other["ids"])),
        batch_size=64,
    )
    dm.setup("test")
    dm.setup("predict")
    test_batch = next(iter(dm.test_dataloader()))
    np.testing.assert_allclose(test_batch["input"].numpy(), np.load(test["features"]).astype(np.float32))
    assert next(iter(dm.predict_dataloader()))["id"] == [f"s{i:04d}" for i in range(5)]


def test_dtype_none_keeps_integer_features(tmp_path: Path) -> None:
    np.save(tmp_path / "tokens.npy", np.arange(12, dtype=np.int32).reshape(6, 2))
    dm = NpyDataModule(tmp_path / "tokens.npy", dtype=None, val_fraction=0)
    dm.setup("predict")
    assert next(iter(dm.predict_dataloader()))["input"].dtype == torch.int32


def test_no_test_split_is_a_clear_error(tmp_path: Path) -> None:
    files = make_npy(tmp_path)
    with pytest.raises(ValueError, match=r"no test split: pass test=.*--data\.test\.features"):
        NpyDataModule(files["features"], files["targets"]).setup("test")


def test_missing_file(tmp_path: Path) -> None:
    files = make_npy(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"the targets file .*nope\.npy does not exist"):
        NpyDataModule(files["features"], tmp_path / "nope.npy").setup("fit")


def test_mismatched_row_counts(tmp_path: Path) -> None:
    files = make_npy(tmp_path, n=20)
    np.save(tmp_path / "short.npy", np.arange(19))
    with pytest.raises(DatasetFormatError, match=r"short\.npy has 19 rows but the features .* have 20") as info:
        NpyDataModule(files["features"], ids=tmp_path / "short.npy").setup("predict")
    assert "same order" in str(info.value)


def test_unmappable_and_malformed_files(tmp_path: Path) -> None:
    files = make_npy(tmp_path, n=4)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 4, dtype=object))
    with pytest.raises(DatasetFormatError, match=r"cannot be memory-mapped .* object arrays are not supported"):
        NpyDataModule(files["features"], ids=tmp_path / "objects.npy").setup("predict")
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(DatasetFormatError, match=r"text\.npy \(features\) is not a \.npy file"):
        NpyDataModule(tmp_path / "text.npy").setup("predict")
    np.save(tmp_path / "ids2d.npy", np.zeros((4, 2), np.int64))
    with pytest.raises(DatasetFormatError, match="ids must be 1-d integers or strings"):
        NpyDataModule(files["features"], ids=tmp_path / "ids2d.npy").setup("predict")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 1.0}, r"val_fraction=1\.0"),
        ({"val_fraction": -0.1}, r"val_fraction=-0\.1"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"dtype": "int8"}, "dtype='int8': choose one of"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NpyDataModule("x.npy", **kwargs)


@pytest.mark.parametrize("role", ["features", "targets"])
def test_string_features_or_targets_are_refused_in_one_line(tmp_path: Path, role: str) -> None:
    files = make_npy(tmp_path, n=6)
    np.save(tmp_path / "words.npy", np.array(["cat", "dog", "cat", "eel", "dog", "cat"]))
    files[role] = tmp_path / "words.npy"
    dm = NpyDataModule(files["features"], files["targets"], val_fraction=0.0)
    with pytest.raises(DatasetFormatError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'words.npy'} ({role}) holds <U3 values, not numbers")
    assert "\n" not in message


def test_one_dimensional_features_are_one_number_per_sample(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.arange(10, dtype=np.float64))
    dm = NpyDataModule(tmp_path / "x.npy", val_fraction=0.0, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input"].shape == (4,)
    assert batch["input"].dtype == torch.float32
