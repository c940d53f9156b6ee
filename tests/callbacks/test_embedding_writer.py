"""EmbeddingWriter: output equals the model's rows, in dataset order, in every format; errors leave no result."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, IterableDataset, Sampler

from plkit.callbacks import EmbeddingWriter
from plkit.callbacks._embedding_store import ShardReader, ShardWriter, tsv, write_result

from callback_helpers import PointDataset, TinyModel, quiet

N = 45


def expected(n: int = N) -> np.ndarray:
    data = PointDataset(n, seed=3)
    with torch.no_grad():
        return TinyModel()(data.x).numpy()


def predict(tmp_path: Path, writer: EmbeddingWriter, loader: DataLoader | None = None, **trainer: Any) -> None:
    model = TinyModel(n=N, batch_size=8)
    pl.Trainer(callbacks=[writer], **quiet(tmp_path, **trainer)).predict(model, loader, return_predictions=False)


def read_tsv(path: Path) -> tuple[list[str], np.ndarray]:
    lines = path.read_text().splitlines()
    cells = [line.split("\t") for line in lines]
    return [c[0] for c in cells], np.array([[float(v) for v in c[1:]] for c in cells], dtype=np.float64)


@pytest.mark.parametrize("fmt", ["npy", "tsv"])
@pytest.mark.parametrize("id_key", [None, "sku", "name"])
def test_output_equals_model_rows(tmp_path: Path, fmt: str, id_key: str | None) -> None:
    out = tmp_path / "emb"
    predict(tmp_path, EmbeddingWriter(out, id_key=id_key, format=fmt))
    want_ids = {None: [str(i) for i in range(N)], "sku": [str(1000 + 7 * i) for i in range(N)]}.get(
        id_key, [f"item-{i}" for i in range(N)]
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == N
    assert manifest["dim"] == 3
    assert manifest["format"] == fmt
    assert manifest["id_source"] == ("dataset_index" if id_key is None else f"batch[{id_key!r}]")
    assert manifest["versions"]["lightning"] == pl.__version__
    if fmt == "npy":
        assert sorted(os.listdir(out)) == sorted(["embeddings.npy", "manifest.json", manifest["files"]["ids"]])
        np.testing.assert_array_equal(np.load(out / "embeddings.npy"), expected())
        if id_key == "name":
            assert (out / "ids.txt").read_text().splitlines() == want_ids
        else:
            np.testing.assert_array_equal(np.load(out / "ids.npy"), np.array(want_ids, dtype=np.int64))
    else:
        assert sorted(os.listdir(out)) == ["embeddings.tsv", "manifest.json"]
        ids, values = read_tsv(out / "embeddings.tsv")
        assert ids == want_ids
        np.testing.assert_array_equal(values.astype(np.float32), expected())
        if id_key != "name":  # numeric ids: the whole file is one numeric table
            table = np.loadtxt(out / "embeddings.tsv")
            np.testing.assert_array_equal(table[:, 1:].astype(np.float32), expected())


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_dtype(tmp_path: Path, dtype: str) -> None:
    predict(tmp_path, EmbeddingWriter(tmp_path / "npy", dtype=dtype))
    predict(tmp_path, EmbeddingWriter(tmp_path / "tsv", dtype=dtype, format="tsv"))
    rows = np.load(tmp_path / "npy" / "embeddings.npy")
    assert rows.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(rows, expected().astype(dtype))
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "tsv" / "embeddings.tsv")[:, 1:].astype(dtype), rows)


@pytest.mark.filterwarnings("ignore:Your `predict_dataloader`'s sampler has shuffling enabled")
def test_shuffled_loader_rows_in_dataset_order(tmp_path: Path) -> None:
    torch.manual_seed(0)
    loader = DataLoader(PointDataset(N, seed=3), batch_size=8, shuffle=True)
    predict(tmp_path, EmbeddingWriter(tmp_path / "out", id_key="sku"), loader)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "embeddings.npy"), expected())
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "ids.npy"), 1000 + 7 * np.arange(N))


class PaddingSampler(Sampler[int]):
    """Yields every index, then repeats the first few, like ``DistributedSampler`` padding an uneven split."""

    def __init__(self, n: int, repeats: int) -> None:
        self.order = list(range(n)) + list(range(repeats))

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


@pytest.mark.parametrize("fmt", ["npy", "tsv"])
def test_repeated_samples_written_once(tmp_path: Path, fmt: str) -> None:
    loader = DataLoader(PointDataset(N, seed=3), batch_size=8, sampler=PaddingSampler(N, repeats=5))
    predict(tmp_path, EmbeddingWriter(tmp_path / "out", id_key="name", format=fmt), loader)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["rows"], manifest["duplicates_dropped"]) == (N, 5)
    if fmt == "npy":
        np.testing.assert_array_equal(np.load(tmp_path / "out" / "embeddings.npy"), expected())
        assert (tmp_path / "out" / "ids.txt").read_text().splitlines() == [f"item-{i}" for i in range(N)]
    else:
        ids, values = read_tsv(tmp_path / "out" / "embeddings.tsv")
        assert ids == [f"item-{i}" for i in range(N)]
        np.testing.assert_array_equal(values.astype(np.float32), expected())


def shard(folder: Path, keys: list[int], kind: str | None) -> None:
    """Write one rank's shard by hand: row k holds the value k in every column; ids are 10k or 'k<k>'."""
    folder.mkdir(parents=True)
    arr = np.asarray(keys, dtype=np.int64)
    columns = {} if kind is None else {"ids": arr * 10 if kind == "int" else [f"k{k}" for k in keys]}
    writer = ShardWriter(folder, np.float32, 2, {} if kind is None else {"ids": kind})
    writer.append(np.repeat(arr[:, None], 2, axis=1).astype(np.float32), arr, columns)
    writer.close({})


@pytest.mark.parametrize("kind", [None, "int", "str"])
@pytest.mark.parametrize("fmt", ["npy", "tsv"])
def test_merge_interleaved_ranks_with_padding(tmp_path: Path, kind: str | None, fmt: str) -> None:
    # Two ranks of a padded DistributedSampler over 7 samples: rank 1 repeats sample 0 at its end.
    shard(tmp_path / "rank0", [0, 2, 4, 6], kind)
    shard(tmp_path / "rank1", [1, 3, 5, 0], kind)
    readers = [ShardReader(tmp_path / f"rank{r}") for r in range(2)]
    files = {"values": f"embeddings.{fmt}"}
    if fmt == "npy":
        files["ids"] = "ids.txt" if kind == "str" else "ids.npy"
    assert write_result(tmp_path, readers, files, indexed=True) == 7  # of 8 rows: the repeat is dropped
    want_ids = {None: [str(k) for k in range(7)], "int": [str(10 * k) for k in range(7)]}.get(
        kind, [f"k{k}" for k in range(7)]
    )
    if fmt == "npy":
        np.testing.assert_array_equal(np.load(tmp_path / "embeddings.npy")[:, 0], np.arange(7))
        got = (
            (tmp_path / "ids.txt").read_text().splitlines()
            if kind == "str"
            else [str(v) for v in np.load(tmp_path / "ids.npy")]
        )
    else:
        got, values = read_tsv(tmp_path / "embeddings.tsv")
        np.testing.assert_array_equal(values, np.repeat(np.arange(7)[:, None], 2, axis=1))
    assert got == want_ids
    assert not list(tmp_path.glob(".*.partial"))


def test_tsv_values_read_back_exactly() -> None:
    special = [0.0, -0.0, 1e-45, 1.17549435e-38, 3.4028235e38, -1.0, 0.1, 123456.79, 9.9999999e-5]
    rng = np.random.default_rng(0)
    rows = np.concatenate([np.array([special], np.float32), rng.standard_normal((50, 9)).astype(np.float32) * 1e3])
    rows[5, 2], rows[7, 0], rows[9, 8] = np.nan, np.inf, -np.inf
    text = b"".join(tsv(rows, [b"%d" % i for i in range(len(rows))])).decode()
    assert "[" not in text
    assert text.splitlines()[0].split("\t")[:3] == ["0", "+0.00000000e+00", "-0.00000000e+00"]
    back = np.loadtxt(text.splitlines(), dtype=np.float64)
    np.testing.assert_array_equal(back[:, 0], np.arange(len(rows)))
    np.testing.assert_array_equal(back[:, 1:].astype(np.float32), rows)  # nan == nan for assert_array_equal


@pytest.mark.filterwarnings("ignore:Couldn't infer the batch indices")
def test_iterable_dataset_keeps_arrival_order(tmp_path: Path) -> None:
    class Stream(IterableDataset):
        def __iter__(self):
            data = PointDataset(N, seed=3)
            return (data[i] for i in range(N))

    predict(tmp_path, EmbeddingWriter(tmp_path / "out", id_key="sku"), DataLoader(Stream(), batch_size=8))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["order"].startswith("arrival")
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "embeddings.npy"), expected())
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "ids.npy"), 1000 + 7 * np.arange(N))


def test_default_output_dir_is_under_log_dir(tmp_path: Path) -> None:
    writer = EmbeddingWriter()
    predict(tmp_path, writer)
    assert writer.resolved_dir == tmp_path / "predictions"
    assert np.load(tmp_path / "predictions" / "embeddings.npy").shape == (N, 3)


def test_second_predict_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    writer = EmbeddingWriter(out)
    predict(tmp_path, writer)
    with pytest.raises(ValueError, match=r"not empty.*overwrite=True"):
        predict(tmp_path, writer)
    assert (out / "manifest.json").is_file()  # the first result is untouched
    (out / "notes.md").write_text("mine")
    predict(tmp_path, EmbeddingWriter(out, overwrite=True, format="tsv"))
    assert sorted(os.listdir(out)) == ["embeddings.tsv", "manifest.json", "notes.md"]


class Counting(TinyModel):
    """Counts ``predict_step`` calls; can fail at a batch, or return ``output(batch)`` instead of the rows."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__(n=N)
        self.fail_at, self.calls = fail_at, 0
        self.output: Any = None

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
        self.calls += 1
        if batch_idx == self.fail_at:
            raise RuntimeError("boom")
        return self.output(batch) if self.output else super().predict_step(batch, batch_idx)


def assert_no_result(out: Path) -> None:
    assert not (out / "manifest.json").exists()
    assert not (out / "embeddings.npy").exists()
    assert not (out / ".shards").exists()
    assert not list(out.glob(".*.partial"))


@pytest.mark.parametrize(
    ("output", "error", "match"),
    [
        (lambda b: [b["x"]], TypeError, "real tensor.*got list"),
        (lambda b: b["x"][:, None, :], ValueError, r"2-D prediction.*\(8, 1, 4\)"),
        (lambda b: {"emb": b["x"]}, ValueError, "without the key 'embeddings'.*prediction_key"),
        (lambda b: {"embeddings": b["x"][:-1]}, ValueError, "7 rows for a batch of 8"),
    ],
)
def test_bad_predictions_fail_at_first_batch(tmp_path: Path, output: Any, error: type, match: str) -> None:
    model = Counting()
    model.output = output
    with pytest.raises(error, match=match):
        pl.Trainer(callbacks=[EmbeddingWriter(tmp_path / "out")], **quiet(tmp_path)).predict(
            model, return_predictions=False
        )
    assert model.calls == 1
    assert_no_result(tmp_path / "out")


@pytest.mark.parametrize(
    ("id_key", "batch_change", "error", "match"),
    [
        ("missing", None, ValueError, r"id_key='missing'\): neither the prediction nor the batch has this key"),
        ("sku", lambda b: {**b, "sku": b["sku"][:-1]}, ValueError, r"batch\['sku'\] holds 7 values for 8 prediction"),
        ("sku", lambda b: {**b, "sku": b["sku"].float()}, TypeError, "must hold integers or strings"),
        ("name", lambda b: {**b, "name": ["a\nb"] * len(b["name"])}, ValueError, "line break"),
    ],
)
def test_bad_ids_fail_at_first_batch(tmp_path: Path, id_key: str, batch_change: Any, error: type, match: str) -> None:
    class Changed(Counting):
        def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            return batch_change(batch) if batch_change else batch

    model = Changed()
    with pytest.raises(error, match=match):
        pl.Trainer(callbacks=[EmbeddingWriter(tmp_path / "out", id_key=id_key)], **quiet(tmp_path)).predict(
            model, return_predictions=False
        )
    assert model.calls == 1
    assert_no_result(tmp_path / "out")


def test_failure_mid_predict_leaves_no_result(tmp_path: Path) -> None:
    model = Counting(fail_at=3)
    with pytest.raises(RuntimeError, match="boom"):
        pl.Trainer(callbacks=[EmbeddingWriter(tmp_path / "out")], **quiet(tmp_path)).predict(
            model, return_predictions=False
        )
    assert model.calls == 4
    assert_no_result(tmp_path / "out")


def test_non_empty_folder_fails_before_first_batch(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.npy").write_bytes(b"x")
    model = Counting()
    with pytest.raises(ValueError, match=r"output_dir='.*out' is not empty.*overwrite=True"):
        pl.Trainer(callbacks=[EmbeddingWriter(tmp_path / "out")], **quiet(tmp_path)).predict(
            model, return_predictions=False
        )
    assert model.calls == 0
    assert os.listdir(tmp_path / "out") == ["old.npy"]


def test_unwritable_folder_fails_before_first_batch(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    model = Counting()
    with pytest.raises(PermissionError, match=r"cannot write to output_dir='.*a_file/out'.*writable"):
        pl.Trainer(callbacks=[EmbeddingWriter(tmp_path / "a_file" / "out")], **quiet(tmp_path)).predict(
            model, return_predictions=False
        )
    assert model.calls == 0


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_folder_fails_before_first_batch(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(PermissionError, match="cannot write"):
        predict(tmp_path, EmbeddingWriter(tmp_path / "ro"))


def test_several_dataloaders_rejected(tmp_path: Path) -> None:
    class TwoLoaders(Counting):
        def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
            return super().predict_step(batch, batch_idx)

    model = TwoLoaders()
    loaders = [DataLoader(PointDataset(8), batch_size=4), DataLoader(PointDataset(8), batch_size=4)]
    with pytest.raises(ValueError, match=r"2 predict dataloaders.*once per dataloader"):
        pl.Trainer(callbacks=[EmbeddingWriter(tmp_path / "out")], **quiet(tmp_path)).predict(model, loaders)
    assert model.calls == 0
    assert_no_result(tmp_path / "out")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"write_interval": "epoch"}, "write_interval='epoch'.*use 'batch'"),
        ({"format": "csv"}, r"format='csv'.*\['npy', 'tsv'\]"),
        ({"dtype": "int8"}, r"dtype='int8'.*\['float32', 'float16', 'float64'\]"),
        ({"prediction_key": "ids"}, r"prediction_key='ids'\) also names the result file"),
        ({"prediction_key": "../up"}, r"prediction_key='../up'\) also names the result file"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EmbeddingWriter("out", **kwargs)


def test_warns_when_predictions_are_also_kept(tmp_path: Path) -> None:
    trainer = pl.Trainer(callbacks=[EmbeddingWriter(tmp_path / "out")], **quiet(tmp_path))
    with pytest.warns(UserWarning, match=r"keeps them all in memory.*return_predictions=False"):
        predictions = trainer.predict(TinyModel(n=N))
    assert len(predictions) == 6
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "embeddings.npy"), expected())


def test_no_batches_leaves_no_shards(tmp_path: Path) -> None:
    writer = EmbeddingWriter(tmp_path / "out")
    pl.Trainer(callbacks=[writer], **quiet(tmp_path, limit_predict_batches=0)).predict(TinyModel(n=N))
    assert os.listdir(tmp_path / "out") == []


class Labelled(TinyModel):
    """``predict_step`` also returns a class per row and its own ids, which take precedence over the batch's."""

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        rows = self(batch["x"])
        return {"probabilities": rows, "class": (rows[:, 0] > 0).long(), "sku": batch["sku"] + 1}


@pytest.mark.parametrize("fmt", ["npy", "tsv"])
def test_labels_and_ids_from_the_prediction_or_the_batch(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out"
    writer = EmbeddingWriter(out, id_key="sku", prediction_key="probabilities", label_key="class", format=fmt)
    pl.Trainer(callbacks=[writer], **quiet(tmp_path)).predict(Labelled(n=N), return_predictions=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["id_source"], manifest["label_source"]) == ("prediction['sku']", "prediction['class']")
    assert (manifest["label_type"], manifest["files"]["labels"]) == ("int", "labels.npy")
    np.testing.assert_array_equal(np.load(out / "labels.npy"), (expected()[:, 0] > 0).astype(np.int64))
    want_ids = 1001 + 7 * np.arange(N)  # the prediction's ids, not the batch's
    if fmt == "npy":
        assert sorted(os.listdir(out)) == ["ids.npy", "labels.npy", "manifest.json", "probabilities.npy"]
        np.testing.assert_array_equal(np.load(out / "probabilities.npy"), expected())
        np.testing.assert_array_equal(np.load(out / "ids.npy"), want_ids)
    else:
        assert sorted(os.listdir(out)) == ["labels.npy", "manifest.json", "probabilities.tsv"]
        ids, values = read_tsv(out / "probabilities.tsv")
        assert ids == [str(i) for i in want_ids]
        np.testing.assert_array_equal(values.astype(np.float32), expected())


@pytest.mark.filterwarnings("ignore:Your `predict_dataloader`'s sampler has shuffling enabled")
def test_string_labels_from_the_batch_in_dataset_order(tmp_path: Path) -> None:
    torch.manual_seed(0)
    loader = DataLoader(PointDataset(N, seed=3), batch_size=8, shuffle=True)
    predict(tmp_path, EmbeddingWriter(tmp_path / "out", label_key="name"), loader)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["label_source"], manifest["label_type"]) == ("batch['name']", "str")
    assert (tmp_path / "out" / "labels.txt").read_text().splitlines() == [f"item-{i}" for i in range(N)]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "ids.npy"), np.arange(N))


def test_missing_label_fails_at_first_batch(tmp_path: Path) -> None:
    model = Counting()
    with pytest.raises(ValueError, match=r"label_key='class'\): neither the prediction nor the batch has this key"):
        pl.Trainer(callbacks=[EmbeddingWriter(tmp_path / "out", label_key="class")], **quiet(tmp_path)).predict(
            model, return_predictions=False
        )
    assert model.calls == 1
    assert_no_result(tmp_path / "out")


def test_projector_files_in_the_log_dir(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path / "runs", name="demo")
    writer = EmbeddingWriter(tmp_path / "out", "batch", "name", "probabilities", "class", projector=True)
    trainer = pl.Trainer(callbacks=[writer], **quiet(tmp_path, logger=logger))
    trainer.predict(Labelled(n=N), return_predictions=False)
    log_dir = Path(trainer.log_dir)
    assert log_dir == tmp_path / "runs" / "demo" / "version_0"
    assert list(log_dir.glob("events.out.tfevents.*")), "TensorBoard lists the log folder as a run"
    folder = log_dir / "projector" / "probabilities"
    assert sorted(os.listdir(folder)) == ["embedding.pbtxt", "metadata.tsv", "tensor.tsv"]
    np.testing.assert_array_equal(np.loadtxt(folder / "tensor.tsv", dtype=np.float32), expected())
    metadata = [line.split("\t") for line in (folder / "metadata.tsv").read_text().splitlines()]
    labels = (expected()[:, 0] > 0).astype(int)
    assert metadata == [["name", "class"]] + [[f"item-{i}", str(labels[i])] for i in range(N)]
    config = (log_dir / "projector_config.pbtxt").read_text()
    assert 'tensor_path: "projector/probabilities/tensor.tsv"' in config
    assert "tensor_shape: 45\n  tensor_shape: 3\n" in config
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["projector"] == {
        "config": str(log_dir / "projector_config.pbtxt"),
        "tensor": str(folder / "tensor.tsv"),
    }


def test_projector_lists_every_embedding_and_refuses_a_foreign_config(tmp_path: Path) -> None:
    for key in ("embeddings", "probabilities"):
        writer = EmbeddingWriter(tmp_path / key, prediction_key=key, projector=True)
        pl.Trainer(callbacks=[writer], **quiet(tmp_path)).predict(Both(n=N), return_predictions=False)
    config = (tmp_path / "projector_config.pbtxt").read_text()  # logger=False: the log folder is the root dir
    assert [line for line in config.splitlines() if "tensor_name" in line] == [
        '  tensor_name: "embeddings"',
        '  tensor_name: "probabilities"',
    ]
    metadata = (tmp_path / "projector" / "embeddings" / "metadata.tsv").read_text().splitlines()
    assert metadata == [str(i) for i in range(N)]  # one column, the dataset index: no header line
    with pytest.raises(ValueError, match=r"projector/embeddings' holds a previous projector result.*overwrite=True"):
        predict(tmp_path, EmbeddingWriter(tmp_path / "again", projector=True))
    (tmp_path / "projector_config.pbtxt").write_text("embeddings {}\n")
    with pytest.raises(ValueError, match=r"projector_config.pbtxt' was not written by EmbeddingWriter"):
        predict(tmp_path, EmbeddingWriter(tmp_path / "third", projector=True, overwrite=True))
    assert not (tmp_path / "third").exists()


class Both(TinyModel):
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        rows = self(batch["x"])
        return {"embeddings": rows, "probabilities": rows.softmax(dim=1)}


def test_failure_while_writing_leaves_no_result_and_no_projector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("plkit.callbacks._embedding_store.write_result", disk_full)
    with pytest.raises(OSError, match="disk full"):
        predict(tmp_path, EmbeddingWriter(tmp_path / "out", label_key="name", projector=True))
    assert_no_result(tmp_path / "out")
    assert not (tmp_path / "projector_config.pbtxt").exists()
    assert list((tmp_path / "projector").rglob("*")) == [tmp_path / "projector" / "embeddings"]  # empty
