"""Benchmarks behind ``frametrans bench`` and ``examples/bench_predict.py``: library code, no Click,
progress lines through a ``log`` callable (stderr by default), results as plain dicts.

- :mod:`~frametrans.bench.apply`: model-only against end-to-end throughput and the reference loop
  (pytorch-CycleGAN-and-pix2pix ``test.py``), in one process;
- :mod:`~frametrans.bench.processes`: whole processes, ``frametrans apply`` against the reference
  loop run as ``python -m frametrans.bench reference`` (:mod:`~frametrans.bench.__main__`);
- :mod:`~frametrans.bench.tiling`: tiled against untiled inference of one large frame;
- :mod:`~frametrans.bench.compile`: cold and warm compilation, compiled against eager, break-even;
- :mod:`~frametrans.bench.pipeline`: the host side's ceiling: the apply path with the null model
  (:class:`~frametrans.bench.models.NullModel`) against the raw codec rate, in one run;
- :mod:`~frametrans.bench.training`: training steps/s of one method through the real trainer;
- :mod:`~frametrans.bench.gpu`: the whole GPU table in one call (the benchmarks above, fixed sizes);
- :mod:`~frametrans.bench.predict`: the Moving MNIST next-frame protocol (train with the frametrans
  trainer or load a predictor, score it and two baselines on the fixed test set);
- :mod:`~frametrans.bench.common` and :mod:`~frametrans.bench.models`: peak memory, synthetic
  frames, videos and folders, FLOP counts, device peaks and names; seeded random checkpoints.

Models given by architecture name (``resnet``, ``unet``, with config overrides) are randomly
initialised with a fixed seed (``init_weights``, as upstream) and saved with
:func:`frametrans.checkpoint.save_model`, so every path loads the same file.
"""

from frametrans.bench.apply import ApplyBench, bench_apply, format_apply, reference_loop
from frametrans.bench.common import (
    Log,
    PeakMemory,
    cpu_name,
    device_name,
    device_peak_flops,
    make_folder,
    make_frames,
    make_video,
    model_flops,
    rss_bytes,
)
from frametrans.bench.compile import CompileBench, bench_compile, format_compile
from frametrans.bench.models import NullModel, describe_model, null_translator, prepare_model
from frametrans.bench.pipeline import PipelineBench, bench_pipeline, format_pipeline
from frametrans.bench.predict import (
    DEFAULT_TEST_SIZE,
    BenchOptions,
    all_black_predictor,
    copy_last_predictor,
    evaluate,
    format_table,
    model_predictor,
    run_benchmark,
)
from frametrans.bench.processes import ProcessBench, bench_processes, format_processes
from frametrans.bench.tiling import TilingBench, bench_tiling, format_tiling

__all__ = [
    # apply, processes, tiling, compile
    "ApplyBench", "bench_apply", "format_apply", "reference_loop",
    "ProcessBench", "bench_processes", "format_processes",
    "TilingBench", "bench_tiling", "format_tiling",
    "CompileBench", "bench_compile", "format_compile",
    "PipelineBench", "bench_pipeline", "format_pipeline", "NullModel", "null_translator",
    # shared helpers
    "Log", "PeakMemory", "rss_bytes", "make_frames", "make_video", "make_folder", "model_flops",
    "device_peak_flops", "cpu_name", "device_name", "prepare_model", "describe_model",
    # the Moving MNIST next-frame protocol
    "BenchOptions", "run_benchmark", "format_table", "evaluate", "model_predictor",
    "copy_last_predictor", "all_black_predictor", "DEFAULT_TEST_SIZE",
]
