#!/usr/bin/env python
"""Moving MNIST next-frame benchmark: train (or load) a predictor, score it and two baselines.

    # the real protocol (needs t10k-images-idx3-ubyte.gz; see --mnist-dir / FRAMETRANS_MNIST_DIR)
    python examples/bench_predict.py --data moving-mnist --train-seconds 1800 --device cuda
    # an existing checkpoint
    python examples/bench_predict.py --data moving-mnist --model runs/bench_predict/predictor.safetensors
    # a smoke run anywhere (scikit-learn digits)
    python examples/bench_predict.py --data moving-digits --train-steps 300 --size 32 \
        --context 4 --horizon 4 --width 8 --depth 2

Prints a markdown table on stdout (logs on stderr); ``--json FILE`` also writes the rows.
The work is done by :func:`frametrans.bench.predict.run_benchmark`.
"""

from __future__ import annotations

import argparse
import json
import sys

from frametrans.bench.predict import TRAINERS, BenchOptions, format_table, run_benchmark


def main(argv: list[str] | None = None) -> int:
    d = BenchOptions()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=d.data, choices=["moving-mnist", "moving-digits"])
    p.add_argument("--model", help="evaluate this checkpoint instead of training one")
    p.add_argument("--train-seconds", type=float, help="training time budget")
    p.add_argument("--train-steps", type=int, help="training iterations budget")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-policy", choices=["constant", "linear", "cosine"], help="(trainer default: constant)")
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--depth", type=int, default=d.depth)
    p.add_argument("--size", type=int, default=d.size)
    p.add_argument("--context", type=int, default=d.context)
    p.add_argument("--horizon", type=int, default=d.horizon)
    p.add_argument("--test-size", type=int, help="test sequences (default 10000 mnist / 1000 digits)")
    p.add_argument("--val-size", type=int, help="validation sequences (default 1000 / 200)")
    p.add_argument("--val-every", type=int, help="steps between validations (checkpoint choice)")
    p.add_argument("--eval-batch", type=int, default=d.eval_batch)
    p.add_argument("--device", default=d.device)
    p.add_argument("--precision", default=d.precision, help="evaluation precision (fp32, bf16, ...)")
    p.add_argument("--train-precision", default=d.train_precision)
    p.add_argument("--workers", type=int, default=d.workers, help="data loader processes")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out-dir", default=d.out_dir)
    p.add_argument("--mnist-dir", help="folder with t10k-images-idx3-ubyte.gz")
    p.add_argument("--trainer", default=d.trainer, choices=TRAINERS,
                   help="auto and frametrans both train with `frametrans train predictor`")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    args = p.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k != "json"}
    try:
        rows = run_benchmark(BenchOptions(**values))
    except (ValueError, OSError) as exc:
        print(f"bench_predict: error: {exc}", file=sys.stderr)
        return 1
    print(format_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
