"""Tests for ``pruner.data``: containers, batching/augmentation, sources, protocols, caching, errors."""

from __future__ import annotations

import os
import pickle
import urllib.error
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pruner.data import (
    DataBundle,
    ImageTensors,
    batches,
    clear_memory_cache,
    folder_cache_file,
    load_data,
    random_crop_flip,
)
from pruner.data.batching import crop_padding
from pruner.data.splits import stratified_split
from pruner.errors import PrunerError


def shared_data_root() -> Path:
    """Where the real datasets live: ``$PRUNER_DATA_ROOT``, else ``/work/shared/data``."""
    return Path(os.environ.get("PRUNER_DATA_ROOT") or "/work/shared/data")


CIFAR_JPEG = shared_data_root() / "cifar10-jpeg"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own disk cache and an empty in-process cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PRUNER_CACHE_DIR", str(cache))
    clear_memory_cache()
    yield cache
    clear_memory_cache()


def pixel(class_index: int, split: str, i: int) -> tuple[int, int, int]:
    """A colour unique to (class, split, image) so images can be traced after loading."""
    return (40 * class_index + 10, 20 * i + 5, 30 if split == "train" else 220)


def make_tree(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "frog"),
    n_train: int = 4,
    n_test: int = 2,
    size: int = 16,
    fmt: str = "png",
    eval_name: str = "test",
) -> Path:
    """Write a small ImageFolder tree of solid-colour images with real PIL encoders."""
    for split, n in (("train", n_train), (eval_name, n_test)):
        for ci, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                colour = pixel(ci, "train" if split == "train" else "test", i)
                Image.new("RGB", (size, size), colour).save(folder / f"{i:03d}.{fmt}")
    return root


def row_counts(x: torch.Tensor) -> Counter[bytes]:
    """Multiset of images (as raw bytes), to check that splits partition a set."""
    flat = x.reshape(x.shape[0], -1).numpy()
    return Counter(row.tobytes() for row in flat)


# --- ImageTensors / DataBundle -------------------------------------------------------------------


def test_image_tensors_subset_and_to() -> None:
    x = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 3, 2, 2).contiguous()
    data = ImageTensors(x, torch.arange(6))
    assert len(data) == 6
    assert data.subset(4).y.tolist() == [0, 1, 2, 3]
    assert data.subset(100).y.tolist() == list(range(6))
    assert data.subset([5, 1]).y.tolist() == [5, 1]
    assert data.subset(torch.tensor([2, 3])).x[:, 0, 0, 0].tolist() == [2, 3]
    assert data.subset(data.y % 2 == 0).y.tolist() == [0, 2, 4]
    moved = data.to("cpu")
    assert torch.equal(moved.x, x) and moved.y.device.type == "cpu"
    with pytest.raises(PrunerError):
        data.subset(-1)
    with pytest.raises(ValueError):
        ImageTensors(x.float(), torch.arange(6))
    with pytest.raises(ValueError):
        ImageTensors(x, torch.arange(5))


def test_bundle_describe() -> None:
    part = ImageTensors(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))
    bundle = DataBundle("toy", ["a", "b"], (0.5,) * 3, (0.5,) * 3, (3, 4, 4), "test-halves", part, part.subset(1), part)
    info = bundle.describe()
    assert bundle.num_classes == 2
    assert info["name"] == "toy" and info["classes"] == ["a", "b"] and info["protocol"] == "test-halves"
    assert info["sizes"] == {"fit": 2, "search": 1, "report": 2}
    assert info["input_size"] == [3, 4, 4]


# --- batches -------------------------------------------------------------------------------------


def test_batches_shapes_normalization_and_drop_last() -> None:
    x = torch.zeros(10, 3, 8, 8, dtype=torch.uint8)
    x[:, 0] = 255
    x[:, 2] = 51
    data = ImageTensors(x, torch.arange(10))
    out = list(batches(data, 4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    assert [xb.shape[0] for xb, _ in out] == [4, 4, 2]
    xb, yb = out[0]
    assert xb.dtype == torch.float32 and xb.shape == (4, 3, 8, 8) and yb.dtype == torch.int64
    assert torch.allclose(xb[:, 0], torch.tensor(1.0))
    assert torch.allclose(xb[:, 1], torch.tensor(-1.0))
    assert torch.allclose(xb[:, 2], torch.tensor(-0.6))
    assert torch.cat([yb for _, yb in out]).tolist() == list(range(10))
    dropped = list(batches(data, 4, mean=(0.5,) * 3, std=(0.5,) * 3, drop_last=True))
    assert [xb.shape[0] for xb, _ in dropped] == [4, 4]
    assert list(batches(data.subset(0), 4, mean=(0.5,) * 3, std=(0.5,) * 3)) == []
    with pytest.raises(PrunerError):
        next(batches(data, 0, mean=(0.5,) * 3, std=(0.5,) * 3))


def test_batches_shuffle_is_seeded() -> None:
    data = ImageTensors(torch.zeros(50, 3, 4, 4, dtype=torch.uint8), torch.arange(50))

    def order(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        out = batches(data, 16, mean=(0,) * 3, std=(1,) * 3, shuffle=True, generator=g)
        return torch.cat([y for _, y in out]).tolist()

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(order(3)) == list(range(50))


def test_crop_padding_scales_with_size() -> None:
    assert crop_padding(32, 32) == (4, 4)
    assert crop_padding(64, 48) == (8, 6)
    assert crop_padding(8, 8) == (1, 1)


def test_random_crop_flip_is_a_padded_crop_or_its_mirror() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (6, 3, 12, 12), dtype=torch.uint8, generator=g)
    out = random_crop_flip(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    pad = crop_padding(12, 12)[0]
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    for img, src in zip(out, padded):
        candidates = [
            view
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for view in (src[:, dy : dy + 12, dx : dx + 12], src[:, dy : dy + 12, dx : dx + 12].flip(-1))
        ]
        assert any(torch.equal(img, c) for c in candidates)


def test_augmented_batches_are_deterministic() -> None:
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = ImageTensors(x, torch.arange(64))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        out = batches(data, 32, mean=mean, std=std, shuffle=True, augment=True, generator=g)
        return torch.cat([xb for xb, _ in out])

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    plain = torch.cat([xb for xb, _ in batches(data, 32, mean=mean, std=std)])
    assert not torch.equal(run(7), plain)
    # zero padding shows up as black pixels: (0 - mean) / std
    black = (-torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1)
    assert torch.isclose(a, black.expand_as(a)).all(dim=1).any()


# --- digits --------------------------------------------------------------------------------------


def test_digits_protocols_and_determinism() -> None:
    data = load_data("digits", val_size=200, seed=0)
    assert data.name == "digits" and data.classes == [str(i) for i in range(10)]
    assert data.input_size == (3, 32, 32) and data.mean == (0.5, 0.5, 0.5) and data.std == (0.5, 0.5, 0.5)
    assert data.fit.x.dtype == torch.uint8 and data.fit.x.shape[1:] == (3, 32, 32)
    assert len(data.report) == 360 and len(data.search) == 200 and len(data.fit) == 1437 - 200
    assert torch.equal(data.fit.x[:, 0], data.fit.x[:, 1])  # gray replicated
    assert torch.bincount(data.search.y, minlength=10).min() >= 19  # stratified
    again = load_data("digits", val_size=200, seed=0)
    assert torch.equal(again.search.x, data.search.x) and torch.equal(again.fit.y, data.fit.y)
    other = load_data("digits", val_size=200, seed=1)
    assert not torch.equal(other.search.y, data.search.y)

    halves = load_data("digits", protocol="test-halves", seed=0)
    assert len(halves.fit) == 1437 and len(halves.search) == 180 and len(halves.report) == 180
    assert row_counts(halves.search.x) + row_counts(halves.report.x) == row_counts(data.report.x)
    assert load_data("digits", val_size=100, image_size=16).input_size == (3, 16, 16)


def test_stratified_split_partitions_and_balances() -> None:
    labels = torch.arange(103) % 4
    first, rest = stratified_split(labels, 21, torch.Generator().manual_seed(0))
    assert len(first) == 21 and len(rest) == 82
    assert sorted(torch.cat([first, rest]).tolist()) == list(range(103))
    counts = torch.bincount(labels[first], minlength=4)
    assert counts.max() - counts.min() <= 1


# --- ImageFolder trees ---------------------------------------------------------------------------


def test_image_folder_end_to_end_and_cache(tmp_path: Path, isolated_cache: Path) -> None:
    root = make_tree(tmp_path / "shapes", n_train=6, n_test=4)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")  # ignored
    seen: list[tuple[str, float]] = []
    data = load_data(str(root), val_size=3, seed=0, progress=lambda m, f: seen.append((m, f)))
    assert seen and all(0.0 <= f <= 1.0 for _, f in seen)
    assert data.name == "shapes" and data.classes == ["cat", "dog", "frog"]
    assert data.input_size == (3, 16, 16)
    assert data.mean == (0.485, 0.456, 0.406) and data.std == (0.229, 0.224, 0.225)
    assert (len(data.fit), len(data.search), len(data.report)) == (15, 3, 12)
    assert torch.bincount(data.search.y, minlength=3).tolist() == [1, 1, 1]
    for part in (data.fit, data.search, data.report):  # labels follow the class folders
        for img, label in zip(part.x, part.y):
            assert img[0, 0, 0].item() == 40 * label.item() + 10
    assert all(img[2, 0, 0].item() == 220 for img in data.report.x)  # report = test images only
    assert not set(row_counts(data.fit.x)) & set(row_counts(data.search.x))

    cache_file = folder_cache_file(root)
    assert cache_file.is_file() and cache_file.parent == isolated_cache
    again = load_data(str(root), val_size=3, seed=0)  # in-process hit
    assert torch.equal(again.fit.x, data.fit.x)
    clear_memory_cache()
    from_disk = load_data(str(root), val_size=3, seed=0)  # disk hit
    assert torch.equal(from_disk.fit.x, data.fit.x) and torch.equal(from_disk.search.y, data.search.y)

    Image.new("RGB", (16, 16), (1, 2, 3)).save(root / "train" / "dog" / "999.png")  # fingerprint changes
    grown = load_data(str(root), val_size=3, seed=0)
    assert len(grown.fit) == 16
    assert folder_cache_file(root) != cache_file


def test_image_folder_without_cache_writes_nothing(tmp_path: Path, isolated_cache: Path) -> None:
    root = make_tree(tmp_path / "tree", fmt="jpg", eval_name="val")
    data = load_data(root, val_size=2, cache=False)
    assert len(data.report) == 6 and data.input_size == (3, 16, 16)
    assert not isolated_cache.exists() or not any(isolated_cache.iterdir())
    # JPEG is lossy but solid colours survive within a few levels
    assert (data.report.x[:, 2].float() - 220).abs().max() <= 3


def test_image_folder_sizes(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", size=20)
    assert load_data(root, val_size=2).input_size == (3, 20, 20)
    assert load_data(root, val_size=2, image_size=12).input_size == (3, 12, 12)
    Image.new("RGB", (30, 20), (9, 9, 9)).save(root / "test" / "dog" / "wide.png")  # mixed sizes -> 224
    data = load_data(root, val_size=2)
    assert data.input_size == (3, 224, 224) and data.fit.x.shape[1:] == (3, 224, 224)


def test_broken_or_unwritable_cache_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_tree(tmp_path / "tree")
    first = load_data(root, val_size=2)
    cache_file = folder_cache_file(root)
    cache_file.write_bytes(b"truncated")
    clear_memory_cache()
    again = load_data(root, val_size=2)  # bad cache file: decoded again and rewritten
    assert torch.equal(again.fit.x, first.fit.x)
    assert cache_file.stat().st_size > 100
    (tmp_path / "blocker").write_text("a file where the cache folder should be")
    monkeypatch.setenv("PRUNER_CACHE_DIR", str(tmp_path / "blocker" / "cache"))
    clear_memory_cache()
    assert torch.equal(load_data(root, val_size=2).fit.x, first.fit.x)


def test_torchvision_cifar10_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny file in torchvision's CIFAR-10 format (its md5 check bypassed) loads as NCHW uint8."""
    import torchvision.datasets as tvd

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(10)]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
        with open(folder / batch, "wb") as f:
            pickle.dump({"data": data, "labels": [i % 10 for i in range(20)]}, f)
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    data = load_data("cifar10", root=tmp_path, val_size=10)
    assert data.classes == names and data.input_size == (3, 32, 32)
    assert (len(data.fit), len(data.search), len(data.report)) == (90, 10, 20)
    assert data.mean == (0.485, 0.456, 0.406)
    raw = pickle.loads((folder / "test_batch").read_bytes())["data"].reshape(20, 3, 32, 32)
    assert row_counts(data.report.x) == row_counts(torch.from_numpy(raw))
    assert load_data("cifar10", root=tmp_path, val_size=10, image_size=16).input_size == (3, 16, 16)


# --- errors --------------------------------------------------------------------------------------


def expect_error(match: str, *args: object, **kwargs: object) -> PrunerError:
    with pytest.raises(PrunerError, match=match) as info:
        load_data(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return info.value


def test_error_missing_path(tmp_path: Path) -> None:
    expect_error("does not exist", str(tmp_path / "nowhere"))
    (tmp_path / "file.txt").write_text("x")
    expect_error("is a file", str(tmp_path / "file.txt"))


def test_error_no_train_or_test(tmp_path: Path) -> None:
    (tmp_path / "a" / "test" / "x").mkdir(parents=True)
    expect_error("no train/ folder", tmp_path / "a")
    root = make_tree(tmp_path / "b")
    for p in sorted((root / "test").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (root / "test").rmdir()
    expect_error("no test/ or val/", root)


def test_error_single_class(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "one", classes=("only",))
    expect_error("at least two", root)


def test_error_empty_class_folder(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    (root / "train" / "empty").mkdir()
    (root / "test" / "empty").mkdir()
    err = expect_error("holds no images", root)
    assert "empty" in str(err)


def test_error_corrupt_images_are_named(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "garbage", fmt="jpg")
    (root / "train" / "dog" / "bad.jpg").write_bytes(b"this is not a jpeg")
    expect_error(r"bad\.jpg", root)

    root = make_tree(tmp_path / "truncated")
    good = (root / "test" / "frog" / "000.png").read_bytes()
    (root / "test" / "frog" / "000.png").write_bytes(good[: len(good) // 2])
    expect_error(r"000\.png.*corrupt", root, cache=False)


def test_error_test_classes_differ(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    (root / "test" / "frog").rename(root / "test" / "toad")
    err = expect_error("differ", root)
    assert "frog" in str(err) and "toad" in str(err)


def test_error_bad_arguments(tmp_path: Path) -> None:
    expect_error("unknown dataset", "imagenet-ish")
    expect_error("no dataset", "  ")
    expect_error("unknown protocol", "digits", protocol="k-fold")
    expect_error("val_size 1437 is too large for the 1437 training images", "digits", val_size=1437)
    expect_error("val_size must be a positive", "digits", val_size=0)
    expect_error("image_size", "digits", image_size=2)
    load_data("digits", val_size=1436)  # the largest allowed
    assert len(load_data("digits", val_size=None).search) == 143  # None: 10% of train


def test_error_cifar_sources_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expect_error("cifar10-jpeg not found", "cifar10-jpeg", root=tmp_path)
    monkeypatch.setenv("PRUNER_DATA_ROOT", str(tmp_path))
    expect_error("cifar10-jpeg not found", "cifar10-jpeg")

    import torchvision.datasets as tvd

    def offline(self: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(tvd.CIFAR10, "download", offline)  # simulate no internet, whatever the network
    err = expect_error("cifar-10-batches-py", "cifar10", root=tmp_path / "tv")
    assert "download" in str(err)


# --- the real CIFAR-10 JPEG tree -----------------------------------------------------------------


@pytest.mark.skipif(not CIFAR_JPEG.is_dir(), reason=f"{CIFAR_JPEG} not present")
def test_real_cifar10_jpeg(isolated_cache: Path) -> None:
    root = CIFAR_JPEG.parent
    data = load_data("cifar10-jpeg", root=root, seed=0)
    assert data.name == "cifar10-jpeg" and data.num_classes == 10
    assert data.classes[0] == "airplane" and data.classes[-1] == "truck"
    assert data.input_size == (3, 32, 32)
    assert (len(data.fit), len(data.search), len(data.report)) == (45000, 5000, 10000)
    assert torch.bincount(data.search.y).tolist() == [500] * 10
    assert torch.bincount(data.report.y).tolist() == [1000] * 10
    train_rows = row_counts(data.fit.x) + row_counts(data.search.x)  # fit + search == train
    assert sum(train_rows.values()) == 50000

    cache_file = folder_cache_file(CIFAR_JPEG)
    assert cache_file.is_file() and cache_file.parent == isolated_cache
    clear_memory_cache()
    cached = load_data("cifar10-jpeg", root=root, seed=0)  # from the disk cache
    assert torch.equal(cached.search.x, data.search.x) and torch.equal(cached.fit.y, data.fit.y)
    fresh = load_data("cifar10-jpeg", root=root, seed=0, cache=False)  # decoded again
    assert torch.equal(fresh.fit.x, cached.fit.x) and torch.equal(fresh.report.x, cached.report.x)

    halves = load_data("cifar10-jpeg", root=root, protocol="test-halves", seed=1)
    assert (len(halves.fit), len(halves.search), len(halves.report)) == (50000, 5000, 5000)
    assert row_counts(halves.fit.x) == train_rows
    assert row_counts(halves.search.x) + row_counts(halves.report.x) == row_counts(data.report.x)
    assert torch.bincount(halves.search.y).tolist() == [500] * 10
    same = load_data("cifar10-jpeg", root=root, protocol="test-halves", seed=1)
    assert torch.equal(same.search.x, halves.search.x)
    other = load_data("cifar10-jpeg", root=root, protocol="test-halves", seed=2)
    assert not torch.equal(other.search.x, halves.search.x)
