"""Tests of effdl_lightning.data: the offline datasets, real-format readers (files written here), configs."""

from __future__ import annotations

import gzip
import pickle
import random
import struct
import tarfile
from pathlib import Path
from typing import Any

import hydra.utils
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from effdl_lightning.data import (
    ArrayDataModule,
    CIFAR10DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    MNIST1DDataModule,
    MNISTIDXDataModule,
    MNISTSubsetDataModule,
    create_datamodule,
    list_datamodules,
    read_idx,
    stratified_split,
)
from effdl_lightning.data.download import md5_of
from effdl_lightning.data.mnist1d import generate_mnist1d
from effdl_lightning.data.transforms import RandomHorizontalFlip, RandomTranslate

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "data"


# -- offline datasets ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist1d_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mnist1d")


def _offline(name: str, data_dir: Path, **kwargs: Any) -> ArrayDataModule:
    if name == "mnist1d":
        kwargs = {"num_samples": 600, "data_dir": data_dir, **kwargs}
    return create_datamodule(name, **kwargs)


@pytest.fixture(scope="module", params=["mnist", "digits", "mnist1d"])
def offline_dm(request: pytest.FixtureRequest, mnist1d_dir: Path) -> ArrayDataModule:
    dm = _offline(request.param, mnist1d_dir)
    dm.setup("fit")
    return dm


# name -> (input_shape, train, val, test sizes)
OFFLINE_EXPECTED = {
    MNISTSubsetDataModule: ((1, 28, 28), 3500, 500, 1000),
    DigitsDataModule: ((1, 8, 8), 1258, 180, 359),  # 1797 = 1258 + round(179.7) + round(359.4)
    MNIST1DDataModule: ((1, 40), 432, 48, 120),  # generator split 480 / 120, val = 10% of 480
}


def test_offline_shapes_splits_and_stratification(offline_dm: ArrayDataModule) -> None:
    shape, n_train, n_val, n_test = OFFLINE_EXPECTED[type(offline_dm)]
    assert offline_dm.input_shape == shape and offline_dm.num_classes == 10
    counts = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        ds = getattr(offline_dm, f"{split}_dataset")
        x, y = ds.tensors
        assert x.shape == (n, *shape) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.isfinite(x).all()
        counts[split] = torch.bincount(y, minlength=10).float()
    if type(offline_dm) is not MNIST1DDataModule:  # the generator's own test split is not stratified
        total = counts["train"] + counts["val"] + counts["test"]
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            assert torch.all((counts[split] - total * n / total.sum()).abs() <= 1.0), split
    else:
        total = counts["train"] + counts["val"]
        assert torch.all((counts["val"] - total * n_val / total.sum()).abs() <= 1.0)
    x_train = offline_dm.train_dataset.tensors[0]  # type: ignore[union-attr]
    assert abs(x_train.mean().item()) < 0.1 and abs(x_train.std().item() - 1.0) < 0.1
    offline_dm.setup("test")  # idempotent: same objects
    assert offline_dm.train_dataset.tensors[0] is x_train  # type: ignore[union-attr]


def test_offline_loaders_give_batches(offline_dm: ArrayDataModule) -> None:
    offline_dm.batch_size = 32
    for loader in (
        offline_dm.train_dataloader(),
        offline_dm.val_dataloader(),
        offline_dm.test_dataloader(),
        offline_dm.predict_dataloader(),
    ):
        x, y = next(iter(loader))
        assert x.shape == (32, *offline_dm.input_shape) and y.shape == (32,)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
    first = [next(iter(offline_dm.train_dataloader()))[1] for _ in range(2)]
    assert torch.equal(first[0], first[1])  # seeded shuffle generator
    assert not torch.equal(first[0], offline_dm.train_dataset.tensors[1][:32])  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["mnist", "digits", "mnist1d"])
def test_split_is_deterministic_by_seed(name: str, mnist1d_dir: Path) -> None:
    a, b, c = (_offline(name, mnist1d_dir, seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    ya, yb, yc = (dm.train_dataset.tensors for dm in (a, b, c))  # type: ignore[union-attr]
    assert torch.equal(ya[0], yb[0]) and torch.equal(ya[1], yb[1])
    assert not torch.equal(ya[0], yc[0])


def test_mnist1d_cache_and_global_rng(mnist1d_dir: Path) -> None:
    dm = MNIST1DDataModule(data_dir=mnist1d_dir, num_samples=600, final_seq_length=40)
    assert dm.cache_path.is_file()  # written by the fixture's first setup
    random.seed(1)
    np.random.seed(1)
    before = (random.random(), np.random.rand())
    random.seed(1)
    np.random.seed(1)
    fresh = generate_mnist1d(600, 40, 42)  # reseeds globals internally, must restore them
    assert (random.random(), np.random.rand()) == before
    with np.load(dm.cache_path) as cached:
        assert np.array_equal(cached["x"], fresh["x"]) and np.array_equal(cached["y_test"], fresh["y_test"])
    short = MNIST1DDataModule(data_dir=mnist1d_dir, num_samples=100, final_seq_length=20, cache=False)
    short.setup()
    assert short.input_shape == (1, 20) and short.test_dataset.tensors[0].shape == (20, 1, 20)  # type: ignore[union-attr]
    assert not short.cache_path.exists()


def test_mnist_augmentation_changes_images_keeps_shape() -> None:
    plain = MNISTSubsetDataModule(batch_size=16)
    aug = MNISTSubsetDataModule(batch_size=16, augment=True)
    plain.setup()
    aug.setup()
    torch.manual_seed(0)
    xp, yp = next(iter(plain.train_dataloader()))
    xa, ya = next(iter(aug.train_dataloader()))
    assert torch.equal(yp, ya) and xa.shape == xp.shape
    assert not torch.equal(xa, xp)
    background = (0.0 - 0.1307) / 0.3081
    assert xa.min().item() == pytest.approx(background, abs=1e-5)  # padding is a black pixel


def test_random_translate_is_a_shift_with_fill() -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 2, 5, 6)
    out = RandomTranslate(2, fill=[-1.0, -2.0])(x)
    assert out.shape == x.shape
    padded = torch.cat([torch.full((8, 1, 9, 10), -1.0), torch.full((8, 1, 9, 10), -2.0)], dim=1)
    padded[:, :, 2:7, 2:8] = x
    for i in range(8):
        crops = [padded[i, :, dy : dy + 5, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) for c in crops)
    assert torch.equal(RandomTranslate(0, fill=[0.0])(x), x)
    flipped = RandomHorizontalFlip(1.0)(x)
    assert torch.equal(flipped, x.flip(-1)) and torch.equal(RandomHorizontalFlip(0.0)(x), x)
    with pytest.raises(ValueError, match="max_shift must be >= 0, got -1"):
        RandomTranslate(-1, fill=[0.0])
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        RandomHorizontalFlip(1.5)


def test_stratified_split_exact_sizes_and_partition() -> None:
    labels = np.array([0] * 7 + [1] * 13 + [2] * 30)
    test, val, train = stratified_split(labels, [0.2, 0.1], seed=3)
    assert (len(test), len(val), len(train)) == (10, 5, 35)
    assert np.array_equal(np.sort(np.concatenate([test, val, train])), np.arange(50))
    assert np.bincount(labels[test]).tolist() == [1, 3, 6]
    again = stratified_split(labels, [0.2, 0.1], seed=3)
    assert all(np.array_equal(p, q) for p, q in zip(again, (test, val, train), strict=True))


def test_fit_and_test_with_trainer() -> None:
    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val/loss", nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.log("test/loss", nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    kwargs: dict[str, Any] = {"fast_dev_run": 2, "logger": False, "enable_progress_bar": False}
    trainer = pl.Trainer(accelerator="cpu", enable_model_summary=False, **kwargs)
    dm = DigitsDataModule(batch_size=16, augment=True)
    trainer.fit(Tiny(), datamodule=dm)
    assert trainer.test(Tiny(), datamodule=dm, verbose=False)[0]["test/loss"] > 0


def test_loader_with_worker_is_persistent() -> None:
    dm = DigitsDataModule(batch_size=50, num_workers=1, augment=True)
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 1
    assert next(iter(loader))[0].shape == (50, 1, 8, 8)


# -- validation rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"num_workers": -1}, "num_workers must be >= 0, got -1"),
        ({"val_fraction": 0.0}, r"val_fraction must be in the open interval \(0, 1\), got 0.0"),
        ({"val_fraction": 1.5}, r"val_fraction must be in the open interval \(0, 1\), got 1.5"),
        ({"test_fraction": 1.0}, r"test_fraction must be in the open interval \(0, 1\), got 1.0"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, r"val_fraction \+ test_fraction must be < 1"),
        ({"input_shape": [1, 28, 28]}, r"input_shape \(1, 28, 28\) does not match .* \(1, 8, 8\)"),
        ({"num_classes": 3}, "configured num_classes 3 does not match the data's num_classes 10"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"augment": True}, r"augment=True is not supported .* \(allowed: False\)"),
        ({"num_samples": 10}, "num_samples must be >= 20, got 10"),
        ({"final_seq_length": 1}, "final_seq_length must be >= 2, got 1"),
        ({"input_shape": [1, 40]}, r"input_shape \(1, 40\) does not match the data's input_shape \(1, 30\)"),
    ],
)
def test_mnist1d_bad_arguments_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MNIST1DDataModule(**{"final_seq_length": 30, **kwargs})


def test_declared_shape_and_classes_accepted() -> None:
    dm = MNISTSubsetDataModule(input_shape=[1, 28, 28], num_classes=10)
    assert dm.input_shape == (1, 28, 28) and dm.train_dataset is None  # nothing loaded in __init__
    with pytest.raises(ValueError, match=r"input_shape \(3, 32, 32\) does not match .* \(1, 28, 28\)"):
        MNISTIDXDataModule(input_shape=(3, 32, 32))
    with pytest.raises(ValueError, match="configured num_classes 100 does not match"):
        CIFAR10DataModule(num_classes=100)


def test_registry() -> None:
    assert list_datamodules() == ["cifar10", "digits", "image_folder", "mnist", "mnist1d", "mnist_idx"]
    assert isinstance(create_datamodule("mnist", batch_size=8), MNISTSubsetDataModule)
    with pytest.raises(
        ValueError, match="unknown datamodule 'imagenet'; known: cifar10, digits, image_folder"
    ):
        create_datamodule("imagenet")


# -- MNIST IDX files -------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _unique_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """uint8 images whose first pixel is their index, so a loaded image can be matched to its source."""
    images = np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    images.reshape(n, -1)[:, 0] = np.arange(n)
    return images


def _write_mnist(folder: Path, gz: bool) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "train-images-idx3-ubyte": _unique_images(40, (28, 28), 0),
        "train-labels-idx1-ubyte": np.arange(40) % 10,
        "t10k-images-idx3-ubyte": _unique_images(10, (28, 28), 1),
        "t10k-labels-idx1-ubyte": np.arange(10)[::-1] % 10,
    }
    for name, array in data.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(_idx_bytes(array)))
        else:
            (folder / name).write_bytes(_idx_bytes(array))
    return data


def _check_recovered(dm: ArrayDataModule, train_images: np.ndarray, test_images: np.ndarray) -> None:
    """Train+val images are the written training images (matched by first pixel); test is in order."""
    seen = []
    for ds in (dm.train_dataset, dm.val_dataset):
        x = np.rint(ds.tensors[0].numpy() * 255).astype(np.uint8)  # type: ignore[union-attr]
        ids = x.reshape(len(x), -1)[:, 0]
        assert np.array_equal(x, train_images[ids].reshape(x.shape))
        seen.extend(ids.tolist())
    assert sorted(seen) == list(range(len(train_images)))
    x_test = np.rint(dm.test_dataset.tensors[0].numpy() * 255).astype(np.uint8)  # type: ignore[union-attr]
    assert np.array_equal(x_test, test_images.reshape(x_test.shape))


@pytest.mark.parametrize(("gz", "sub"), [(True, ""), (False, "MNIST/raw")])
def test_mnist_idx_reads_what_was_written(tmp_path: Path, gz: bool, sub: str) -> None:
    data = _write_mnist(tmp_path / sub, gz=gz)
    dm = MNISTIDXDataModule(data_dir=tmp_path, normalize=False, val_fraction=0.25)
    dm.setup()
    assert len(dm.train_dataset) == 30 and len(dm.val_dataset) == 10  # type: ignore[arg-type]
    _check_recovered(dm, data["train-images-idx3-ubyte"], data["t10k-images-idx3-ubyte"])
    assert dm.test_dataset.tensors[1].tolist() == data["t10k-labels-idx1-ubyte"].tolist()  # type: ignore[union-attr]
    normed = MNISTIDXDataModule(data_dir=tmp_path)
    normed.setup()
    expected = (data["t10k-images-idx3-ubyte"][:, None] / 255.0 - 0.1307) / 0.3081
    assert np.allclose(normed.test_dataset.tensors[0].numpy(), expected, atol=1e-5)  # type: ignore[union-attr]


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(struct.pack(">II", 0x0801, 5) + b"\x00\x01")
    with pytest.raises(ValueError, match=r"header says \(5,\) \(5 bytes\), file holds 2"):
        read_idx(tmp_path / "short")
    with pytest.raises(ValueError, match="IDX file has 1 dimensions, expected 3"):
        read_idx(tmp_path / "short", ndim=3)
    (tmp_path / "i32").write_bytes(struct.pack(">II", 0x0C01, 2) + struct.pack(">ii", -7, 300))
    assert read_idx(tmp_path / "i32").tolist() == [-7, 300]


def test_mnist_idx_missing_files_message(tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(_unique_images(2, (28, 28), 0)))
    dm = MNISTIDXDataModule(data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing file\(s\) train-labels-idx1-ubyte\[.gz\], ") as err:
        dm.setup()
    message = str(err.value)
    assert "train-images" not in message and str(tmp_path) in message and "MNIST/raw" in message
    assert "data.download=true" in message and "`data=mnist`" in message and "offline" in message


def test_mnist_idx_download_from_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _write_mnist(tmp_path / "mirror", gz=True)
    md5s = {name: md5_of(tmp_path / "mirror" / f"{name}.gz") for name in data}
    monkeypatch.setattr(MNISTIDXDataModule, "resources", md5s)
    dead = (tmp_path / "nowhere").as_uri() + "/"
    monkeypatch.setattr(MNISTIDXDataModule, "mirrors", [dead, (tmp_path / "mirror").as_uri() + "/"])
    dm = MNISTIDXDataModule(data_dir=tmp_path / "data", download=True, normalize=False)
    dm.prepare_data()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(f"{n}.gz" for n in data)
    dm.setup()
    assert dm.test_dataset.tensors[1].tolist() == data["t10k-labels-idx1-ubyte"].tolist()  # type: ignore[union-attr]

    monkeypatch.setattr(MNISTIDXDataModule, "resources", dict.fromkeys(data, "0" * 32))
    bad = MNISTIDXDataModule(data_dir=tmp_path / "other", download=True)
    with pytest.raises(FileNotFoundError, match=r"The download failed: .*MD5 mismatch"):
        bad.setup()
    assert not any((tmp_path / "other").iterdir())  # no partial file left behind


# -- CIFAR-10 pickle batches -----------------------------------------------------------------------------

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_cifar(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    train = _unique_images(50, (3072,), 2)
    for i in range(5):
        batch = {b"batch_label": b"training batch", b"data": train[10 * i : 10 * i + 10]}
        batch[b"labels"] = [int(v) for v in (np.arange(10 * i, 10 * i + 10) % 10)]
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch))
    test = _unique_images(20, (3072,), 3)
    test_batch = {b"data": test, b"labels": [int(v) for v in np.arange(20) % 10]}
    (folder / "test_batch").write_bytes(pickle.dumps(test_batch))
    meta = {b"label_names": [n.encode() for n in CIFAR_NAMES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return train, test


@pytest.mark.parametrize("sub", ["", "cifar-10-batches-py"])
def test_cifar10_reads_what_was_written(tmp_path: Path, sub: str) -> None:
    train, test = _write_cifar(tmp_path / sub)
    dm = CIFAR10DataModule(data_dir=tmp_path, normalize=False, val_fraction=0.2)
    dm.setup()
    assert dm.classes == CIFAR_NAMES and len(dm.val_dataset) == 10  # type: ignore[arg-type]
    assert dm.train_dataset.tensors[0].shape == (40, 3, 32, 32)  # type: ignore[union-attr]
    _check_recovered(dm, train.reshape(-1, 3, 32, 32), test.reshape(-1, 3, 32, 32))
    normed = CIFAR10DataModule(data_dir=tmp_path, augment=True, batch_size=8)
    normed.setup()
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    expected = (torch.from_numpy(test.reshape(-1, 3, 32, 32)).float() / 255 - mean) / std
    assert torch.allclose(normed.test_dataset.tensors[0], expected, atol=1e-5)  # type: ignore[union-attr]
    x, _ = next(iter(normed.train_dataloader()))
    assert x.shape == (8, 3, 32, 32)


def test_cifar10_missing_and_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing file\(s\) data_batch_1, .*batches.meta in .*cifar"):
        CIFAR10DataModule(data_dir=tmp_path / "empty").setup()
    train, _ = _write_cifar(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(CIFAR10DataModule, "mirrors", [(tmp_path / "mirror").as_uri() + "/"])
    monkeypatch.setattr(CIFAR10DataModule, "archive", ("cifar-10-python.tar.gz", md5_of(archive)))
    dm = CIFAR10DataModule(data_dir=tmp_path / "data", download=True, normalize=False)
    dm.prepare_data()
    dm.setup()
    assert (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").is_file()
    assert len(dm.train_dataset) + len(dm.val_dataset) == len(train)  # type: ignore[arg-type]


# -- image folders ---------------------------------------------------------------------------------------


def _write_pngs(
    root: Path, classes: list[str], per_class: int, mode: str, seed: int
) -> dict[str, np.ndarray]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (6, 6) if mode == "L" else (6, 6, 3)
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(pixels, mode=mode).save(root / name / f"{i}.png")
            written[f"{name}/{i}"] = pixels
    (root / classes[0] / "notes.txt").write_text("not an image")
    return written


def test_image_folder_reads_what_was_written(tmp_path: Path) -> None:
    written = _write_pngs(tmp_path, ["b_cat", "a_dog", "c_emu"], per_class=10, mode="RGB", seed=0)
    dm = ImageFolderDataModule(data_dir=tmp_path, image_size=6, channels=3, normalize=False, batch_size=4)
    assert dm.num_classes == 3 and dm.classes == ["a_dog", "b_cat", "c_emu"]  # from the listing
    assert dm.input_shape == (3, 6, 6) and dm.train_dataset is None
    dm.setup()
    loaded = [ds.tensors for ds in (dm.train_dataset, dm.val_dataset, dm.test_dataset)]  # type: ignore[union-attr]
    assert [len(y) for _, y in loaded] == [21, 3, 6]
    assert all(torch.bincount(y).tolist() == [len(y) // 3] * 3 for _, y in loaded)
    expected = {
        (lbl, p.transpose(2, 0, 1).tobytes())
        for lbl, cls in enumerate(dm.classes)
        for k, p in written.items()
        if k.startswith(cls)
    }
    got = {
        (int(lbl), np.rint(img.numpy() * 255).astype(np.uint8).tobytes())
        for x, y in loaded
        for img, lbl in zip(x, y, strict=True)
    }
    assert got == expected

    normed = ImageFolderDataModule(data_dir=tmp_path, image_size=4, channels=1, num_classes=3)
    normed.setup()
    x_train = normed.train_dataset.tensors[0]  # type: ignore[union-attr]
    assert x_train.shape == (21, 1, 4, 4)
    assert abs(x_train.mean().item()) < 1e-5 and abs(x_train.std(unbiased=False).item() - 1) < 1e-4


def test_image_folder_split_subfolders(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "train", ["x", "y"], per_class=5, mode="L", seed=1)
    test = _write_pngs(tmp_path / "test", ["x", "y"], per_class=2, mode="L", seed=2)
    dm = ImageFolderDataModule(data_dir=tmp_path, image_size=6, channels=1, normalize=False, val_fraction=0.2)
    dm.setup()
    assert [len(ds) for ds in (dm.train_dataset, dm.val_dataset, dm.test_dataset)] == [8, 2, 4]  # type: ignore[arg-type]
    x_test, y_test = dm.test_dataset.tensors  # type: ignore[union-attr]
    assert y_test.tolist() == [0, 0, 1, 1]
    assert np.array_equal(np.rint(x_test[2, 0].numpy() * 255).astype(np.uint8), test["y/0"])
    (tmp_path / "val" / "z").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"has class folders \['z'\] not in \['x', 'y'\]"):
        ImageFolderDataModule(data_dir=tmp_path, channels=1).setup()


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not exist; set data\.data_dir"):
        ImageFolderDataModule(data_dir=tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no class folders in"):
        ImageFolderDataModule(data_dir=tmp_path)
    (tmp_path / "only" / "empty_class").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolderDataModule(data_dir=tmp_path / "only").setup()
    with pytest.raises(ValueError, match=r"channels must be one of \[1, 3\], got 2"):
        ImageFolderDataModule(data_dir=tmp_path, channels=2)
    with pytest.raises(ValueError, match="image_size must be >= 1, got 0"):
        ImageFolderDataModule(data_dir=tmp_path, image_size=0)
    _write_pngs(tmp_path / "two", ["p", "q"], per_class=4, mode="L", seed=0)
    dm = ImageFolderDataModule(data_dir=tmp_path / "two", num_classes=5)  # trusted until setup
    with pytest.raises(ValueError, match="configured num_classes 5 does not match the 2 class folders"):
        dm.setup()


# -- Hydra configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONF_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_config_instantiates(path: Path, tmp_path: Path) -> None:
    cfg = OmegaConf.create({"seed": 0, "paths": {"data_dir": str(tmp_path)}, "data": OmegaConf.load(path)})
    assert all(isinstance(v, int) for v in cfg.data.input_shape) and isinstance(cfg.data.num_classes, int)
    dm = hydra.utils.instantiate(cfg.data)
    assert type(dm).__name__ == cfg.data._target_.rsplit(".", 1)[1]
    assert path.stem in list_datamodules()
    assert dm.input_shape == tuple(cfg.data.input_shape) and dm.num_classes == cfg.data.num_classes
    assert dm.train_dataset is None  # nothing is read at construction
    if path.stem == "mnist":
        assert dm.batch_size == 64 and dm.augment
    if path.stem == "mnist1d":
        cfg.data.final_seq_length = 24
        assert hydra.utils.instantiate(cfg.data).input_shape == (1, 24)
