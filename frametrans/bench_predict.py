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

Training uses ``frametrans train predictor`` when the trainer is installed, else the small
built-in loop :func:`fit` (Adam, MSE, cosine decay). Library code: no Click, no printing except
through ``log``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

import numpy as np
import torch
from torch import nn

from frametrans.data.moving_digits import (
    TEST_SEED,
    VALIDATION_SEED,
    Datasets,
    MovingDigits,
    make_datasets,
)
from frametrans.engine import device as devices
from frametrans.engine.padding import crop, pad_to_multiple
from frametrans.engine.temporal import rollout
from frametrans.metrics import MetricAccumulator, count_params, multiply_adds

__all__ = [
    "BenchOptions", "FitResult", "run_benchmark", "evaluate", "fit", "format_table",
    "copy_last_predictor", "all_black_predictor", "model_predictor", "DEFAULT_TEST_SIZE",
]

Log = Callable[[str], None]
#: A predictor for evaluation: context [B, T*C, H, W] in [0, 1] -> [B, K*C, H, W] in [0, 1].
PredictFn = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_TEST_SIZE = {"moving-mnist": 10_000, "moving-digits": 1_000}
DEFAULT_VAL_SIZE = {"moving-mnist": 1_000, "moving-digits": 200}


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class BenchOptions:
    """Everything :func:`run_benchmark` needs. None means: the default of the data source.

    model: a checkpoint (path or bundled name) to evaluate instead of training one.
    train_seconds / train_steps: the training budget (at least one; both: whichever ends first).
    size, num_digits, context, horizon, digit_size: the protocol (64, 2, 10, 10, native 28).
    width, depth: the predictor trained (ignored with ``model``).
    out_dir: where checkpoints go. trainer: "auto" (``frametrans train predictor`` when installed,
    else the built-in loop), "frametrans" or "builtin". train_precision, lr_policy, workers: passed
    to the trainer (lr_policy None: the trainer's default, constant).
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


def model_predictor(model: nn.Module, horizon: int, dtype: torch.dtype = torch.float32) -> PredictFn:
    """A predictor (in eval mode, on its device) as a PredictFn: pad, roll out ``horizon`` frames,
    crop; float32 out. ``dtype`` other than float32 runs under autocast."""
    multiple = model.config.contract().size_multiple

    def predict(x: torch.Tensor) -> torch.Tensor:
        ctx = (contextlib.nullcontext() if dtype == torch.float32
               else torch.autocast(x.device.type, dtype=dtype))
        with ctx:
            xp, pads = pad_to_multiple(x, multiple, mode="reflect")
            y = rollout(model, xp, horizon)
        return crop(y.float(), pads)

    return predict


# ---------------------------------------------------------------------------------------------
# evaluation


def evaluate(predict: PredictFn, sequences: Iterable[np.ndarray], context: int,
             device: torch.device) -> Dict[str, Any]:
    """Score ``predict`` on sequences float32 [b, context + horizon, C, H, W] (an iterable of
    chunks). Returns :func:`~frametrans.metrics.openstl_metrics` keys plus ``seq_per_s``
    (sequences per second of ``predict`` alone, device synchronised)."""
    acc = MetricAccumulator()
    seconds = 0.0
    with torch.inference_mode():
        for chunk in sequences:
            seq = torch.from_numpy(np.ascontiguousarray(chunk)).to(device)
            b, t, c, h, w = seq.shape
            x = seq[:, :context].reshape(b, context * c, h, w)
            true = seq[:, context:]
            _sync(device)
            t0 = time.perf_counter()
            y = predict(x)
            _sync(device)
            seconds += time.perf_counter() - t0
            acc.update(y.reshape(true.shape), true)
    out = acc.result()
    out["seq_per_s"] = acc.sequences / seconds if seconds > 0 else float("inf")
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# built-in training loop


@dataclass
class FitResult:
    """What :func:`fit` did: the best weights by validation MSE (or the last ones without
    validation), the steps and samples it took, the wall time, and the validation history."""

    state_dict: Dict[str, torch.Tensor]
    steps: int
    samples_seen: int
    seconds: float
    best_step: int
    best_val_mse: Optional[float] = None
    history: List[Dict[str, float]] = field(default_factory=list)


def fit(model: nn.Module, data: MovingDigits, steps: Optional[int] = None,
        seconds: Optional[float] = None, batch_size: int = 16, lr: float = 1e-3,
        device: torch.device | str = "cpu", seed: int = 0,
        validation: Optional[np.ndarray] = None, val_every: Optional[int] = None,
        log: Optional[Log] = None) -> FitResult:
    """Train ``model`` (a FramePredictor) on fresh sequences from ``data`` with MSE loss.

    Budget: ``steps`` and/or ``seconds`` (whichever ends first). Adam with cosine decay of the
    learning rate over the budget. With ``validation`` (float32 [n, frames, C, H, W]), MSE on it is
    measured every ``val_every`` steps (default: 10 times over a step budget, every 60 s
    otherwise) and at the end; the returned state dict is the best one. The model ends in eval
    mode holding the best weights.
    """
    if steps is None and seconds is None:
        raise ValueError("fit needs a budget: steps and/or seconds")
    dev = devices.resolve_device(device) if isinstance(device, str) else device
    cfg = model.config
    model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    val_every_steps = val_every or (max(1, steps // 10) if steps else None)
    next_val_time = 60.0
    best: Optional[float] = None
    best_state = copy.deepcopy(model.state_dict())
    best_step, step, history = 0, 0, []
    start = time.perf_counter()

    def progress() -> float:
        p = step / steps if steps else 0.0
        if seconds:
            p = max(p, (time.perf_counter() - start) / seconds)
        return min(p, 1.0)

    def validate() -> None:
        nonlocal best, best_state, best_step
        if validation is None:
            return
        model.eval()
        val = evaluate(model_predictor(model, cfg.horizon), _chunks(validation, 100),
                       cfg.context, dev)["mse"]
        model.train()
        history.append({"step": step, "seconds": time.perf_counter() - start, "val_mse": val})
        if log:
            log(f"step {step}: validation MSE {val:.2f}")
        if best is None or val < best:
            best, best_step = val, step
            best_state = copy.deepcopy(model.state_dict())

    while progress() < 1.0:
        seq = torch.from_numpy(data.sample(batch_size, rng)).to(dev)  # [B, T, C, H, W]
        b, t, c, h, w = seq.shape
        x = seq[:, : cfg.context].reshape(b, -1, h, w)
        y = seq[:, cfg.context : cfg.context + cfg.horizon].reshape(b, -1, h, w)
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * progress()))
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        elapsed = time.perf_counter() - start
        if val_every_steps and step % val_every_steps == 0:
            validate()
        elif not val_every_steps and elapsed >= next_val_time:
            validate()
            next_val_time = elapsed + 60.0
    if validation is not None and (not history or history[-1]["step"] != step):
        validate()
    if validation is None:
        best_state, best_step = copy.deepcopy(model.state_dict()), step
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(best_state, step, step * batch_size, time.perf_counter() - start, best_step,
                     best, history)


def _chunks(array: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(array), size):
        yield array[i : i + size]


# ---------------------------------------------------------------------------------------------
# the benchmark


def run_benchmark(options: Optional[BenchOptions] = None, log: Log = _stderr, **overrides: Any
                  ) -> List[Dict[str, Any]]:
    """Run the whole protocol; returns one row per model (the predictor, then the baselines).

    Row keys: model, mse, mae, ssim, ssim_dr2, psnr, mse_per_step, params, macs_per_sample,
    seq_per_s, train_seconds, samples_seen, checkpoint, plus the data/test-set description.
    ``overrides`` replace fields of ``options`` (``run_benchmark(data="moving-digits", ...)``).
    """
    opts = _replace(options or BenchOptions(), overrides)
    if opts.model is None and opts.train_seconds is None and opts.train_steps is None:
        raise ValueError("give --model, or a training budget (--train-seconds / --train-steps)")
    dev = devices.resolve_device(opts.device)
    dtype = devices.resolve_precision(opts.precision, dev)
    frames = opts.context + opts.horizon
    data = make_datasets(opts.data, size=opts.size, num_digits=opts.num_digits, frames=frames,
                         digit_size=opts.digit_size or default_digit_size(opts.size),
                         mnist_dir=opts.mnist_dir)
    test_n = opts.resolved_test_size()
    log(f"data {opts.data}: {len(data.train.digits)} training / {len(data.test.digits)} test digits, "
        f"{opts.size}x{opts.size}, {opts.num_digits} digits, {opts.context} -> {opts.horizon} frames; "
        f"test set {test_n} sequences (seed {TEST_SEED}) on {dev}")

    rows: List[Dict[str, Any]] = []
    if opts.model is not None:
        from frametrans.checkpoint import load_model, read_info, resolve

        model = load_model(opts.model)
        info = read_info(resolve(opts.model))
        _check_protocol(model, opts)
        train = _train_facts(info.provenance)
        train["checkpoint"] = str(resolve(opts.model))
        name = Path(opts.model).stem
    else:
        model, train = _train(opts, data, dev, log)
        name = f"predictor w{opts.width} d{opts.depth}"
    model = model.eval().to(dev)
    test_chunks = lambda: data.test.iter_fixed_set(test_n, TEST_SEED, opts.eval_batch)  # noqa: E731
    log(f"evaluating {name} on {test_n} test sequences")
    res = evaluate(model_predictor(model, opts.horizon, dtype), test_chunks(), opts.context, dev)
    shape = (1, opts.context * model.config.channels, opts.size, opts.size)
    passes = -(-opts.horizon // model.config.horizon)  # rollout passes per sequence
    res.update(model=name, params=count_params(model),
               macs_per_sample=passes * multiply_adds(model, shape), **train)
    rows.append(res)
    if opts.baselines:
        c = model.config.channels
        for label, fn in (("copy-last-frame", copy_last_predictor(c, opts.horizon)),
                          ("all-black", all_black_predictor(c, opts.horizon))):
            res = evaluate(fn, test_chunks(), opts.context, dev)
            res.update(model=label, params=0, macs_per_sample=0, train_seconds=None, samples_seen=None)
            rows.append(res)
    for row in rows:
        row.update(data=opts.data, test_size=test_n, test_seed=TEST_SEED, device=str(dev),
                   precision=str(dtype).replace("torch.", ""))
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


def _train(opts: BenchOptions, data: Datasets, dev: torch.device, log: Log):
    """Train a predictor; returns (model with the validation-best weights, training facts)."""
    from frametrans.checkpoint import load_model, save_model
    from frametrans.models.predictor import FramePredictor, PredictorConfig

    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if opts.trainer not in ("auto", "frametrans", "builtin"):
        raise ValueError(f"trainer {opts.trainer!r}: use auto, frametrans or builtin")
    if opts.trainer == "frametrans" or (opts.trainer == "auto" and _cli_trainer_available()):
        return _train_with_trainer(opts, data, out, dev, log)
    cfg = PredictorConfig(channels=1, context=opts.context, horizon=opts.horizon,
                          width=opts.width, depth=opts.depth)
    model = FramePredictor(cfg)
    val = data.validation_set(opts.resolved_val_size())
    log(f"training {cfg} with the built-in loop: batch {opts.batch_size}, lr {opts.lr}, budget "
        f"{opts.train_steps or '-'} steps / {opts.train_seconds or '-'} s; validation "
        f"{len(val)} sequences (seed {VALIDATION_SEED})")
    result = fit(model, data.train, steps=opts.train_steps, seconds=opts.train_seconds,
                 batch_size=opts.batch_size, lr=opts.lr, device=dev, seed=opts.seed,
                 validation=val, val_every=opts.val_every, log=log)
    facts = {"train_seconds": result.seconds, "samples_seen": result.samples_seen,
             "steps": result.steps, "best_step": result.best_step,
             "best_val_mse": result.best_val_mse}
    path = out / "predictor.safetensors"
    save_model(model, path, provenance={"trainer": "frametrans.bench_predict.fit", "data": opts.data,
                                        "batch_size": opts.batch_size, "lr": opts.lr, **facts})
    facts["checkpoint"] = str(path)
    return load_model(path), facts


# -- the frametrans trainer -------------------------------------------------------------------


def _cli_trainer_available() -> bool:
    try:
        import frametrans.train.trainer  # noqa: F401
    except ImportError:
        return False
    return True


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


def _train_with_trainer(opts: BenchOptions, data: Datasets, out: Path, dev: torch.device, log: Log):
    """Train with :func:`frametrans.train.trainer.train` in segments of ``val_every`` steps; after
    each, score the exported model on the validation set and keep the best one.

    A time budget stops at the segment boundary where it runs out (the last segment is shortened
    to fit, from the measured speed). With only a time budget and a decaying --lr-policy, the
    number of iterations the schedule spans is estimated after the first segment.
    """
    from frametrans.checkpoint import load_model, read_info, save_model
    from frametrans.train.trainer import clear_run_dir, train

    if opts.digit_size and opts.digit_size != default_digit_size(opts.size):
        raise ValueError(f"digit_size {opts.digit_size}: the frametrans trainer draws digits of "
                         f"{default_digit_size(opts.size) or 28} px at size {opts.size}; use trainer='builtin'")
    steps, seconds = opts.train_steps, opts.train_seconds
    segment = opts.val_every or (max(50, steps // 10) if steps else 1000)
    run_dir, best_path = out / "run", out / "predictor.safetensors"
    run_dir.mkdir(parents=True, exist_ok=True)
    clear_run_dir(run_dir)
    base = _trainer_options(opts, dev, segment)
    decaying = (opts.lr_policy or "constant") != "constant"
    iters = steps or 10**9
    val = data.validation_set(opts.resolved_val_size())
    log(f"training with the frametrans trainer, validation every {segment} steps on {len(val)} "
        f"sequences (seed {VALIDATION_SEED}):\n  {_cli_line(base, run_dir, iters)}")
    step, elapsed, rate = 0, 0.0, None
    best: Optional[float] = None
    best_step = 0
    history: List[Dict[str, float]] = []
    while True:
        target = step + segment
        if steps:
            target = min(target, steps)
        if seconds and rate:
            target = min(target, step + max(1, int((seconds - elapsed) * rate)))
        t0 = time.perf_counter()
        result = train("predictor", dict(base, iters=iters), run_dir, resume=step > 0, until=target)
        dt = time.perf_counter() - t0
        rate = (result.step - step) / dt if dt > 0 else None
        step, elapsed = result.step, elapsed + dt
        model = load_model(run_dir / "predictor.safetensors").eval().to(dev)
        val_mse = evaluate(model_predictor(model, opts.horizon), _chunks(val, opts.eval_batch),
                           opts.context, dev)["mse"]
        history.append({"step": step, "seconds": elapsed, "val_mse": val_mse})
        log(f"step {step}: validation MSE {val_mse:.2f} ({elapsed:.0f} s training)")
        if best is None or val_mse < best:
            best, best_step = val_mse, step
            shutil.copyfile(run_dir / "predictor.safetensors", best_path)
        if seconds and not steps and decaying and iters == 10**9 and rate:
            iters = step + max(1, int((seconds - elapsed) * rate))  # the schedule's length
        if (steps and step >= steps) or (seconds and elapsed >= seconds) or step >= iters:
            break
    facts = {"train_seconds": elapsed, "samples_seen": step * opts.batch_size, "steps": step,
             "best_step": best_step, "best_val_mse": best}
    info = read_info(best_path)
    model = load_model(best_path)
    save_model(model, best_path, provenance={
        **info.provenance, **facts, "selected_on": f"validation MSE, {len(val)} sequences, seed "
        f"{VALIDATION_SEED}", "validation_history": history})
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
