"""How image decoders and encoders fare beside busy Python threads (the GIL), one table.

    python examples/gil_pressure.py [--size 1280x720] [--seconds 2]

A folder job decodes and encodes on pools of threads while other threads run Python (the runner,
the pools' own bookkeeping). A codec call that gives the GIL back once costs little; a decoder that
takes it back for every piece of the file waits for the interpreter each time (up to the switch
interval, 5 ms) and slows down by orders of magnitude. This script measures each reader and writer
frametrans uses, alone and beside one thread that only runs Python, on one picture per format
(a smooth synthetic frame written as frametrans writes it). Each row: calls per second alone,
beside the busy thread, and the ratio (1.0: unaffected).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, List, Tuple

import cv2
import numpy as np
from PIL import Image

from frametrans.io.images import read_image, write_image  # no torch: this script never needs it


def rate(call: Callable[[], object], seconds: float, busy: bool) -> float:
    """Calls of ``call`` per second over ``seconds``, with or without a thread spinning in Python."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin, daemon=True)
    if busy:
        spinner.start()
    n, start = 0, time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            call()
            n += 1
    finally:
        stop.set()
        if busy:
            spinner.join()
    return n / (time.perf_counter() - start)


def smooth_frame(width: int, height: int) -> np.ndarray:
    """Colour gradients with a little noise, [H, W, 3] uint8 (what ``frametrans bench`` codes)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([127 + 120 * np.sin(xx / 23), 127 + 120 * np.sin(yy / 17), 127 + 120 * np.sin((xx + yy) / 31)], -1)
    return np.clip(rgb + np.random.default_rng(0).normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)


def cases(folder: Path, width: int, height: int) -> List[Tuple[str, Callable[[], object]]]:
    """(name, call) for each reader and writer, on one frame of ``width`` x ``height``."""
    frame = smooth_frame(width, height)
    png, jpg = write_image(folder / "f.png", frame), write_image(folder / "f.jpg", frame)
    png_bytes = np.fromfile(png, dtype=np.uint8)

    def pillow_png() -> object:
        with Image.open(png) as im:
            return np.asarray(im.convert("RGB"))

    def pillow_jpeg_encode() -> object:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=95, subsampling=0)
        return buffer

    return [
        ("read PNG: frametrans read_image", lambda: read_image(png)),
        ("read PNG: Pillow alone", pillow_png),
        ("read PNG: cv2.imdecode alone", lambda: cv2.imdecode(png_bytes, cv2.IMREAD_COLOR)),
        ("read JPEG: frametrans read_image", lambda: read_image(jpg)),
        ("write PNG: frametrans write_image", lambda: write_image(folder / "o.png", frame)),
        ("write JPEG: frametrans write_image", lambda: write_image(folder / "o.jpg", frame)),
        ("write JPEG: Pillow encoder alone", pillow_jpeg_encode),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the frame")
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per row and mode")
    args = parser.parse_args()
    if args.seconds <= 0:
        parser.error(f"--seconds must be > 0, got {args.seconds}")
    width, height = (int(v) for v in args.size.lower().split("x"))
    cv2.setNumThreads(1)
    print(f"| {width}x{height} | calls/s alone | beside a busy Python thread | ratio |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, call in cases(Path(tmp), width, height):
            call()  # warm up
            alone, busy = rate(call, args.seconds, False), rate(call, args.seconds, True)
            ratio = f"{busy / alone:.2f}x" if alone else "-"
            print(f"| {name} | {alone:.1f} | {busy:.1f} | {ratio} |", flush=True)


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # the table piped into `head`: stop quietly
        sys.stderr.close()
