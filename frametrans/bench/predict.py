"""The Moving MNIST next-frame benchmark: train (or load) a predictor, pick the checkpoint on the
validation set, score it on the fixed test set next to two baselines, print a markdown table.

Protocol (see :mod:`frametrans.data.moving_digits`): two digits bouncing in 64x64 frames, 20 frames,
10 given -> 10 predicted, one channel in [0, 1]. Training sequences are generated on the fly from
the training digits; the validation set (seed ``VALIDATION_SEED``) uses training digits too; the
test set (seed ``TEST_SEED``, 10,000 sequences for moving-mnist, 1,000 for moving-digits) uses the
held-out digits. Scores follow OpenSTL (:func:`frametrans.metrics.openstl_metrics`): MSE and MAE
are per-frame sums; SSIM is given at data_range 1 and at the data_range 2 OpenSTL effectively uses.

Every row, the baselines included, goes through the same :func:`evaluate`:

- ``copy-last``: every predicted frame is the last context frame;
- ``all-black``: every predicted frame is zero.

Training uses the real trainer (``frametrans train predictor``, :func:`frametrans.train.trainer.train`)
in segments, with a validation score after each. Models run through a
:class:`~frametrans.engine.session.Session`. Library code: no Click, no printing except through
``log``.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from frametrans.bench.common import Log, sync, to_stderr
from frametrans.data.moving_digits import TEST_SEED, VALIDATION_SEED, Datasets, make_datasets
from frametrans.engine.padding import crop, pad_to_multiple
from frametrans.engine.session import Session
from frametrans.engine.temporal import rollout
from frametrans.metrics import MetricAccumulator, count_params, multiply_adds

__all__ = [
    "BenchOptions", "run_benchmark", "evaluate", "format_table",
    "copy_last_predictor", "all_black_predictor", "model_predictor", "DEFAULT_TEST_SIZE",
]

#: A predictor for evaluation: context [B, T*C, H, W] in [0, 1] -> [B, K*C, H, W] in [0, 1].
PredictFn = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_TEST_SIZE = {"moving-mnist": 10_000, "moving-digits": 1_000}
DEFAULT_VAL_SIZE = {"moving-mnist": 1_000, "moving-digits": 200}
TRAINERS = ("auto", "frametrans")
_OPEN_ENDED = 10**9  # iterations of a run bounded only by time


@dataclass
class BenchOptions:
    """Everything :func:`run_benchmark` needs. None means: the default of the data source.

    model: a checkpoint (path or bundled name) to evaluate instead of training one.
    train_seconds / train_steps: the training budget (at least one; both: whichever ends first).
    size, num_digits, context, horizon, digit_size: the protocol (64, 2, 10, 10, native 28; the
    trainer draws digits of the native rule, so ``digit_size`` is for evaluating a given model).
    width, depth: the predictor trained (ignored with ``model``).
    out_dir: where checkpoints go. trainer: "auto" or "frametrans", both the frametrans trainer.
    train_precision, lr_policy, workers: passed to the trainer (lr_policy None: the trainer's
    default, constant). precision: of the evaluation.
    """

    data: str = "moving-mnist"
    model: Optional[str] = None
    train_seconds: Optional[float] = None
    train_steps: Optional[int] = None
    batch_size: int = 16
    lr: float = 1e-3
    width: int = 32
    depth: int = 3
    size: int = 64
    num_digits: int = 2
    context: int = 10
    horizon: int = 10
    digit_size: Optional[int] = None
    test_size: Optional[int] = None
    val_size: Optional[int] = None
    val_every: Optional[int] = None
    eval_batch: int = 100
    device: str = "auto"
    precision: str = "fp32"
    seed: int = 0
    out_dir: str = "runs/bench_predict"
    mnist_dir: Optional[str] = None
    trainer: str = "auto"
    train_precision: str = "fp32"
    lr_policy: Optional[str] = None
    workers: int = 0
    baselines: bool = True

    def resolved_test_size(self) -> int:
        return self.test_size or DEFAULT_TEST_SIZE.get(self.data, 1000)

    def resolved_val_size(self) -> int:
        return self.val_size or DEFAULT_VAL_SIZE.get(self.data, 200)


# ---------------------------------------------------------------------------------------------
# predictors


def copy_last_predictor(channels: int, horizon: int) -> PredictFn:
    """Baseline: repeat the last context frame ``horizon`` times."""
    return lambda x: x[:, -channels:].repeat(1, horizon, 1, 1)


def all_black_predictor(channels: int, horizon: int) -> PredictFn:
    """Baseline: predict zeros."""
    return lambda x: x.new_zeros((x.shape[0], horizon * channels, *x.shape[-2:]))


def model_predictor(session: Session, horizon: int) -> PredictFn:
    """A predictor model, run by ``session`` (its device, precision and layout), as a PredictFn:
    pad, roll out ``horizon`` frames, crop; float32 out. ``x`` must be on the session's device."""
    multiple = session.source.config.contract().size_multiple

    def predict(x: torch.Tensor) -> torch.Tensor:
        with session.inference():
            xp, pads = pad_to_multiple(x, multiple, mode="reflect")
            y = rollout(session.model, session.to_model_layout(xp), horizon)
            return crop(y.float(), pads)

    return predict


def _predictor_session(model: nn.Module, device: torch.device, precision: str = "fp32") -> Session:
    """The session a predictor is evaluated in: default memory layout, as the benchmark always ran."""
    return Session(model, device, precision, channels_last=False)


# ---------------------------------------------------------------------------------------------
# evaluation


def evaluate(predict: PredictFn, sequences: Iterable[np.ndarray], context: int,
             device: torch.device) -> Dict[str, Any]:
    """Score ``predict`` on sequences float32 [b, context + horizon, C, H, W] (an iterable of
    chunks). Returns :func:`~frametrans.metrics.openstl_metrics` keys plus ``seq_per_s``
    (sequences per second of ``predict`` alone, device synchronised). The sequences need no
    gradient; a model predictor runs in its session's inference context."""
    acc = MetricAccumulator()
    seconds = 0.0
    for chunk in sequences:
        seq = torch.from_numpy(np.ascontiguousarray(chunk)).to(device)
        b, t, c, h, w = seq.shape
        x = seq[:, :context].reshape(b, context * c, h, w)
        true = seq[:, context:]
        sync(device)
        t0 = time.perf_counter()
        y = predict(x)
        sync(device)
        seconds += time.perf_counter() - t0
        acc.update(y.reshape(true.shape), true)
    out = acc.result()
    out["seq_per_s"] = acc.sequences / seconds if seconds > 0 else float("inf")
    return out


def _chunks(array: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(array), size):
        yield array[i : i + size]


# ---------------------------------------------------------------------------------------------
# the benchmark


def run_benchmark(options: Optional[BenchOptions] = None, log: Log = to_stderr, **overrides: Any
                  ) -> List[Dict[str, Any]]:
    """Run the whole protocol; returns one row per model (the predictor, then the baselines).

    Row keys: model, mse, mae, ssim, ssim_dr2, psnr, mse_per_step, params, macs_per_sample,
    seq_per_s, train_seconds, samples_seen, checkpoint, plus the data/test-set description.
    ``overrides`` replace fields of ``options`` (``run_benchmark(data="moving-digits", ...)``).
    """
    from frametrans.engine import device as devices

    opts = _replace(options or BenchOptions(), overrides)
    if opts.model is None and opts.train_seconds is None and opts.train_steps is None:
        raise ValueError("give --model, or a training budget (--train-seconds / --train-steps)")
    dev = devices.resolve_device(opts.device)
    devices.resolve_precision(opts.precision, dev)  # a precision the device lacks: refused before training
    data = make_datasets(opts.data, size=opts.size, num_digits=opts.num_digits,
                         frames=opts.context + opts.horizon,
                         digit_size=opts.digit_size or default_digit_size(opts.size),
                         mnist_dir=opts.mnist_dir)
    test_n = opts.resolved_test_size()
    log(f"data {opts.data}: {len(data.train.digits)} training / {len(data.test.digits)} test digits, "
        f"{opts.size}x{opts.size}, {opts.num_digits} digits, {opts.context} -> {opts.horizon} frames; "
        f"test set {test_n} sequences (seed {TEST_SEED}) on {dev}")
    model, train, name = _load_or_train(opts, data, dev, log)
    session = _predictor_session(model, dev, opts.precision)
    test_chunks = lambda: data.test.iter_fixed_set(test_n, TEST_SEED, opts.eval_batch)  # noqa: E731
    log(f"evaluating {name} on {test_n} test sequences")
    rows = [_score_model(session, opts, test_chunks(), name, train)]
    if opts.baselines:
        rows += _score_baselines(model.config.channels, opts, test_chunks, dev)
    for row in rows:
        row.update(data=opts.data, test_size=test_n, test_seed=TEST_SEED, device=str(dev),
                   precision=str(session.dtype).replace("torch.", ""))
    return rows


def _load_or_train(opts: BenchOptions, data: Datasets, dev: torch.device, log: Log
                   ) -> Tuple[nn.Module, Dict[str, Any], str]:
    """(model, training facts, row name): the ``model`` checkpoint, or a freshly trained predictor."""
    if opts.model is None:
        model, train = _train(opts, data, dev, log)
        return model, train, f"predictor w{opts.width} d{opts.depth}"
    from frametrans.checkpoint import load_model, read_info, resolve

    model = load_model(opts.model)
    _check_protocol(model, opts)
    train = _train_facts(read_info(resolve(opts.model)).provenance)
    train["checkpoint"] = str(resolve(opts.model))
    return model, train, Path(opts.model).stem


def _score_model(session: Session, opts: BenchOptions, chunks: Iterable[np.ndarray], name: str,
                 train: Dict[str, Any]) -> Dict[str, Any]:
    """The predictor's row: test scores, parameters, multiply-adds per sequence, training facts."""
    model = session.source
    res = evaluate(model_predictor(session, opts.horizon), chunks, opts.context, session.device)
    shape = (1, opts.context * model.config.channels, opts.size, opts.size)
    passes = -(-opts.horizon // model.config.horizon)  # rollout passes per sequence
    res.update(model=name, params=count_params(model),
               macs_per_sample=passes * multiply_adds(model, shape), **train)
    return res


def _score_baselines(channels: int, opts: BenchOptions, test_chunks: Callable[[], Iterable[np.ndarray]],
                     dev: torch.device) -> List[Dict[str, Any]]:
    """The rows of copy-last-frame and all-black, on the same test set."""
    rows = []
    for label, fn in (("copy-last-frame", copy_last_predictor(channels, opts.horizon)),
                      ("all-black", all_black_predictor(channels, opts.horizon))):
        res = evaluate(fn, test_chunks(), opts.context, dev)
        res.update(model=label, params=0, macs_per_sample=0, train_seconds=None, samples_seen=None)
        rows.append(res)
    return rows


def default_digit_size(size: int) -> Optional[int]:
    """Digits keep their 28 px in frames of 64 px and more; smaller frames scale them down (the
    rule ``frametrans train predictor`` uses for the generated sources)."""
    return None if size >= 64 else max(4, round(28 * size / 64))


def _replace(options: BenchOptions, overrides: Dict[str, Any]) -> BenchOptions:
    values = asdict(options)
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise TypeError(f"unknown benchmark option(s): {', '.join(unknown)}")
    values.update(overrides)
    return BenchOptions(**values)


def _check_protocol(model: nn.Module, opts: BenchOptions) -> None:
    cfg = model.config
    if getattr(cfg, "context", None) != opts.context or cfg.channels != 1:
        raise ValueError(
            f"model reads {getattr(cfg, 'context', '?')} frames x {getattr(cfg, 'channels', '?')} "
            f"channels; the benchmark gives {opts.context} x 1 (set --context to match)"
        )
    # a model with a shorter horizon than the protocol is rolled out autoregressively


def _train_facts(provenance: Dict[str, Any]) -> Dict[str, Any]:
    """Training time and samples seen from a checkpoint's provenance (None when not recorded)."""
    def first(*keys: str) -> Any:
        for k in keys:
            if provenance.get(k) is not None:
                return provenance[k]
        return None

    samples = first("samples_seen", "samples")
    steps = first("steps", "step")
    batch = first("batch_size") or (provenance.get("options") or {}).get("batch_size")
    if samples is None and steps is not None and batch is not None:
        samples = int(steps) * int(batch)
    return {"train_seconds": first("train_seconds", "seconds", "training_seconds"),
            "samples_seen": samples}


# ---------------------------------------------------------------------------------------------
# training: the frametrans trainer, in segments, the best checkpoint on the validation set


def _train(opts: BenchOptions, data: Datasets, dev: torch.device, log: Log) -> Tuple[nn.Module, Dict[str, Any]]:
    """Train a predictor; returns (model with the validation-best weights, training facts)."""
    if opts.trainer not in TRAINERS:
        hint = " (the built-in training loop is gone)" if opts.trainer == "builtin" else ""
        raise ValueError(f"trainer {opts.trainer!r}{hint}: use auto or frametrans, the frametrans trainer")
    if opts.digit_size and opts.digit_size != default_digit_size(opts.size):
        raise ValueError(f"digit_size {opts.digit_size}: the frametrans trainer draws digits of "
                         f"{default_digit_size(opts.size) or 28} px at size {opts.size}; leave digit_size unset")
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return _train_with_trainer(opts, data, out, dev, log)


def _trainer_options(opts: BenchOptions, dev: torch.device, segment: int) -> Dict[str, Any]:
    """The ``frametrans train predictor`` options of this benchmark (CLI names, underscored)."""
    o: Dict[str, Any] = dict(
        data=opts.data, size=opts.size, channels=1, context=opts.context, horizon=opts.horizon,
        width=opts.width, depth=opts.depth, batch_size=opts.batch_size, lr=opts.lr,
        num_digits=opts.num_digits, mnist_dir=opts.mnist_dir, device=str(dev),
        precision=opts.train_precision, seed=opts.seed, workers=opts.workers,
        save_every=10**9, sample_every=segment, val_every=segment, log_every=50, quiet=True,
    )
    if opts.lr_policy:
        o["lr_policy"] = opts.lr_policy
    return o


def _cli_line(o: Dict[str, Any], run_dir: Path, iters: int) -> str:
    skip = {"quiet", "save_every", "sample_every", "log_every"}
    args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in o.items() if k not in skip and v is not None)
    return f"frametrans train predictor {args} --iters {iters} -o {run_dir}"


@dataclass
class _Progress:
    """Where a segmented training run stands, and the best validation score so far."""

    iters: int  # the length of the trainer's schedule
    step: int = 0
    elapsed: float = 0.0  # training seconds (validation excluded)
    rate: Optional[float] = None  # steps per second of the last segment
    best: Optional[float] = None
    best_step: int = 0
    history: List[Dict[str, float]] = field(default_factory=list)

    def next_target(self, opts: BenchOptions, segment: int) -> int:
        """The step the next segment ends at: a segment on, within the step budget, and within
        what the time budget leaves at the measured speed."""
        target = self.step + segment
        if opts.train_steps:
            target = min(target, opts.train_steps)
        if opts.train_seconds and self.rate:
            target = min(target, self.step + max(1, int((opts.train_seconds - self.elapsed) * self.rate)))
        return target

    def trained(self, step: int, seconds: float) -> None:
        """A segment reached ``step`` in ``seconds``."""
        self.rate = (step - self.step) / seconds if seconds > 0 else None
        self.step, self.elapsed = step, self.elapsed + seconds

    def validated(self, val_mse: float) -> bool:
        """Record the score at this step; True when it is the best so far."""
        self.history.append({"step": self.step, "seconds": self.elapsed, "val_mse": val_mse})
        if self.best is None or val_mse < self.best:
            self.best, self.best_step = val_mse, self.step
            return True
        return False

    def done(self, opts: BenchOptions) -> bool:
        steps, seconds = opts.train_steps, opts.train_seconds
        return bool((steps and self.step >= steps) or (seconds and self.elapsed >= seconds)
                    or self.step >= self.iters)


def _train_with_trainer(opts: BenchOptions, data: Datasets, out: Path, dev: torch.device, log: Log
                        ) -> Tuple[nn.Module, Dict[str, Any]]:
    """Train with :func:`frametrans.train.trainer.train` in segments of ``val_every`` steps; after
    each, score the exported model on the validation set and keep the best one.

    A time budget stops at the segment boundary where it runs out (the last segment is shortened
    to fit, from the measured speed). With only a time budget and a decaying --lr-policy, the
    number of iterations the schedule spans is estimated after the first segment.
    """
    from frametrans.train.trainer import clear_run_dir, train

    steps, seconds = opts.train_steps, opts.train_seconds
    segment = opts.val_every or (max(50, steps // 10) if steps else 1000)
    run_dir, best_path = out / "run", out / "predictor.safetensors"
    run_dir.mkdir(parents=True, exist_ok=True)
    clear_run_dir(run_dir)
    base = _trainer_options(opts, dev, segment)
    estimate_schedule = bool(seconds and not steps and (opts.lr_policy or "constant") != "constant")
    p = _Progress(iters=steps or _OPEN_ENDED)
    val = data.validation_set(opts.resolved_val_size())
    log(f"training with the frametrans trainer, validation every {segment} steps on {len(val)} "
        f"sequences (seed {VALIDATION_SEED}):\n  {_cli_line(base, run_dir, p.iters)}")
    while True:
        t0 = time.perf_counter()
        result = train("predictor", dict(base, iters=p.iters), run_dir, resume=p.step > 0,
                       until=p.next_target(opts, segment))
        p.trained(result.step, time.perf_counter() - t0)
        val_mse = _validation_mse(run_dir / "predictor.safetensors", val, opts, dev)
        log(f"step {p.step}: validation MSE {val_mse:.2f} ({p.elapsed:.0f} s training)")
        if p.validated(val_mse):
            shutil.copyfile(run_dir / "predictor.safetensors", best_path)
        if estimate_schedule and p.iters == _OPEN_ENDED and p.rate:
            p.iters = p.step + max(1, int((seconds - p.elapsed) * p.rate))  # the schedule's length
        if p.done(opts):
            break
    return _keep_best(best_path, opts, p, len(val))


def _validation_mse(path: Path, val: np.ndarray, opts: BenchOptions, dev: torch.device) -> float:
    """MSE of the exported predictor at ``path`` on the validation set (fp32)."""
    from frametrans.checkpoint import load_model

    session = _predictor_session(load_model(path), dev)
    return evaluate(model_predictor(session, opts.horizon), _chunks(val, opts.eval_batch),
                    opts.context, dev)["mse"]


def _keep_best(best_path: Path, opts: BenchOptions, p: _Progress, val_count: int
               ) -> Tuple[nn.Module, Dict[str, Any]]:
    """Write the training facts and validation history into the best checkpoint's provenance;
    returns (its model, the facts with the checkpoint path)."""
    from frametrans.checkpoint import load_model, read_info, save_model

    facts: Dict[str, Any] = {"train_seconds": p.elapsed, "samples_seen": p.step * opts.batch_size,
                             "steps": p.step, "best_step": p.best_step, "best_val_mse": p.best}
    info = read_info(best_path)
    model = load_model(best_path)
    save_model(model, best_path, provenance={
        **info.provenance, **facts, "selected_on": f"validation MSE, {val_count} sequences, seed "
        f"{VALIDATION_SEED}", "validation_history": p.history})
    facts["checkpoint"] = str(best_path)
    return model, facts


# ---------------------------------------------------------------------------------------------
# the table


def format_table(rows: List[Dict[str, Any]]) -> str:
    """Markdown table of :func:`run_benchmark` rows."""
    head = ["model", "MSE", "MAE", "SSIM (dr=1)", "SSIM (dr=2, OpenSTL)", "PSNR", "MSE per step",
            "params", "MACs/sample", "seq/s", "train time", "samples seen"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            str(r["model"]), f"{r['mse']:.2f}", f"{r['mae']:.2f}", f"{r['ssim']:.4f}",
            f"{r['ssim_dr2']:.4f}", f"{r['psnr']:.2f}",
            " ".join(f"{v:.1f}" for v in r["mse_per_step"]),
            _si(r.get("params")), _si(r.get("macs_per_sample")), _si(r.get("seq_per_s")),
            _duration(r.get("train_seconds")), _si(r.get("samples_seen")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _si(value: Any) -> str:
    if value is None:
        return "-"
    v = float(value)
    if v == 0:
        return "0"
    if math.isinf(v):
        return "inf"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"
