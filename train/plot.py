"""Loss curves as a PNG, drawn with OpenCV (no matplotlib): one small panel per series.

Each panel has its own y range (GAN losses near 1 and an L1 term weighted 100 do not share an
axis), the raw values in light colour and a moving average on top.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Sequence, Union

import cv2
import numpy as np

from frametrans.atomic import atomic_write_bytes

PANEL_W, PANEL_H, COLS = 420, 240, 3
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 62, 12, 28, 26
SKIP_KEYS = ("step", "time")


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.2e}"
    return f"{v:.3g}"


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    pad = np.concatenate([np.full(window - 1, y[0]), y])
    return np.convolve(pad, kernel, mode="valid")


def _panel(title: str, steps: np.ndarray, values: np.ndarray) -> np.ndarray:
    img = np.full((PANEL_H, PANEL_W, 3), 255, np.uint8)
    x0, x1 = MARGIN_L, PANEL_W - MARGIN_R
    y0, y1 = MARGIN_T, PANEL_H - MARGIN_B
    cv2.rectangle(img, (x0, y0), (x1, y1), (180, 180, 180), 1)
    cv2.putText(img, title, (x0, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    ok = np.isfinite(values)
    steps, values = steps[ok], values[ok]
    if len(values) == 0:
        return img
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * (abs(lo) + 1e-3), hi + 0.5 * (abs(hi) + 1e-3)
    s_lo, s_hi = float(steps.min()), float(max(steps.max(), steps.min() + 1))

    def to_px(s: np.ndarray, v: np.ndarray) -> np.ndarray:
        px = x0 + (s - s_lo) / (s_hi - s_lo) * (x1 - x0)
        py = y1 - (v - lo) / (hi - lo) * (y1 - y0)
        return np.stack([px, py], 1).round().astype(np.int32)

    for frac in (0.0, 0.5, 1.0):  # y labels and grid
        v = lo + frac * (hi - lo)
        y = int(round(y1 - frac * (y1 - y0)))
        cv2.line(img, (x0, y), (x1, y), (225, 225, 225), 1)
        cv2.putText(img, _fmt(v), (2, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (80, 80, 80), 1, cv2.LINE_AA)
    for s, anchor in ((s_lo, x0), (s_hi, x1 - 40)):
        cv2.putText(img, f"{int(s)}", (anchor, PANEL_H - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                    (80, 80, 80), 1, cv2.LINE_AA)
    pts = to_px(steps, values)
    cv2.polylines(img, [pts], False, (235, 190, 150), 1, cv2.LINE_AA)
    smooth = _smooth(values, max(1, len(values) // 50))
    cv2.polylines(img, [to_px(steps, smooth)], False, (170, 80, 20), 2, cv2.LINE_AA)
    return img


def plot_losses(records: Sequence[Dict[str, float]], path: Union[str, os.PathLike]) -> None:
    """Write a PNG with one panel per logged series (losses and lr) against the step."""
    keys: List[str] = []
    for r in records:
        keys += [k for k in r if k not in SKIP_KEYS and k not in keys]
    if not records or not keys:
        return
    steps = np.array([r["step"] for r in records], dtype=np.float64)
    panels = []
    for k in keys:
        vals = np.array([float(r.get(k, math.nan)) for r in records], dtype=np.float64)
        panels.append(_panel(k, steps, vals))
    rows = math.ceil(len(panels) / COLS)
    sheet = np.full((rows * PANEL_H, min(len(panels), COLS) * PANEL_W, 3), 255, np.uint8)
    for i, p in enumerate(panels):
        r, c = divmod(i, COLS)
        sheet[r * PANEL_H : (r + 1) * PANEL_H, c * PANEL_W : (c + 1) * PANEL_W] = p
    ok, data = cv2.imencode(".png", sheet[..., ::-1])  # RGB -> BGR for OpenCV
    if ok:
        atomic_write_bytes(path, data.tobytes())
