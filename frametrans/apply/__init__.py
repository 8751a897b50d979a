"""Apply a generator to images, folders, videos and raw streams: the library behind ``frametrans apply``.

    from frametrans.apply import Translator, apply_paths
    t = Translator.load("cyclegan")                      # bundled name or checkpoint path
    report = apply_paths(["clip.mp4"], "out.mp4", t)     # same for images, folders, lists

Data flow per input: readers (a pool of threads for still images, a decode thread for a video)
yield frames in order, the runner batches and runs them, writers (a pool for images, one encoder
thread per video output) encode; outputs are written under a temporary name and renamed when
complete (a video as closed segments in ``NAME.partial/``, joined at the end). The queues between the threads are bounded in frames and, on the CPU,
in bytes (a share of ``--max-memory``).

One concept per module:

- :mod:`~frametrans.apply.translator`: the model and its output variants (MUNIT styles), run with
  per-frame failures contained;
- :mod:`~frametrans.apply.jobs`: planning: inputs to outputs, names, collisions, overwrites (no torch);
- :mod:`~frametrans.apply.report`: what a run did; failure and interrupt containment;
- :mod:`~frametrans.apply.images`, :mod:`~frametrans.apply.video`, :mod:`~frametrans.apply.stream`:
  still and animated images, videos (the Ray segments run the same functions), raw/y4m pipes;
- :mod:`~frametrans.apply.paths`: :func:`apply_paths`, which runs the planned jobs.
"""

from frametrans.apply.images import prepare_frame
from frametrans.apply.jobs import Job, OutputOptions, check_outputs, plan_jobs, variant_path
from frametrans.apply.paths import apply_paths
from frametrans.apply.report import Report
from frametrans.apply.stream import apply_stream, check_stream_size
from frametrans.apply.translator import FrameError, Translator, Variant, run_variants

__all__ = [
    "FrameError", "Job", "OutputOptions", "Report", "Translator", "Variant", "apply_paths",
    "apply_stream", "check_outputs", "check_stream_size", "plan_jobs", "prepare_frame",
    "run_variants", "variant_path",
]
