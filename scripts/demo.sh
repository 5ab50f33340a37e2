#!/usr/bin/env bash
# `make demo`: the whole DSD loop at toy scale, offline, on the CPU, with TINY RANDOM weights.
#   1. tiny fixtures (FLUX pipeline folder, the authors' release layout)
#   2. reference-conditioned generation with the standalone sampler (release weights, true CFG)
#   3. datagen toy run: template grid prompts -> tiny teacher grids -> panels -> pairs -> dataset shards
#   4. training: cache latents/text, a few steps on the toy pairs, export the DSD adapter
#   5. generation again, with the adapter training just wrote
# The images are noise-like: this shows the real code paths working end to end, not image quality.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT=output/demo            # training/configs/tiny.toml reads output/tiny and output/demo/datagen
export TOKENIZERS_PARALLELISM=false
start=$(date +%s)
step() { echo; echo "== $*"; }

step "1/5 tiny fixtures -> output/tiny"
"$PY" -m dsd make-tiny output/tiny

step "2/5 generate with the release (standalone sampler)"
"$PY" -m dsd demo --tiny output/tiny --out "$OUT/generate_release"

step "3/5 datagen toy run -> $OUT/datagen"
"$PY" -m datagen run --toy --workdir "$OUT/datagen" --no-progress

step "4/5 training: cache, train, export"
"$PY" -m training cache --config training/configs/tiny.toml --no-progress
"$PY" -m training train --config training/configs/tiny.toml --no-progress
"$PY" -m training export --config training/configs/tiny.toml --out "$OUT/trained_adapter.safetensors"

step "5/5 generate with the trained adapter"
"$PY" -m dsd generate --flux output/tiny/flux --adapter "$OUT/trained_adapter.safetensors" \
    --ref "$OUT/generate_release/reference.png" --prompt "the same character reading a book in a cafe" \
    --out "$OUT/generate_trained" --steps 4 --width 256 --height 128 --image-guidance 2 --text-guidance 1.5 --keep-canvas

echo
echo "demo finished in $(( $(date +%s) - start ))s (tiny random weights: a smoke run of the real pipeline)"
echo "  generation with the release:   $OUT/generate_release/generate/"
echo "  toy dataset:                   $OUT/datagen/dataset/"
echo "  trained adapter:               $OUT/trained_adapter.safetensors"
echo "  generation with that adapter:  $OUT/generate_trained/"
