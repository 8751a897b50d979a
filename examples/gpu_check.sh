#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one call, from the repository root:
#
#   bash examples/gpu_check.sh OUT [WHEELS]
#
# OUT gets gpu.txt (the card), tests.txt (the CUDA-marked tests and the YUV/encoder tests),
# aoti.txt (the compiled CUDA package loaded four ways, each in a child), precision.txt
# (examples/precision_cost.py: bf16 with each FRAMETRANS_KEEP_FP32 mode, speed and PSNR to fp32),
# apply.txt (the README's first command, --yuv on against off and with --hwdec cuda, timed, and
# the PSNR between --yuv on and off; MUNIT with 4 styles, timed, with the main thread's time a frame),
# predictor.txt (Moving MNIST predictor training at batch 64: data and step time in fp32, bf16 and
# compiled fp32, and a profile of the fp32 step, when MNIST_DIR, default .mnist, holds t10k-images-idx3-ubyte.gz), temporal.txt (`frametrans bench temporal` on CUDA:
# what --temporal stats / auto cost beside the model, at 640x360, and at 1080p with the flow on the
# GPU and on host threads), pipeline.txt and bench-pipeline-*.json (`frametrans bench pipeline`: folder scaling
# with 1-16 I/O threads, 16 threads with a 0.5 ms switch interval, the host ceiling at 1080p with frames on the GPU), and bench-gpu.json / bench-gpu.md (`frametrans bench gpu`: the whole table of issue 15, under
# 6 minutes). Written for a machine that has torch with CUDA but not this package: frametrans is
# installed with --target next to it, and WHEELS (a folder of wheels, e.g. PyAV's, default .whl)
# first, without dependencies. To carry PyAV to a machine without it (Python 3.12, x86-64):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl av==18.1.0
#
# Each step's failure is recorded and the next step still runs; the exit status is the first failure's.
# All of it takes longer than one 10-minute device call: GPU_CHECK_STEPS picks some of the steps
# (space-separated: tests aoti precision apply predictor temporal pipeline bench temporal-1080p; default: all), e.g.
#
#   GPU_CHECK_STEPS="tests apply predictor temporal temporal-1080p" bash examples/gpu_check.sh OUT  # ~6 min
#   GPU_CHECK_STEPS=bench bash examples/gpu_check.sh OUT                                             # <= 8 min
#
# GPU_BENCH_BUDGET (seconds, default 330) is `bench gpu --budget`; GPU_TESTS_TIMEOUT and GPU_FLOW_TIMEOUT
# cap the tests step (default 300 s) and each 1080p temporal run (default 75 s).
set -uo pipefail
out=${1:?usage: bash examples/gpu_check.sh OUT [WHEELS]}
wheels=${2:-.whl}
site=${FRAMETRANS_SITE:-/tmp/frametrans-site}
mkdir -p "$out"
status=0
pytest_tmp=${TMPDIR:-/tmp}/frametrans-gpu-check-pytest  # the tests' temporary files, the compile cache among them
step() { "$@" || { rc=$?; echo "FAILED ($rc): $*" >&2; [ $status -ne 0 ] || status=$rc; }; }
want() { [ -z "${GPU_CHECK_STEPS:-}" ] || [[ " $GPU_CHECK_STEPS " == *" $1 "* ]]; }

if [ -d "$wheels" ]; then
    step python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$wheels"/*.whl
fi
# --upgrade: the wheels above may have made $site/bin already, and pip then skips our entry point
# (it replaces $site/bin whole: PyAV's own `pyav` script goes, which nothing here uses)
step python3 -m pip install -q --no-deps --no-build-isolation --no-compile --upgrade --target "$site" .
# PYTHONSAFEPATH: `python -m` must not put the repository root first on sys.path, where the source
# frametrans/ (without its cli/ and train/ subpackages, which setup.cfg maps in) would hide the install
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH" PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
python3 -c "import torch, av; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'av', av.__version__)" \
    >> "$out/gpu.txt" 2>&1

if want tests; then
    # one hung test must not take the call; a cold CUDA compile (test_cuda_graphs_match_eager) took 60-95 s
    per_test=$(python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout 240")
    step timeout "${GPU_TESTS_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider -rfs --tb=short $per_test --basetemp "$pytest_tmp" \
        tests/engine/test_yuv.py tests/io/test_hwdec.py tests/apply/test_encoders.py tests/engine/test_nonfinite.py \
        tests/apply/test_torchflow.py \
        "tests/engine/test_memory.py::test_max_memory_bounds_the_cuda_peak" \
        "tests/engine/test_streaming.py::test_row_bands_on_cuda_match_the_whole_frame_within_the_budget" \
        "tests/engine/test_fast_paths.py::test_cuda_paths_match_cpu_fp32" \
        "tests/apply/test_apply.py::test_bad_options_rejected_before_work" \
        "tests/cli/test_bad_inputs.py::test_impossible_options_refused_before_any_work" \
        "tests/bench/test_bench.py::test_bench_gpu_refuses_in_one_line" \
        "tests/train/test_train_generated.py::test_adam_is_fused_on_cuda_only" \
        "tests/train/test_train_generated.py::test_predictor_trains_on_cuda" > "$out/tests.txt" 2>&1
    # alone and last: it builds and loads a compiled CUDA package, whose loader once segfaulted here
    step timeout 300 python3 -m pytest -q -p no:cacheprovider -rfs --tb=short $per_test --basetemp "$pytest_tmp" \
        "tests/engine/test_fast_paths.py::test_cuda_graphs_match_eager" >> "$out/tests.txt" 2>&1
    tail -n 15 "$out/tests.txt"
fi

# The compiled CUDA package (built by test_cuda_graphs_match_eager above, in pytest's temporary cache): its
# check verdict, its archive's layout, and each way of loading it, each in a child process, so that a
# loader crash (torch 2.11 segfaulted here once) names the way that crashes and the ways that do not
aoti_loads() {
    timeout 300 python3 - "$pytest_tmp" <<'EOF2'
import glob, os, subprocess, sys, zipfile
pkgs = sorted(glob.glob(f"{sys.argv[1]}/**/aoti/*.pt2", recursive=True), key=os.path.getmtime)
if not pkgs:
    sys.exit("no compiled package in the cache")
p = pkgs[-1]
for v in ("ok", "bad"):
    if os.path.exists(f"{p}.{v}"):
        print(f"verdict {v}: {open(f'{p}.{v}').read().strip()}")
with zipfile.ZipFile(p) as z:
    names = z.namelist()
print(f"{os.path.basename(p)}: {len(names)} entries, first {names[:3]}, so/cubin: "
      f"{[n for n in names if n.endswith(('.so', '.cubin', '.json'))][:6]}")
run = "y = f(x); torch.cuda.synchronize(); print('ok', tuple(y.shape))"
x = "x = torch.zeros(2, 3, 40, 52, device='cuda').contiguous(memory_format=torch.channels_last)"  # the batches of test_cuda_graphs_match_eager
ways = {
    "frametrans load_package": f"from frametrans.engine.compile import load_package; f = load_package(__import__('pathlib').Path(P)); {x}; {run}",
    "loader, device_index -1": f"l = torch._C._aoti.AOTIModelPackageLoader(P, 'model', False, 1, -1); f = lambda t: l.boxed_run([t])[0]; {x}; {run}",
    "loader, device_index 0": f"l = torch._C._aoti.AOTIModelPackageLoader(P, 'model', False, 1, 0); f = lambda t: l.boxed_run([t])[0]; {x}; {run}",
    "torch._inductor.aoti_load_package": f"import torch._inductor; m = torch._inductor.aoti_load_package(P); f = lambda t: m(t); {x}; {run}",
}
for name, code in ways.items():
    try:
        r = subprocess.run([sys.executable, "-c", f"import torch; P = {p!r}; {code}"], capture_output=True, text=True, timeout=60)
        tail = (r.stdout + r.stderr).strip().splitlines()[-1:] or [""]
        print(f"{name}: rc {r.returncode}: {tail[0][:300]}")
    except subprocess.TimeoutExpired:
        print(f"{name}: timed out")
EOF2
}
if want aoti; then step aoti_loads > "$out/aoti.txt" 2>&1; cat "$out/aoti.txt"; fi

# What the bf16 copy's fp32 layers cost on the GPU and what they buy (issue 15: model only went from
# 917/8329 to 756/4279 frames/s after they came in for the CPU's sake)
if want precision; then
    step timeout 240 python3 examples/precision_cost.py --device cuda > "$out/precision.txt" 2>&1
    cat "$out/precision.txt"
fi

apply_once() {  # $1: --yuv mode, $2: --hwdec mode; the README's first command on the GPU, timed
    echo "--yuv $1 --hwdec $2:"
    local TIMEFORMAT="%R s wall, %U s user, %S s sys"
    time frametrans apply examples/data/clip.mp4 -o "$out/clip_$1.mp4" --model cyclegan --device cuda \
        --yuv "$1" --hwdec "$2" --crf 0 --overwrite -q
}
styles_once() {  # MUNIT with 4 styles: each batch goes through every style (one frame at a time before 2026-12-02)
    echo "munit --num-styles 4:"
    local TIMEFORMAT="%R s wall, %U s user, %S s sys"
    time frametrans -v apply examples/data/clip.mp4 -o "$out/styles/" --model munit --num-styles 4 --device cuda \
        --overwrite 2>&1 | grep -E "per frame|written"
    rm -rf "$out/styles"
}
compare() {
    python3 - "$out" <<'EOF2'
import sys, av, numpy as np
def frames(p):
    with av.open(p) as c:
        return [(f.pts, f.to_ndarray(format="rgb24").astype(float)) for f in c.decode(video=0)]
on, off = frames(f"{sys.argv[1]}/clip_on.mp4"), frames(f"{sys.argv[1]}/clip_off.mp4")
mse = np.mean([((a - b) ** 2).mean() for (_, a), (_, b) in zip(on, off)])
psnr = 10 * np.log10(255 ** 2 / max(mse, 1e-12))
same = len(on) == len(off) and [p for p, _ in on] == [p for p, _ in off]
print(f"frames {len(on)} vs {len(off)}, same pts: {same}, PSNR --yuv on vs off {psnr:.1f} dB")
sys.exit(0 if same and psnr >= 40 else 1)  # 49.5 dB on the CPU; below 40, something is off
EOF2
}
if want apply; then
    for mode in off on off on; do step apply_once "$mode" off >> "$out/apply.txt" 2>&1; done
    step apply_once on cuda >> "$out/apply.txt" 2>&1  # NVDEC too: the same frames, so the PSNR below is unchanged
    step compare >> "$out/apply.txt" 2>&1
    step styles_once >> "$out/apply.txt" 2>&1
    cat "$out/apply.txt"
    rm -f "$out"/clip_*.mp4
fi

mnist=${MNIST_DIR:-.mnist}  # t10k-images-idx3-ubyte.gz (../shared/data/mnist), carried like the wheels
if want predictor && [ -f "$mnist/t10k-images-idx3-ubyte.gz" ]; then  # issue 18: the predictor at batch 64 is not data-bound
    : > "$out/predictor.txt"
    for precision in fp32 bf16; do
        step timeout 120 python3 -m frametrans.train.data_bench --data moving-mnist --mnist-dir "$mnist" --device cuda \
            --batch-size 64 --steps 50 --warmup 5 --precision "$precision" >> "$out/predictor.txt" 2>&1
    done
    # compiled (train --compile): fewer, fused kernels; the build (~1 min) happens in the warm-up steps
    step timeout 240 python3 -m frametrans.train.data_bench --data moving-mnist --mnist-dir "$mnist" --device cuda \
        --batch-size 64 --steps 50 --warmup 5 --compile >> "$out/predictor.txt" 2>&1
    # where a step's time goes: launches per step against the device's busy time (issue 18's 10x needs < 8.5 ms)
    step timeout 120 python3 -m frametrans.train.data_bench --data moving-mnist --mnist-dir "$mnist" --device cuda \
        --batch-size 64 --steps 10 --warmup 5 --profile >> "$out/predictor.txt" 2>&1
    head -n 24 "$out/predictor.txt"
fi

# issue 16: what --temporal costs next to a GPU model (--temporal-flow auto: DIS on host threads, computed
# ahead of the model; the torch flow on the GPU is timed at 1080p below)
if want temporal; then
    step timeout 90 frametrans bench temporal --device cuda --models cyclegan --modes off,stats,auto --frames 40 \
        --repeat 1 --json "$out/bench-temporal.json" >> "$out/temporal.txt" 2>&1
    tail -n 8 "$out/temporal.txt"
fi

# issue 15's host side on this machine's cores: folder scaling with I/O threads (the 1.7x target for 2
# threads, and beyond), and the ceiling at 1080p with the frames on the GPU, which `bench gpu` skipped
# when its budget ran out (2026-11-30)
if want pipeline; then
    step timeout 150 frametrans bench pipeline --device cpu --size 256 --frames 384 --inputs png,jpg \
        --threads 1,2,4,8,16 --repeat 1 --json "$out/bench-pipeline-threads.json" >> "$out/pipeline.txt" 2>&1
    # the same 16-thread pools with a 0.5 ms thread switch interval (Python's is 5 ms): are the
    # pools waiting for the GIL after each codec call and syscall?
    step timeout 90 frametrans bench pipeline --device cpu --size 256 --frames 384 --inputs png,jpg \
        --threads 16 --repeat 1 --switch-interval 0.0005 --json "$out/bench-pipeline-switch.json" >> "$out/pipeline.txt" 2>&1
    step timeout 150 frametrans bench pipeline --device cuda --size 1920x1080 --frames 48 --inputs video,png,jpg \
        --repeat 1 --json "$out/bench-pipeline-1080p.json" >> "$out/pipeline.txt" 2>&1
    grep -E '^\||scaling' "$out/pipeline.txt"
fi

if want bench; then
    budget=${GPU_BENCH_BUDGET:-330}
    step timeout "$((${budget%.*} + 150))" frametrans bench gpu --budget "$budget" --out "$out/bench-gpu" > "$out/bench.log" 2>&1
    tail -n 40 "$out/bench.log"
fi

# issue 16: the torch flow's own time and CUDA memory for one 1080p pair (both flows, occlusion, points)
flow_cost() {
    timeout 60 python3 - <<'EOF2'
import time, numpy as np, torch
from frametrans.torchflow import DeviceMotion
rng = np.random.default_rng(0)
a = rng.integers(0, 256, (1080, 1920, 3), np.uint8)
b = np.roll(a, (3, 5), (0, 1))
motion = DeviceMotion("cuda")
motion(a, b); torch.cuda.synchronize()
torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
t0 = time.perf_counter()
for _ in range(10):
    motion(a, b)
torch.cuda.synchronize()
ms = (time.perf_counter() - t0) * 100
peak = (torch.cuda.max_memory_allocated() - base) / 2**20
print(f"torch flow, one 1080p pair (both flows + occlusion + points, host copies included): {ms:.1f} ms, peak {peak:.0f} MiB")
EOF2
}
if want temporal-1080p; then step flow_cost >> "$out/temporal.txt" 2>&1; tail -n 1 "$out/temporal.txt"; fi

# issue 16 at 1080p: the flow on the GPU (torch) against OpenCV DIS on host threads (dis, 1-4 threads);
# flow's "vs off" near 1.0x means the flow keeps up with the model. Last, so that a call cut short at
# the device's limit loses only these steps
for flow in torch dis; do
    want temporal-1080p || break
    step timeout "${GPU_FLOW_TIMEOUT:-75}" frametrans bench temporal --device cuda --models cyclegan --modes off,flow --frames 12 --repeat 1 \
        --size 1920x1080 --temporal-flow "$flow" --json "$out/bench-temporal-1080p-$flow.json" >> "$out/temporal.txt" 2>&1
    tail -n 4 "$out/temporal.txt"
done
exit $status
