#!/usr/bin/env bash
# The GPU suite on a machine without network: build the bundle here (PyPI + the pinned ComfyUI host),
# run it there. The bundle is a git-ignored folder the device tool carries by name.
#
#   bash scripts/gpu_bundle.sh build [--host-only] [DIR]   # here; DIR defaults to .gpu_bundle
#   bash scripts/gpu_bundle.sh run OUT_DIR [suite args]     # there, from the repo root: writes OUT_DIR/gpu_figures.*
#
# DIR/ComfyUI.tar.gz  the pinned ComfyUI v0.8.0 (scripts/comfyui_host.py: git or verified vendor archive), stripped
#                     to what imports need (no tests, API nodes, custom nodes, examples)
# DIR/wheels/         CPython 3.12 manylinux x86_64 wheels of what the H200 image lacks (its package list:
#                     /work/.library/env of this workplace; torch, accelerate, peft, transformers, safetensors,
#                     numpy, aiohttp, einops, scipy, Pillow, torchvision are there): diffusers, torchsde and
#                     trampoline, av (comfy_api imports it), comfy-kitchen (pure Python: ComfyUI's fp8 ops),
#                     bitsandbytes with only the CUDA libraries named by
#                     DSD_BUNDLE_BNB_CUDA (default "130 132": the image's torch is cu130). More wheels:
#                     DSD_BUNDLE_EXTRA="name==version ...". ComfyUI's web frontend is not needed (the suite
#                     serves no page: gpu_suite passes --front-end-root when the package is missing).
# The bundle plus the work tree (tracked and untracked-not-ignored files) must stay under 64 MiB: what the
# device tool sends.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LIMIT=$((64 * 1024 * 1024))
WHEELS=(diffusers==0.42.1 torchsde==0.2.6 trampoline==0.1.2 av==18.1.0 bitsandbytes==0.50.2 importlib_metadata==8.7.0)
# Pure-Python builds: comfy-kitchen's eager backend runs ComfyUI's fp8 matmul through torch's scaled_mm (its
# manylinux wheel adds 200 MB of CUDA/ROCm kernels, past the 64 MiB).
PURE_WHEELS=(comfy-kitchen==0.2.40)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
           manylinux1_x86_64)
# Stripped from the host copy: nothing the suite imports lives there.
HOST_EXCLUDES=(.git tests tests-unit script_examples comfy_api_nodes 'custom_nodes/*' input output temp user .dsd-host.json)

die() { echo "gpu_bundle: $*" >&2; exit 2; }

pip_cmd() {
  if [ -x "$REPO/.venv/bin/python" ]; then echo "$REPO/.venv/bin/python -m pip"; else echo "python3 -m pip"; fi
}

build_host() {
  local dir=$1 host
  host=$(python3 "$REPO/scripts/comfyui_host.py" prepare) || die "no ComfyUI host (see the message above)"
  local name excludes=(--anchored)
  name=$(basename "$host")
  for x in "${HOST_EXCLUDES[@]}"; do excludes+=(--exclude="$name/$x"); done
  excludes+=(--no-anchored --exclude=__pycache__ --exclude='*.pyc')
  # The archive's top folder is ComfyUI whatever the host's folder is called.
  tar -czf "$dir/ComfyUI.tar.gz.partial" "${excludes[@]}" --transform "s,^$name,ComfyUI," -C "$(dirname "$host")" "$name"
  mv "$dir/ComfyUI.tar.gz.partial" "$dir/ComfyUI.tar.gz"
  echo "host: $host -> $dir/ComfyUI.tar.gz ($(du -h "$dir/ComfyUI.tar.gz" | cut -f1))"
}

build_wheels() {
  local dir=$1 pip plat=()
  pip=$(pip_cmd)
  for p in "${PLATFORMS[@]}"; do plat+=(--platform "$p"); done
  rm -rf "$dir/wheels.partial"
  # shellcheck disable=SC2086  # $pip is a command line
  $pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
      -d "$dir/wheels.partial" "${WHEELS[@]}" ${DSD_BUNDLE_EXTRA:-}
  $pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation py --platform any \
      -d "$dir/wheels.partial" "${PURE_WHEELS[@]}"
  python3 - "$dir/wheels.partial" "${DSD_BUNDLE_BNB_CUDA:-130 132}" <<'EOF'
"""Repack bitsandbytes with only the wanted CUDA libraries (its wheel carries one per CUDA and ROCm release)."""
import re, sys, zipfile
from pathlib import Path

folder, keep = Path(sys.argv[1]), {f"libbitsandbytes_cuda{v}.so" for v in sys.argv[2].split()} | {"libbitsandbytes_cpu.so"}
for whl in folder.glob("bitsandbytes-*.whl"):
    tmp = whl.with_suffix(".tmp")
    with zipfile.ZipFile(whl) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = {n for n in src.namelist() if re.search(r"libbitsandbytes_\w+\.so$", n) and n.rsplit("/", 1)[-1] not in keep}
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True) if line.split(b",")[0].decode() not in dropped)
            dst.writestr(info, data)
    tmp.replace(whl)
    print(f"bitsandbytes: kept {sorted(keep)}, dropped {len(dropped)} libraries")
EOF
  rm -rf "$dir/wheels"
  mv "$dir/wheels.partial" "$dir/wheels"
  echo "wheels: $(ls "$dir/wheels" | wc -l) files ($(du -sh "$dir/wheels" | cut -f1))"
}

check_size() {
  local dir=$1 bundle tree
  bundle=$(du -sb "$dir" | cut -f1)
  # what the device tool sends besides carried folders: tracked files and untracked ones git does not ignore
  tree=$(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  python3 -c 'import sys; b, t = int(sys.argv[1]), int(sys.argv[2]); m = 2**20
print(f"size: bundle {b / m:.1f} MiB + work tree {t / m:.1f} MiB = {(b + t) / m:.1f} MiB (limit 64 MiB)")' "$bundle" "$tree"
  [ $((bundle + tree)) -le $LIMIT ] || die "bundle + tree exceed 64 MiB: drop wheels the GPU machine already has"
}

build() {
  local host_only=0 dir="$REPO/.gpu_bundle"
  while [ $# -gt 0 ]; do
    case $1 in
      --host-only) host_only=1 ;;
      -*) die "unknown option $1" ;;
      *) dir=$1 ;;
    esac
    shift
  done
  mkdir -p "$dir"
  build_host "$dir"
  [ $host_only = 1 ] || build_wheels "$dir"
  check_size "$dir"
}

run() {
  [ $# -ge 1 ] || die "usage: gpu_bundle.sh run OUT_DIR [gpu_suite args]"
  local out=$1 dir=${DSD_GPU_BUNDLE:-$REPO/.gpu_bundle} work=${TMPDIR:-/tmp}/dsd_gpu
  shift
  [ -f "$dir/ComfyUI.tar.gz" ] || die "$dir/ComfyUI.tar.gz missing: run 'bash scripts/gpu_bundle.sh build' first and carry .gpu_bundle"
  rm -rf "$work" && mkdir -p "$work/site"
  tar -xzf "$dir/ComfyUI.tar.gz" -C "$work"
  if [ -d "$dir/wheels" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" "$dir"/wheels/*.whl
  fi
  export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}" COMFYUI_PATH="$work/ComfyUI" PYTHONUNBUFFERED=1
  cd "$REPO"  # -m puts the repo root on sys.path: dsd, training and benchmarks import from the work tree
  exec python3 -m benchmarks.gpu_suite --out "$out" "$@"
}

case ${1:-} in
  build) shift; build "$@" ;;
  run) shift; run "$@" ;;
  *) die "usage: gpu_bundle.sh build [--host-only] [DIR] | run OUT_DIR [gpu_suite args]" ;;
esac
