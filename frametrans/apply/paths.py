"""``apply_paths``: files and folders in, outputs written, a :class:`Report` back."""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple

from frametrans.apply.images import apply_animation, apply_images
from frametrans.apply.jobs import OutputOptions, check_outputs, plan_jobs
from frametrans.apply.report import Report, Stop, progress_bar, run_job
from frametrans.apply.translator import Translator
from frametrans.apply.video import apply_video

log = logging.getLogger("frametrans")


def apply_paths(inputs: Sequence[str], output: str, translator: Translator,
                opts: Optional[OutputOptions] = None) -> Report:
    """Run every input through ``translator``; one bad file does not stop the others.

    Still images go first, batched together; then each video and animated image in turn.
    """
    opts = opts or OutputOptions()
    opts.validate()
    report = Report()
    problems: List[Tuple[str, str]] = []
    jobs = plan_jobs(inputs, output, opts, problems)
    check_outputs(jobs, translator, opts)
    for src, msg in problems:
        report.fail(src, msg)
    stop = Stop()
    progress = progress_bar(len(jobs), "files", opts.quiet) if len(jobs) > 1 else None
    image_jobs = [j for j in jobs if j.kind == "image"]
    other_jobs = [j for j in jobs if j.kind != "image"]
    try:
        if image_jobs:
            apply_images(image_jobs, translator, opts, report, progress, stop, io_threads=opts.io_threads)
        for j in other_jobs:
            if stop:
                report.not_done.append(j.src)
                continue
            fn = apply_video if j.kind == "video" else apply_animation
            run_job(lambda: fn(j, translator, opts, report), j, report, stop)
            if progress is not None:
                progress.update(1)
    finally:
        if progress is not None:
            progress.close()
    if stop:
        report.stopped = stop.reason
        log.error("stopped: %s; %d input(s) not processed (rerun with --skip-existing to finish)",
                  stop.reason, len(report.not_done))
    return report
