import gzip
import struct

import numpy as np
import pytest

from mnist_cnn import MnistCnnError, load_idx
from mnist_cnn.datasets import get_dataset_info, load_folder
from mnist_cnn.idx import IdxError, encode_idx, parse_idx

from .conftest import write_dataset


def test_round_trip_images_and_labels(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28).astype(np.uint8)
    labels = np.array([0, 9, 4], dtype=np.uint8)
    (tmp_path / "img").write_bytes(encode_idx(images))
    (tmp_path / "lab.gz").write_bytes(gzip.compress(encode_idx(labels)))
    np.testing.assert_array_equal(load_idx(tmp_path / "img"), images)
    np.testing.assert_array_equal(load_idx(tmp_path / "lab.gz"), labels)


def test_header_fields_are_big_endian():
    data = encode_idx(np.zeros((2, 28, 28), np.uint8))
    assert struct.unpack(">iiii", data[:16]) == (2051, 2, 28, 28)
    assert struct.unpack(">ii", encode_idx(np.zeros(5, np.uint8))[:8]) == (2049, 5)


@pytest.mark.parametrize(
    "data, message",
    [
        (struct.pack(">ii", 1234, 1) + b"\x00", "magic number 1234"),
        (b"\x00\x00\x08", "too short"),
        (struct.pack(">ii", 2051, 1) + b"\x00", "header is truncated"),
        (struct.pack(">iiii", 2051, 2, 28, 28) + bytes(28 * 28), "truncated: header says 2 x 28"),
        (struct.pack(">ii", 2049, 3) + bytes(4), "trailing bytes"),
        (struct.pack(">ii", 2049, 3) + bytes([1, 2, 10]), "label 10 is out of range"),
        (struct.pack(">iiii", 2051, 1, 0, 28), "invalid dimensions"),
    ],
)
def test_bad_files_are_named_and_explained(tmp_path, data, message):
    path = tmp_path / "bad-file"
    path.write_bytes(data)
    with pytest.raises(IdxError) as info:
        load_idx(path, num_classes=10)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(encode_idx(np.zeros(10, np.uint8)))[:-12])
    with pytest.raises(IdxError, match="cannot read"):
        load_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(IdxError, match="no such file"):
        load_idx(tmp_path / "nope")


def test_parse_returns_a_view_of_the_right_shape():
    array = parse_idx(encode_idx(np.ones((4, 28, 28), np.uint8)))
    assert array.shape == (4, 28, 28) and array.dtype == np.uint8


def test_folder_with_mismatched_counts_is_rejected(tmp_path):
    folder = write_dataset(tmp_path / "d", gz=False)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(encode_idx(np.zeros(99, np.uint8)))
    with pytest.raises(MnistCnnError, match="100 images but 99 labels"):
        load_folder(get_dataset_info("mnist"), folder)


def test_folder_with_wrong_image_size_is_rejected(tmp_path):
    folder = write_dataset(tmp_path / "d", gz=False)
    (folder / "t10k-images-idx3-ubyte").write_bytes(encode_idx(np.zeros((100, 32, 32), np.uint8)))
    with pytest.raises(MnistCnnError, match="32x32, expected 28x28"):
        load_folder(get_dataset_info("mnist"), folder)
