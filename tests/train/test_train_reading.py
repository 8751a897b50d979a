"""Training data read through frametrans.io: what ``frametrans apply`` sees, training sees (EXIF
orientation, rotation metadata, 16-bit, palette, gray), with the io extension lists, and video
frames decoded once per run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

import av
import numpy as np
import pytest
import torch
from PIL import Image

from frametrans.io.images import IMAGE_EXTENSIONS, read_image
from frametrans.io.video import VIDEO_EXTENSIONS, iter_video_frames
from frametrans.train import reading
from frametrans.train.datasets import (Augment, UnpairedDataset, domain_source, find_domains, load_sequences,
                                       to_tensor)
from frametrans.train.reading import TRAIN_IMAGE_EXTENSIONS, DataError, decode_video, list_images, read_rgb


def _picture(h: int = 24, w: int = 40) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 6, yy * 10, (xx + yy) * 3], -1).clip(0, 255).astype(np.uint8)


def _clip(path: Path, h: int = 24, w: int = 40, n: int = 6, rotation: Any = None) -> List[np.ndarray]:
    images = [np.roll(_picture(h, w), 3 * i, axis=1) for i in range(n)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10, options={"preset": "ultrafast", "crf": "10"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image)))
        container.mux(stream.encode())
    return images


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pic = _picture()
    im = Image.fromarray(pic)
    exif = im.getexif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to display
    im.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    img = read_rgb(tmp_path / "phone.jpg")
    assert img.shape == (40, 24, 3)  # upright, as apply reads it
    np.testing.assert_array_equal(img, read_image(tmp_path / "phone.jpg").image)


def test_rotated_video_trains_upright(tmp_path: Path) -> None:
    images = _clip(tmp_path / "phone.mp4", rotation=90)
    frames = decode_video(tmp_path / "phone.mp4")
    assert len(frames) == 6 and frames[0].shape == (40, 24, 3)  # turned as apply turns it
    applied = next(iter_video_frames(tmp_path / "phone.mp4")).image
    np.testing.assert_array_equal(frames[0], applied)
    assert np.abs(frames[0].astype(int) - np.rot90(images[0], 1)).mean() < 4
    seqs = load_sequences(tmp_path / "phone.mp4", channels=3, size=None)
    assert seqs[0].shape == (6, 40, 24, 3)


def test_16_bit_palette_and_gray_images(tmp_path: Path) -> None:
    ramp = (np.arange(64, dtype=np.uint32)[None, :].repeat(8, 0) * 1040).astype(np.uint16)  # 0..65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # 16-bit gray
    deep = read_rgb(tmp_path / "deep.png")
    assert deep.dtype == np.uint16 and deep.shape == (8, 64, 3)
    t = to_tensor(deep)
    assert t.dtype == torch.float32 and float(t.min()) == -1.0 and float(t.max()) == pytest.approx(65520 / 32767.5 - 1)
    assert reading.to_uint8(np.array([0, 257, 65535], np.uint16)).tolist() == [0, 1, 255]
    Image.fromarray(_picture()).convert("P", palette=Image.ADAPTIVE, colors=16).save(tmp_path / "pal.png")
    pal = read_rgb(tmp_path / "pal.png")
    assert pal.shape == (24, 40, 3) and pal.dtype == np.uint8 and len(np.unique(pal.reshape(-1, 3), axis=0)) <= 16
    Image.fromarray(_picture()[..., 0]).save(tmp_path / "gray.png")
    gray = read_rgb(tmp_path / "gray.png")
    assert gray.shape == (24, 40, 3) and (gray[..., 0] == gray[..., 2]).all()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(DataError, match="broken.png"):
        read_rgb(tmp_path / "broken.png")


def test_extension_lists_come_from_frametrans_io(tmp_path: Path) -> None:
    assert reading.VIDEO_EXTENSIONS is VIDEO_EXTENSIONS
    assert TRAIN_IMAGE_EXTENSIONS == IMAGE_EXTENSIONS - VIDEO_EXTENSIONS  # GIF trains as a video
    Image.fromarray(_picture()).save(tmp_path / "b10.jfif", format="JPEG")  # only apply knew .jfif
    for name in ("b2.png", ".hidden.png", "anim.gif"):
        Image.fromarray(_picture()).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["b2.png", "b10.jfif"]  # natural order, hidden skipped
    (tmp_path / "vids").mkdir()
    _clip(tmp_path / "vids" / "cam.ts")  # only apply knew .ts
    source = domain_source(tmp_path / "vids", Augment(16, 16, resize="none"), 1, None)
    assert len(source) == 6  # a .ts video: a format apply reads, training reads too


def test_video_frames_are_decoded_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clip(tmp_path / "a.mp4")
    _clip(tmp_path / "b.mp4")
    calls: List[str] = []
    real = reading.iter_video_frames

    def counting(path: Any) -> Any:
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(reading, "iter_video_frames", counting)
    augment = Augment(24, 16, resize="short-side")
    a, b = find_domains(None, tmp_path / "a.mp4", tmp_path / "b.mp4", augment, frame_every=2)
    ds = UnpairedDataset(a, b, augment, seed=0)
    assert ds.epoch_size == 3
    items = [ds[k] for k in range(4 * ds.epoch_size)]  # four epochs
    assert sorted(calls) == ["a.mp4", "b.mp4"]
    assert all(it["A"].shape == (3, 16, 16) for it in items)
    assert a.get(0).dtype == np.uint8 and a.get(0).shape[0] == 24  # held resized to the load size
