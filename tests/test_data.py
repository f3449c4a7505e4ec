import numpy as np
import pytest
import torch
from PIL import Image

from tdc_agent.core.config import DataConfig
from tdc_agent.core.data import images_from_array, load_dataset, to_uint8
from tdc_agent.core.errors import DataError


def test_digits_all_and_splits():
    ds = load_dataset(DataConfig(name="digits", split="all"))
    assert ds.images.shape == (1797, 1, 8, 8)
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    parts = {s: load_dataset(DataConfig(name="digits", split=s)).images for s in ("train", "val", "test", "heldout")}
    assert len(parts["train"]) + len(parts["val"]) + len(parts["test"]) == 1797
    assert len(parts["heldout"]) == len(parts["val"]) + len(parts["test"]) == 1797 // 6
    # disjoint: no image of val or test is a training image (rows compared as bytes)
    rows = {s: {bytes(x.numpy().tobytes()) for x in v} for s, v in parts.items()}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]


def test_small_datasets_say_why_a_split_is_empty(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    assert len(load_dataset(DataConfig(name="npz", root=str(tmp_path / "x.npz")))) == 4  # train: all 4
    with pytest.raises(DataError, match="too few for a 'val' split"):
        load_dataset(DataConfig(name="npz", root=str(tmp_path / "x.npz"), split="val"))


def _write_cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, (n, 1), dtype=np.uint8)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    path.write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())
    return pixels


def test_cifar10_binary_fixture(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    px = _write_cifar_batch(folder / "data_batch_1.bin", 5, 0)
    _write_cifar_batch(folder / "test_batch.bin", 3, 1)
    ds = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), split="train"))
    assert ds.images.shape == (5, 3, 32, 32)
    # record layout: R plane, G plane, B plane, row-major; round-trips to the bytes we wrote
    back = to_uint8(ds.images).transpose(0, 3, 1, 2).reshape(5, -1)
    assert np.array_equal(back, px)
    assert len(load_dataset(DataConfig(name="cifar10", root=str(tmp_path), split="all"))) == 8
    # the official test batch is the held-out part: val its first half, test its second
    held = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), split="heldout")).images
    val = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), split="val")).images
    test = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), split="test")).images
    assert len(held) == 3 and torch.equal(torch.cat([val, test]), held)


def test_cifar10_missing_without_download(tmp_path):
    with pytest.raises(DataError, match="data.download=true"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False))


def test_cifar10_truncated(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "data_batch_1.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="truncated"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), split="train"))


def test_imagefolder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "sub" / f"{i}.png")
    ds = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=16))
    assert ds.images.shape == (3, 3, 16, 16)
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "missing")))


def test_npz_layouts(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", images=arr)
    ds = load_dataset(DataConfig(name="npz", root=str(tmp_path / "x.npz")))
    assert ds.images.shape == (4, 3, 8, 8)
    assert np.array_equal(to_uint8(ds.images), arr)
    assert images_from_array(np.zeros((2, 1, 4, 4), np.float32)).min() == -1
    np.savez(tmp_path / "y.npz", a=arr, b=arr)
    with pytest.raises(DataError, match="name the images array"):
        load_dataset(DataConfig(name="npz", root=str(tmp_path / "y.npz")))


def test_channel_and_size_conversion():
    ds = load_dataset(DataConfig(name="digits", split="all", channels=3, image_size=16))
    assert ds.images.shape == (1797, 3, 16, 16)


@pytest.mark.parametrize("case,match", [
    ("nan", "NaN or infinite"), ("inf", "NaN or infinite"), ("empty", "empty"), ("five_channels", "5 channels"),
    ("strings", "dtype"), ("truncated", "truncated or corrupt"), ("corrupt_member", "truncated or corrupt"),
])
def test_bad_npz_data_is_refused_up_front(tmp_path, case, match):
    path = tmp_path / "d.npz"
    good = np.random.default_rng(0).random((6, 8, 8, 1)).astype(np.float32)
    if case == "nan":
        good[3, 2, 2, 0] = np.nan
        np.savez(path, images=good)
    elif case == "inf":
        good[0, 0, 0, 0] = np.inf
        np.savez(path, images=good)
    elif case == "empty":
        np.savez(path, images=good[:0])
    elif case == "five_channels":
        np.savez(path, images=np.zeros((6, 5, 8, 8), np.float32))
    elif case == "strings":
        np.savez(path, images=np.array([["a"] * 8] * 8))
    else:
        np.savez_compressed(path, images=good)
        raw = bytearray(path.read_bytes())
        if case == "truncated":
            raw = raw[: len(raw) // 2]
        else:  # flip bytes inside the compressed member
            for i in range(60, 90):
                raw[i] ^= 0xFF
        path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=match) as e:
        load_dataset(DataConfig(name="npz", root=str(path)))
    assert str(path) in str(e.value)


def test_png_decompression_bomb_is_refused_from_its_header(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "ok.png")
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # 30000 x 30000 RGB, declared only
    (tmp_path / "imgs" / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                                 + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    with pytest.raises(DataError, match="bomb|30000x30000") as e:
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "imgs")))
    assert "bomb.png" in str(e.value)
