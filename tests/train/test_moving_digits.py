"""frametrans.data.moving_digits: the Moving MNIST generator (scikit-learn digits; no MNIST needed)."""

import gzip

import numpy as np
import pytest

from frametrans.data import (
    TEST_SEED,
    VALIDATION_SEED,
    DataSourceError,
    MovingDigits,
    load_digits,
    make_datasets,
    read_idx_images,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits("moving-digits")


def test_sklearn_digits_split(digits):
    train, test = digits
    assert train.dtype == np.uint8 and test.dtype == np.uint8
    assert train.shape[1:] == (28, 28) and test.shape[1:] == (28, 28)
    assert len(train) + len(test) == 1797
    assert train.max() > 200  # scaled to 0..255
    # disjoint: no test digit is also a training digit
    train_set = {d.tobytes() for d in train}
    assert not any(d.tobytes() in train_set for d in test)


def test_shapes_range_dtype(digits):
    gen = MovingDigits(digits[0], size=64, num_digits=2, frames=20)
    x = gen.sample(3, np.random.default_rng(0))
    assert x.shape == (3, 20, 1, 64, 64) and x.dtype == np.float32
    assert x.min() == 0.0 and 0.9 < x.max() <= 1.0
    # every frame shows a digit (never an empty frame)
    assert (x.reshape(3 * 20, -1).max(axis=1) > 0.5).all()


def test_fixed_sets_deterministic_and_distinct(digits):
    ds = make_datasets("moving-digits", size=32, frames=6, digit_size=14)
    a, b = ds.test_set(8), ds.test_set(8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(ds.validation_set(8), a)
    assert TEST_SEED != VALIDATION_SEED
    # chunked rendering equals the whole set; the uint8 form is the same data
    chunks = np.concatenate(list(ds.test.iter_fixed_set(8, TEST_SEED, batch=3)))
    np.testing.assert_array_equal(chunks, a)
    np.testing.assert_array_equal(ds.test_set(8, uint8=True).astype(np.float32) / 255, a)
    # fresh samples differ from call to call
    rng = np.random.default_rng(0)
    assert not np.array_equal(ds.train.sample(2, rng), ds.train.sample(2, rng))


def test_test_set_uses_test_digits_only(digits):
    train, test = digits
    ds = make_datasets("moving-digits")
    traj = ds.test.draw(50, np.random.default_rng(TEST_SEED))
    assert traj.digit.max() < len(test)
    assert ds.test.digits is not ds.train.digits
    np.testing.assert_array_equal(ds.test.digits, test)
    np.testing.assert_array_equal(ds.train.digits, train)


def test_one_digit_is_pasted_unchanged(digits):
    gen = MovingDigits(digits[1][:1], size=40, num_digits=1, frames=5)
    seq = gen.fixed_set(1, 0, uint8=True)[0, :, 0]  # [5, 40, 40]
    traj = gen.draw(1, np.random.default_rng(0))
    for f in range(5):
        top, left = traj.top[0, 0, f], traj.left[0, 0, f]
        np.testing.assert_array_equal(seq[f, top:top + 28, left:left + 28], gen.digits[0])
        assert seq[f].sum() == gen.digits[0].astype(int).sum()  # nothing outside the box


def test_two_digits_combine_with_max(digits):
    gen = MovingDigits(digits[0][:2], size=28, num_digits=2, frames=1)  # no room: both at (0, 0)
    traj = gen.draw(1, np.random.default_rng(5))
    seq = gen.render(traj)[0, 0, 0]
    expected = np.maximum(gen.digits[traj.digit[0, 0]], gen.digits[traj.digit[0, 1]])
    np.testing.assert_array_equal(seq, expected)


def test_bounce_stays_in_frame_and_moves(digits):
    gen = MovingDigits(digits[0], size=64, num_digits=2, frames=60)
    traj = gen.draw(200, np.random.default_rng(1))
    canvas = 64 - 28
    assert traj.top.min() >= 0 and traj.left.min() >= 0
    assert traj.top.max() <= canvas and traj.left.max() <= canvas
    # over 60 frames of 3.6 px steps, most digits hit a wall and come back
    dy = np.diff(traj.top.astype(int), axis=-1)
    assert ((dy > 0).any(axis=-1) & (dy < 0).any(axis=-1)).mean() > 0.5
    # speed: at most step_length * canvas per axis per frame (+1 for rounding down)
    assert np.abs(dy).max() <= int(0.1 * canvas) + 1


def test_small_frames_with_resized_digits(digits):
    gen = MovingDigits(digits[0], size=32, num_digits=2, frames=8, digit_size=14)
    x = gen.sample(2, np.random.default_rng(0))
    assert gen.digit_size == 14 and x.shape == (2, 8, 1, 32, 32)


def test_read_idx_images(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = b"\x00\x00\x08\x03" + b"".join(n.to_bytes(4, "big") for n in (2, 3, 4))
    path = tmp_path / "x-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())
    np.testing.assert_array_equal(read_idx_images(path), arr)
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(header + arr.tobytes()[:-1])
    with pytest.raises(DataSourceError, match="truncated"):
        read_idx_images(bad)


def test_missing_mnist_is_one_clear_line(tmp_path):
    with pytest.raises(DataSourceError) as err:
        load_digits("moving-mnist", mnist_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message and "t10k-images-idx3-ubyte.gz" in message
    assert "moving-digits" in message
    with pytest.raises(DataSourceError, match="unknown data source"):
        load_digits("cifar")


def test_mnist_env_var(tmp_path, monkeypatch):
    arr = np.zeros((10000, 28, 28), dtype=np.uint8)
    arr[8000:] = 7
    header = b"\x00\x00\x08\x03" + b"".join(n.to_bytes(4, "big") for n in (10000, 28, 28))
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + arr.tobytes())
    monkeypatch.setenv("FRAMETRANS_MNIST_DIR", str(tmp_path))
    train, test = load_digits("moving-mnist")
    assert train.shape == (8000, 28, 28) and test.shape == (2000, 28, 28)
    assert train.max() == 0 and test.min() == 7
