"""MNIST-family and CIFAR-10 data modules: staged files, the fixed split, batches, augmentation, bad input."""

from __future__ import annotations

import pickle
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from plkit.data import (
    CIFAR10DataModule,
    DatasetFormatError,
    DatasetNotFoundError,
    FashionMNISTDataModule,
    KMNISTDataModule,
    MNISTDataModule,
    default_data_dir,
)
from plkit.data.mnist import read_idx

from fakedata import MNIST_FILES, make_cifar10, make_mnist, write_cifar_batch, write_idx


@pytest.fixture(scope="module")
def mnist_plain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four tiny MNIST IDX files, not compressed (320 train, 64 test images)."""
    return make_mnist(tmp_path_factory.mktemp("mnist_plain"), gz=False)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny CIFAR-10 python batches (100 train, 40 test images)."""
    return make_cifar10(tmp_path_factory.mktemp("cifar"))


def raw_images(folder: Path, train: bool) -> torch.Tensor:
    name = MNIST_FILES["train_images" if train else "test_images"]
    path = next(p for p in (folder / name, folder / f"{name}.gz") if p.exists())
    return read_idx(path, ndim=3).unsqueeze(1)


@pytest.mark.parametrize("layout", ["gz", "plain"])
def test_staged_files_load_with_shapes_dtypes_and_normalisation(
    mnist_dir: Path, mnist_plain_dir: Path, layout: str
) -> None:
    folder = mnist_dir if layout == "gz" else mnist_plain_dir
    dm = MNISTDataModule(data_dir=folder, batch_size=32, val_size=64, download=False)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.dataset("train")), len(dm.dataset("val")), len(dm.dataset("test"))) == (256, 64, 64)
    batch = next(iter(dm.val_dataloader()))
    assert batch["input"].shape == (32, 1, 28, 28)
    assert batch["input"].dtype == torch.float32
    assert batch["target"].dtype == torch.int64
    assert batch["id"].dtype == torch.int64
    # Without augmentation an image is exactly its file's pixels, normalised with MNIST's constants.
    expected = (raw_images(folder, train=True)[batch["id"]].float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(batch["input"], expected)
    test_batch = next(iter(dm.test_dataloader()))
    assert test_batch["id"].tolist() == list(range(32))


def test_gz_and_plain_files_decode_to_the_same_tensors(mnist_dir: Path, mnist_plain_dir: Path) -> None:
    loaded = []
    for folder in (mnist_dir, mnist_plain_dir):
        dm = MNISTDataModule(data_dir=folder, val_size=0, download=False)
        dm.setup("test")
        loaded.append(dm.dataset("test"))
    assert torch.equal(loaded[0].images, loaded[1].images)
    assert torch.equal(loaded[0].targets, loaded[1].targets)


@pytest.mark.parametrize(
    ("module", "folder"),
    [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST"), (KMNISTDataModule, "KMNIST")],
)
def test_torchvision_layout_is_found(tmp_path: Path, mnist_dir: Path, module: type, folder: str) -> None:
    raw = tmp_path / folder / "raw"
    shutil.copytree(mnist_dir, raw)
    dm = module(data_dir=tmp_path, val_size=10, download=False)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.dataset("train")) == 310
    assert dm.dataset("train").transform.scale.flatten().tolist() == pytest.approx([1 / (255 * module.std[0])])


def test_default_data_dir_is_a_per_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PLKIT_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "plkit" / "datasets"
    assert MNISTDataModule().data_dir == tmp_path / "xdg" / "plkit" / "datasets"
    monkeypatch.setenv("PLKIT_DATA_DIR", str(tmp_path / "mine"))
    assert FashionMNISTDataModule(data_dir=None).data_dir == tmp_path / "mine"
    monkeypatch.delenv("PLKIT_DATA_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "plkit" / "datasets"


def split_ids(folder: Path, **kwargs: object) -> tuple[list[int], list[int]]:
    dm = MNISTDataModule(data_dir=folder, download=False, **kwargs)  # type: ignore[arg-type]
    dm.setup("fit")
    return dm.dataset("train").ids.tolist(), dm.dataset("val").ids.tolist()


def test_the_split_is_fixed_disjoint_and_ignores_the_global_seed(mnist_dir: Path) -> None:
    torch.manual_seed(1)
    train, val = split_ids(mnist_dir, val_size=64)
    torch.manual_seed(2)
    assert split_ids(mnist_dir, val_size=64) == (train, val)
    assert len(val) == 64
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(320))
    assert split_ids(mnist_dir, val_size=64, seed=1)[1] != val
    fraction_train, fraction_val = split_ids(mnist_dir, val_size=0.25)
    assert (len(fraction_train), len(fraction_val)) == (240, 80)


def test_val_size_zero_means_no_validation(mnist_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=mnist_dir, val_size=0, download=False)
    dm.setup("fit")
    assert len(dm.dataset("train")) == 320
    assert dm.val_dataloader() == []


def test_val_size_that_leaves_nothing_to_train_on(mnist_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=mnist_dir, val_size=320, download=False)
    with pytest.raises(ValueError, match=r"val_size=320 holds out 320 of the 320 training images .* leaving none"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_size": -1}, "val_size=-1"),
        ({"val_size": 1.5}, r"val_size=1.5: a fraction must be in \[0, 1\)"),
        ({"val_size": "big"}, "val_size='big'"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"num_workers": -2}, "num_workers=-2"),
        ({"predict_split": "all"}, "predict_split='all': choose one of 'train', 'val', 'test'"),
    ],
)
def test_bad_arguments_are_refused_at_once(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MNISTDataModule(**kwargs)


def is_shift_of(image: torch.Tensor, original: torch.Tensor, max_shift: int, transform: object = None) -> bool:
    """Whether ``image`` is ``original`` shifted by up to ``max_shift`` pixels (zeros shifted in), then transformed."""
    padded = torch.nn.functional.pad(original, (max_shift,) * 4)
    h, w = original.shape[-2:]
    for dy in range(2 * max_shift + 1):
        for dx in range(2 * max_shift + 1):
            crop = padded[..., dy : dy + h, dx : dx + w]
            if torch.equal(image, crop if transform is None else transform(crop[None])[0]):  # type: ignore[operator]
                return True
    return False


def test_augmentation_off_by_default_and_shifts_training_images_when_on(mnist_dir: Path) -> None:
    plain = MNISTDataModule(data_dir=mnist_dir, val_size=64, download=False)
    plain.setup("fit")
    augmented = MNISTDataModule(data_dir=mnist_dir, val_size=64, download=False, augment=True)
    augmented.setup("fit")
    rows = list(range(16))
    base = plain.dataset("train").__getitems__(rows)["input"]
    torch.manual_seed(0)
    assert torch.equal(plain.dataset("train").__getitems__(rows)["input"], base)
    shifted = augmented.dataset("train").__getitems__(rows)["input"]
    assert not torch.equal(shifted, base)
    raw, normalise = plain.dataset("train").images[rows], plain.dataset("train").transform
    assert all(is_shift_of(image, original, 2, normalise) for image, original in zip(shifted, raw, strict=True))
    assert sum(torch.equal(image, original) for image, original in zip(shifted, base, strict=True)) < 4
    # Validation and test batches are never augmented.
    assert torch.equal(
        augmented.dataset("val").__getitems__(rows)["input"], plain.dataset("val").__getitems__(rows)["input"]
    )


def test_cifar10_staged_batches_split_and_augmentation(cifar_dir: Path) -> None:
    dm = CIFAR10DataModule(data_dir=cifar_dir, batch_size=16, val_size=20, download=False, augment=True)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.dataset("train")), len(dm.dataset("val")), len(dm.dataset("test"))) == (80, 20, 40)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input"].shape == (16, 3, 32, 32)
    with (cifar_dir / "data_batch_1").open("rb") as file:
        first = pickle.load(file)
    raw = torch.from_numpy(first["data"]).reshape(-1, 3, 32, 32)
    assert torch.equal(dm.dataset("val").images[:1], raw[dm.dataset("val").ids[:1]])
    torch.manual_seed(3)
    train = dm.dataset("train")
    out = train.images[:32]
    from plkit.data.image import random_hflip, random_shift

    torch.manual_seed(3)
    augmented = random_hflip(random_shift(out, 4))
    flipped = [is_shift_of(a.flip(-1), o, 4) and not is_shift_of(a, o, 4) for a, o in zip(augmented, out, strict=True)]
    shifted_only = [is_shift_of(a, o, 4) for a, o in zip(augmented, out, strict=True)]
    assert all(f or s for f, s in zip(flipped, shifted_only, strict=True))
    assert 0 < sum(flipped) < 32


def test_cifar10_torchvision_layout(tmp_path: Path, cifar_dir: Path) -> None:
    shutil.copytree(cifar_dir, tmp_path / "cifar-10-batches-py")
    dm = CIFAR10DataModule(data_dir=tmp_path, val_size=0.1, download=False)
    dm.setup("fit")
    assert len(dm.dataset("val")) == 10


# Bad input: every message names the folder or file and says what to do.


def test_nothing_on_disk_with_download_false(tmp_path: Path) -> None:
    dm = FashionMNISTDataModule(data_dir=tmp_path, download=False)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(tmp_path) in message
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert "train-images-idx3-ubyte[.gz]" in message
    assert "--data.data_dir" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "download=False" in message
    with pytest.raises(DatasetNotFoundError):
        dm.setup("fit")


def test_one_missing_file_is_named(tmp_path: Path, mnist_dir: Path) -> None:
    shutil.copytree(mnist_dir, tmp_path, dirs_exist_ok=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    dm = MNISTDataModule(data_dir=tmp_path, val_size=10, download=False)
    dm.setup("fit")  # the training files are all there
    with pytest.raises(DatasetNotFoundError, match=r"no t10k-images-idx3-ubyte\[.gz\] and t10k-labels-idx1-ubyte"):
        dm.setup("test")


def test_cifar10_nothing_on_disk(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"extract cifar-10-python\.tar\.gz") as info:
        CIFAR10DataModule(data_dir=tmp_path, download=False).prepare_data()
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value)


def refuse_network(*args: object, **kwargs: object) -> None:
    raise urllib.error.URLError("no network in tests")


@pytest.mark.parametrize("module", [FashionMNISTDataModule, CIFAR10DataModule])
def test_download_without_network_says_how_to_stage_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: type
) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", refuse_network)
    dm = module(data_dir=tmp_path, download=True)
    with pytest.raises(DatasetNotFoundError, match="could not download") as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(tmp_path) in message
    assert "stage the files instead" in message
    assert "data_dir" in message
    assert "\n" not in message
    assert "http" not in message  # the library's mirror URLs mean nothing to the reader
    # The folders the failed download made are gone again.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("module", [FashionMNISTDataModule, CIFAR10DataModule])
def test_download_never_creates_a_data_dir_that_did_not_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: type
) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", refuse_network)
    mistyped = tmp_path / "nonexistent" / "datasets"
    with pytest.raises(DatasetNotFoundError) as info:
        module(data_dir=mistyped, download=True).prepare_data()
    assert str(info.value).startswith(f"{module.display_name}: data_dir {mistyped} does not exist")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_the_default_cache_may_be_created_by_a_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", refuse_network)
    monkeypatch.setenv("PLKIT_DATA_DIR", str(tmp_path / "cache"))
    # No "does not exist" refusal: the download is attempted (and fails here, without a network).
    with pytest.raises(DatasetNotFoundError, match="could not download MNIST into"):
        MNISTDataModule(download=True).prepare_data()


def test_staged_files_need_no_download(mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", refuse_network)
    MNISTDataModule(data_dir=mnist_dir, download=True).prepare_data()


def test_mismatched_image_and_label_counts(tmp_path: Path) -> None:
    make_mnist(tmp_path, n_train=30, n_test=10, gz=False)
    write_idx(tmp_path / MNIST_FILES["train_labels"], np.zeros(29, np.uint8), gz=False)
    dm = MNISTDataModule(data_dir=tmp_path, val_size=5, download=False)
    with pytest.raises(DatasetFormatError, match=r"holds 30 images but .* holds 29 labels") as info:
        dm.setup("fit")
    assert str(tmp_path / MNIST_FILES["train_labels"]) in str(info.value)


def test_wrong_image_size_and_wrong_magic_in_a_staged_folder(tmp_path: Path) -> None:
    make_mnist(tmp_path, n_train=30, n_test=10, gz=False)
    write_idx(tmp_path / MNIST_FILES["test_images"], np.zeros((10, 32, 32), np.uint8), gz=False)
    dm = MNISTDataModule(data_dir=tmp_path, val_size=5, download=False)
    with pytest.raises(DatasetFormatError, match=r"holds \(32, 32\) images, MNIST has \(28, 28\)"):
        dm.setup("test")
    write_idx(tmp_path / MNIST_FILES["train_labels"], np.zeros((30, 1, 1), np.uint8), gz=False)
    with pytest.raises(DatasetFormatError, match="magic number"):
        dm.setup("fit")


def test_truncated_gz_file_in_a_staged_folder(tmp_path: Path, mnist_dir: Path) -> None:
    shutil.copytree(mnist_dir, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetFormatError, match="not a complete gzip file"):
        MNISTDataModule(data_dir=tmp_path, download=False).setup("fit")


def test_damaged_cifar_batches(tmp_path: Path, cifar_dir: Path) -> None:
    shutil.copytree(cifar_dir, tmp_path, dirs_exist_ok=True)
    dm = CIFAR10DataModule(data_dir=tmp_path, val_size=5, download=False)
    batch = tmp_path / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DatasetFormatError, match="data_batch_3 is not a readable CIFAR-10 python batch"):
        dm.setup("fit")
    write_cifar_batch(batch, np.zeros((20, 3072), np.uint8), np.zeros(19, np.uint8))
    with pytest.raises(DatasetFormatError, match="holds 20 images but 19 labels"):
        dm.setup("fit")


def test_a_pickle_that_runs_code_is_refused(tmp_path: Path, cifar_dir: Path) -> None:
    shutil.copytree(cifar_dir, tmp_path, dirs_exist_ok=True)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": Exploit(), "labels": [0]}))
    with pytest.raises(DatasetFormatError, match=r"refusing to load pathlib.*Path\.touch|refusing to load"):
        CIFAR10DataModule(data_dir=tmp_path, download=False).setup("test")
    assert not marker.exists()


@pytest.mark.parametrize("augment", [False, True])
def test_channels_last_batches_hold_the_same_values_in_that_layout(cifar_dir: Path, augment: bool) -> None:
    batches = []
    for channels_last in (False, True):
        dm = CIFAR10DataModule(
            data_dir=cifar_dir, val_size=20, download=False, augment=augment, channels_last=channels_last
        )
        dm.setup("fit")
        torch.manual_seed(0)
        batches.append(dm.dataset("train").__getitems__(list(range(8)))["input"])
    plain, channels_last = batches
    assert plain.is_contiguous()
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    assert channels_last.stride()[1] == 1  # channels are the innermost dimension
    assert torch.equal(plain, channels_last)


def test_channels_last_marks_one_channel_batches_too(mnist_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=mnist_dir, val_size=64, download=False, channels_last=True)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))["input"]
    # With one channel the bytes are the same, but the strides say channels-last, which convolutions act on.
    assert batch.stride() == (28 * 28, 1, 28, 1)
