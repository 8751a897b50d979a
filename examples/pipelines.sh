#!/usr/bin/env bash
# Shell recipes with frametrans. Run: bash examples/pipelines.sh OUT_DIR
# The ffmpeg recipes run only where an ffmpeg binary is installed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-pipelines_out}"
mkdir -p "$out"

# A folder of photos, as find lists them, through the bundled pix2pix model (grayscale -> colour).
find "$here/data" -name '*.png' -o -name '*.jpg' | frametrans apply --list - -o "$out/colour/" -m pix2pix -q --overwrite

# The same with xargs, many paths per call.
find "$here/data" -name '*.jpg' -print0 | xargs -0 frametrans apply -o "$out/xargs/" -m cyclegan -q --overwrite

# A video, keeping its audio; then again with --skip-existing, which does nothing the second time.
frametrans apply "$here/data/clip.mp4" -o "$out/clip_painted.mp4" -m cyclegan -q --overwrite
frametrans apply "$here/data/clip.mp4" -o "$out/clip_painted.mp4" -m cyclegan -q --skip-existing

if command -v ffmpeg >/dev/null; then
  # Raw frames through a pipe: ffmpeg decodes, frametrans translates, ffmpeg encodes.
  ffmpeg -v error -i "$here/data/clip.mp4" -f rawvideo -pix_fmt rgb24 - \
    | frametrans apply - --size 640x360 -o - -m cyclegan -q \
    | ffmpeg -v error -y -f rawvideo -pix_fmt rgb24 -s 640x360 -r 25 -i - -pix_fmt yuv420p "$out/piped.mp4"
  # y4m carries the size itself.
  ffmpeg -v error -i "$here/data/clip.mp4" -f yuv4mpegpipe - \
    | frametrans apply - -o - --y4m -m cyclegan -q \
    | ffmpeg -v error -y -i - -pix_fmt yuv420p "$out/piped_y4m.mp4"
fi
echo "pipelines: outputs in $out" >&2
