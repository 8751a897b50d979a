"""The working folder of a segmented video job, and its manifest: what lets a killed job resume.

A video job writes ``clip.mp4`` as closed segments in ``clip.partial/`` (one part file per segment
and output variant) and keeps ``clip.partial/manifest.json`` up to date, replaced atomically after
each segment is closed::

    {"format": 1, "output": "clip.mp4", "outputs": ["clip.mp4"], "source": "/videos/clip.mp4",
     "segment_seconds": 10.0,
     "settings": {...},            # what changes the pixels: model weights, options, codec
     "input": {...},               # which file: size in bytes, frame size, duration, streams
     "time_base": "1/12800", "origin": 0,
     "parts": [{"index": 0, "first_pts": 0, "last_pts": 126976, "frames": 250,
                "tail_pts": [...]}, ...],
     "complete": false}

A part is listed only once every variant's file of it is closed and renamed into place; anything
else in the folder (a part being written when the process died) is deleted on resume. No torch here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, List, Optional

from frametrans.atomic import atomic_write_text

log = logging.getLogger("frametrans")

FORMAT = 1
MANIFEST = "manifest.json"
#: Timestamps of the last frames of a part kept in the manifest: a resumed ``--temporal`` run runs
#: that many frames before the cut through the model again, to warm the stabilizer up.
TAIL = 16


def work_folder(dst: Path) -> Path:
    """The working folder of the job writing ``dst``: ``clip.mp4`` -> ``clip.partial/``."""
    return dst.with_name(dst.stem + ".partial")


def partial_file(dst: Path) -> Path:
    """The playable file of an interrupted job's part done: ``clip.mp4`` -> ``clip.partial.mp4``."""
    return dst.with_name(dst.stem + ".partial" + dst.suffix)


def part_name(variant_dst: Path, index: int, suffix: str) -> str:
    """File name of part ``index`` of one output variant, e.g. ``clip_style1.00003.mp4``."""
    return f"{variant_dst.stem}.{index:05d}{suffix}"


@dataclass
class Part:
    """A closed segment: every variant's part file of it is complete.

    first_pts/last_pts: the source timestamps (``Manifest.time_base``) of its first and last frame.
    tail_pts: the timestamps of its last frames (at most :data:`TAIL`), for warming up a resume.
    """

    index: int
    first_pts: int
    last_pts: int
    frames: int
    tail_pts: List[int] = field(default_factory=list)


@dataclass
class Manifest:
    """The state of one segmented job (see the module docstring)."""

    output: str
    segment_seconds: float
    settings: Dict[str, Any]
    input: Dict[str, Any]
    outputs: List[str] = field(default_factory=list)  # the variants' file names (MUNIT styles)
    source: str = ""  # the input's path, for `frametrans join`
    time_base: str = ""
    origin: Optional[int] = None
    parts: List[Part] = field(default_factory=list)
    complete: bool = False
    format: int = FORMAT
    #: a video split by Ray at keyframes: each segment's [start, end) source pts (None: open); its
    #: parts may close in any order. None for a local job (parts close in order).
    ray_plan: Optional[List[List[Optional[int]]]] = None

    def contiguous(self) -> "Manifest":
        """This manifest as a local job's: the parts 0, 1, ... that follow each other (a Ray job's
        parts may have gaps), no Ray plan. A local resume goes on after them."""
        parts = sorted(self.parts, key=lambda p: p.index)
        keep = [p for i, p in enumerate(parts) if all(q.index == j for j, q in enumerate(parts[:i + 1]))]
        return Manifest(**{**asdict(self), "parts": keep, "ray_plan": None, "complete": False})

    @property
    def frames_done(self) -> int:
        return sum(p.frames for p in self.parts)

    @property
    def last_pts(self) -> Optional[int]:
        return self.parts[-1].last_pts if self.parts else None

    def progress(self) -> str:
        """``"120 of 300 frames"`` (or ``"120 frames"`` when the input's count is unknown)."""
        total = self.input.get("frames")
        return f"{self.frames_done} of {total} frames" if total else f"{self.frames_done} frames"

    def tb(self) -> Optional[Fraction]:
        return Fraction(self.time_base) if self.time_base else None

    def save(self, folder: Path) -> None:
        """Replace ``folder/manifest.json`` atomically (readers see the old or the new one)."""
        atomic_write_text(folder / MANIFEST, json.dumps(asdict(self), indent=1, sort_keys=True))

    @classmethod
    def load(cls, folder: Path) -> Optional["Manifest"]:
        """The manifest in ``folder``; None when there is none, or it is unreadable or of another
        format (the folder is then started over)."""
        try:
            data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                return None
            manifest = cls(**data)
            manifest.parts = [Part(**p) for p in data.get("parts", [])]
            return manifest
        except (OSError, ValueError, TypeError):
            return None

    def part_files(self, folder: Path, variant_dsts: List[Path], suffix: str) -> List[List[Path]]:
        """The closed part files, per variant, in order."""
        return [[folder / part_name(d, p.index, suffix) for p in self.parts] for d in variant_dsts]


def differences(saved: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
    """``"name (saved -> now)"`` for each setting that differs, in a stable order."""
    out = []
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            out.append(f"{key} ({_show(saved.get(key))} -> {_show(now.get(key))})")
    return out


def _show(value: Any) -> str:
    if isinstance(value, str) and len(value) > 16:
        return value[:12] + "..."
    return "unset" if value is None else str(value)


def input_identity(src: Path, info) -> Dict[str, Any]:
    """What identifies an input video (``info``: its :class:`frametrans.io.video.VideoInfo`)."""
    return {"bytes": os.stat(src).st_size, "width": info.width, "height": info.height,
            "frames": info.frames, "duration": None if info.duration is None else round(info.duration, 6),
            "time_base": str(info.time_base), "codec": info.codec, "audio": info.has_audio}


def clean_folder(folder: Path, keep: List[Path]) -> None:
    """Delete everything in ``folder`` but the manifest and ``keep`` (what a killed run left)."""
    keep_names = {MANIFEST, *(p.name for p in keep)}
    for p in folder.iterdir():
        if p.name in keep_names:
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def keep_or_remove(folder: Path, manifest: Optional[Manifest]) -> None:
    """After a job stopped before its end: ``folder`` stays for ``--resume`` when it holds closed
    parts (a log line says so), else it goes."""
    if manifest is not None and manifest.parts:
        log.warning("%s done are kept in %s; rerun with --resume to continue from there",
                    manifest.progress(), folder)
    else:
        shutil.rmtree(folder, ignore_errors=True)
