"""frametrans.engine.runner.Runner: order, batching, conversions and shapes (memory decisions are in
test_memory.py, fast paths in test_fast_paths.py, the non-finite guard in test_nonfinite.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frametrans.bench.models import NullModel
from frametrans.engine.runner import Runner, RunnerOptions
from frametrans.io.frame import Frame
from support import smooth_images, tiny_model

FP32 = RunnerOptions(device="cpu", precision="fp32", backend="torch", compile="off")


def frames_of(images):
    return [Frame(im, source="clip.mp4", index=i, pts=i) for i, im in enumerate(images)]


def test_null_model_round_trip_is_exact_for_8_and_16_bit_and_gray():
    """Integers -> model range -> back: an identity (RGB) model gives every frame back bit for bit."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),
              rng.integers(0, 65536, (20, 31, 3), dtype=np.uint16),
              rng.integers(0, 256, (16, 16, 1), dtype=np.uint8)]
    runner = Runner(NullModel(), FP32)
    for image, (_, out) in zip(images, runner.run(frames_of(images))):
        assert out.dtype == image.dtype and out.shape == image.shape[:2] + (3,)
        np.testing.assert_array_equal(out, np.broadcast_to(image, out.shape))  # gray: repeated to RGB


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_output_conversion_in_place_and_through_numpy_equals_torch(layout):
    """The runner's conversion back (in place on the model's output, uint8 through numpy on the CPU)
    gives torch's own rounding (half to even) and clamping, value for value, ties included."""
    from frametrans.engine import transforms

    g = torch.Generator().manual_seed(0)
    y = (torch.rand(2, 3, 9, 14, generator=g) * 2.4 - 1.2).contiguous(memory_format=layout)
    y[0, 0, 0, :6] = torch.tensor([-1.0, 1.0, 1 / 255 - 1, 2 / 255 - 1, 3 / 255 - 1, 0.0])  # x.5 ties
    expected = y.sub(-1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    kept = y.clone()
    pixels = transforms.from_model_range(kept, (-1.0, 1.0), 255.0)
    assert torch.equal(kept, y)  # the default keeps its input
    owned = y.clone()
    in_place = transforms.from_model_range(owned, (-1.0, 1.0), 255.0, in_place=True)
    assert in_place.data_ptr() == owned.data_ptr() and torch.equal(in_place, pixels)
    out = transforms.pixels_to_integers(in_place, np.dtype(np.uint8))
    assert out.dtype == torch.uint8 and out.shape == (2, 9, 14, 3)
    assert torch.equal(out, expected)
    wide = transforms.pixels_to_integers(transforms.from_model_range(y, (-1.0, 1.0), 65535.0), np.dtype(np.uint16))
    assert wide.dtype == torch.int32 and int(wide.max()) == 65535 and int(wide.min()) == 0


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("value_range", [(-1.0, 1.0), (0.0, 1.0)])
@pytest.mark.parametrize("size", [(11, 17), (64, 96)])
def test_output_to_bytes_in_one_cast_equals_torch(layout, value_range, size):
    """The CPU shortcut for 8-bit outputs (scaled and clamped in place, rounded and cast by OpenCV)
    gives the bytes of from_model_range + pixels_to_integers: ties round half to even, values far
    outside the range (beyond int32 once scaled) clamp to 0 and 255, in both memory layouts; rows
    short enough for OpenCV's scalar loop and long enough for its vector loop."""
    from frametrans.engine import transforms

    lo, hi = value_range
    g = torch.Generator().manual_seed(2)
    y = torch.rand(3, 3, *size, generator=g) * (hi - lo) * 1.3 + lo - 0.15 * (hi - lo)
    ties = (torch.randint(0, 255, y.shape, generator=g).float() + 0.5) * ((hi - lo) / 255.0) + lo
    y = torch.where(torch.rand(y.shape, generator=g) < 0.3, ties, y)
    y[0, 0, 0, :4] = torch.tensor([1e12, -1e12, 3e9, -3e9])
    y = y.contiguous(memory_format=layout)
    expected = transforms.pixels_to_integers(transforms.from_model_range(y, value_range, 255.0), np.dtype(np.uint8))
    got = transforms.model_output_to_bytes(y.clone(memory_format=torch.preserve_format), value_range)
    assert got.dtype == torch.uint8 and got.shape == (3, *size, 3)
    assert torch.equal(got, expected)
    assert got[0, 0, :4, 0].tolist() == [255, 0, 255, 0]
    assert transforms.model_output_to_bytes(y[:, :, :, ::2], value_range) is None  # strided: not for it


@pytest.mark.parametrize("value_range", [(-1.0, 1.0), (0.0, 1.0), (-0.5, 2.0)])
def test_byte_table_lookup_equals_the_arithmetic(value_range):
    """uint8 -> model range by table lookup: the bits of the cast, multiply and add it replaces, in
    both layouts, also for frames larger than one lookup block; other layouts are left to them."""
    from frametrans.engine import transforms

    lo, hi = value_range
    for shape in [(2, 3, 7, 10), (1, 3, 300, 500)]:
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
        expected = x.to(torch.float32).mul_((hi - lo) / 255.0).add_(lo)
        for layout in (torch.contiguous_format, torch.channels_last):
            got = transforms.bytes_to_model_range(x.contiguous(memory_format=layout), value_range)
            assert got.is_contiguous(memory_format=layout) and torch.equal(got, expected)
    assert transforms.bytes_to_model_range(x[:, :, ::2], value_range) is None
    assert transforms.bytes_to_model_range(x.to(torch.int32), value_range) is None


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype,top", [(torch.uint8, 255), (torch.int32, 65535)])
def test_input_conversion_through_numpy_equals_torch_and_keeps_the_layout(layout, dtype, top):
    """Integers -> model range on the CPU (cast by numpy) gives torch's own cast, bit for bit, in
    the input's memory layout."""
    from frametrans.engine.runner import _to_model_range

    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, top + 1, (2, 3, 7, 10), generator=g).to(dtype).contiguous(memory_format=layout)
    got = _to_model_range(x, (-1.0, 1.0), float(top))
    assert got.dtype == torch.float32 and got.stride() == x.stride()
    assert torch.equal(got, x.to(torch.float32).mul_(2.0 / top).add_(-1.0))
    strided = x[:, :, :, ::3]  # no table lookup for this layout: the numpy cast
    assert torch.equal(_to_model_range(strided, (-1.0, 1.0), float(top)),
                       strided.to(torch.float32).mul_(2.0 / top).add_(-1.0))


def test_cpu_runner_converts_8_bit_frames_by_table_and_one_cast(monkeypatch):
    """On the CPU the runner takes the one-pass conversions for 8-bit frames (uint8 -> floats by
    table, floats -> uint8 in one cast), and its pictures equal the arithmetic path's."""
    from frametrans.engine import transforms

    calls = {"in": 0, "out": 0}
    lookup, cast = transforms.bytes_to_model_range, transforms.model_output_to_bytes

    def counted(name, fn):
        def wrapper(*args):
            calls[name] += 1
            return fn(*args)
        return wrapper

    images = smooth_images(3, 24, 40, seed=5)
    model = tiny_model("resnet").eval()
    monkeypatch.setattr(transforms, "bytes_to_model_range", counted("in", lookup))
    monkeypatch.setattr(transforms, "model_output_to_bytes", counted("out", cast))
    fast = Runner(model, FP32)(images)
    assert calls["in"] >= 1 and calls["out"] >= 1
    monkeypatch.setattr(transforms, "bytes_to_model_range", lambda *a: None)
    monkeypatch.setattr(transforms, "model_output_to_bytes", lambda *a: None)
    slow = Runner(model, FP32)(images)
    for a, b in zip(fast, slow):
        assert a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)


def test_null_model_gray_round_trip_without_channels_last():
    """A model that hands back its input: a gray frame expanded to RGB (three channels on one
    memory location, not copied without channels_last) comes back exact, not written in place."""
    import dataclasses

    image = np.random.default_rng(2).integers(0, 256, (16, 18, 1), dtype=np.uint8)
    runner = Runner(NullModel(), dataclasses.replace(FP32, channels_last=False))
    out = runner([image])[0]
    np.testing.assert_array_equal(out, np.broadcast_to(image, (16, 18, 3)))


def test_run_keeps_the_order_and_the_frame_objects_across_sizes():
    """Frames of other sizes break a batch; whatever the batching, every frame comes out once, in
    order, with its own object (its metadata) and its own size."""
    sizes = [(40, 52), (40, 52), (33, 47), (40, 52), (40, 52), (40, 52), (64, 24)]
    images = [smooth_images(1, h, w, seed=i)[0] for i, (h, w) in enumerate(sizes)]
    frames = frames_of(images)
    runner = Runner(tiny_model("unet"), RunnerOptions(**{**FP32.__dict__, "batch_size": 2}))
    got = list(runner.run(iter(frames)))
    assert [f for f, _ in got] == frames
    assert [o.shape[:2] for _, o in got] == sizes


def test_batches_give_the_pictures_of_frames_run_alone():
    model = tiny_model("resnet")
    images = smooth_images(5, 40, 52)
    batched = [o for _, o in Runner(model, RunnerOptions(**{**FP32.__dict__, "batch_size": 4})).run(frames_of(images))]
    alone = [Runner(model, RunnerOptions(**{**FP32.__dict__, "batch_size": 1}))([im])[0] for im in images]
    for a, b in zip(batched, alone):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_batch_size_option_is_the_largest_forward():
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def forward(self, x):
            calls.append(x.shape[0])
            return self.inner(x)

    model = Counting(tiny_model("resnet"))
    runner = Runner(model, RunnerOptions(**{**FP32.__dict__, "batch_size": 3}))
    calls.clear()
    out = list(runner.run(frames_of(smooth_images(7, 24, 32))))
    assert len(out) == 7
    assert max(calls) <= 3 and sum(c for c in calls if c <= 3) >= 7


def test_call_on_a_list_equals_run():
    model = tiny_model("unet")
    images = smooth_images(3, 40, 52)
    runner = Runner(model, FP32)
    listed = runner(images)
    streamed = [o for _, o in runner.run(frames_of(images))]
    assert all(np.array_equal(a, b) for a, b in zip(listed, streamed))
