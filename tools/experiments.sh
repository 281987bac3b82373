#!/usr/bin/env bash
# The chapter's experiments on the real hot-dog photos with EfficientNet-Lite0 (CPU by
# default; pass DEVICE=cuda for a CUDA build; PRECISION=bf16 for bfloat16 convolutions on an
# AVX512-BF16 CPU, into runs/<name>-bf16; zero-shot stays f32). Writes runs/<name>/{history.json, curves.*,
# model.safetensors, log.txt}.
# `flowers`: the Keras lesson's exercise, the two-phase recipe on TensorFlow's flower photos
# (5 classes, cut 80/10/10 by --split) with EfficientNet-Lite0, Lite1 and Lite2 at their own
# image sizes, into runs/flowers-lite{0,1,2} (FLOWERS=DIR: the photos; default the shared copy,
# else `finetune download --dataset flowers`).
# Usage: tools/experiments.sh [zero-shot finetune finetune-hotdog-head scratch freeze two-phase flowers]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/hotdog-seefood}
if [ -d "$DATA/train" ]; then
  data=(--data "$DATA")
else
  # Someone who cloned only this repository: the CLI downloads d2l's hotdog.zip (SHA-1 checked,
  # cached under .cache/data) when no --data is given. Needs internet the first time.
  echo "note: no photos in $DATA: using d2l's hotdog.zip (downloaded once into the cache)" >&2
  data=()
fi
DEVICE=${DEVICE:-cpu}
SEED=${SEED:-0}
PRECISION=${PRECISION:-f32}
suffix=""
[ "$PRECISION" = f32 ] || suffix="-$PRECISION"
if [ -z "${BIN:-}" ]; then
  # Cargo's own lines show the build's progress (minutes on a fresh machine).
  cargo build --release
  BIN=${CARGO_TARGET_DIR:-target}/release/finetune
fi
W=.cache/weights/efficientnet-lite0-57934424.pth
[ -f "$W" ] || bash tools/fetch-weights.sh lite0
flowers() {
  local dir=${FLOWERS:-../shared/data/flower-photos}
  [ -d "$dir/daisy" ] || dir=$("$BIN" download --dataset flowers)
  local b w
  for b in lite0 lite1 lite2; do
    w=$(ls .cache/weights/efficientnet-$b-*.pth 2>/dev/null | head -1)
    [ -n "$w" ] || { bash tools/fetch-weights.sh "$b"; w=$(ls .cache/weights/efficientnet-$b-*.pth | head -1); }
    run "flowers-$b" two-phase --data "$dir" --split 0.8,0.1,0.1 --backbone "efficientnet-$b" --weights "$w" \
      --device "$DEVICE" --seed "$SEED" --precision "$PRECISION" --batch-size 32 --head-epochs "${HEAD_EPOCHS:-5}" --fine-epochs "${FINE_EPOCHS:-5}" --patience 3
  done
}
common=(${data[@]+"${data[@]}"} --backbone efficientnet-lite0 --device "$DEVICE" --seed "$SEED" --precision "$PRECISION")
run() {
  local name=$1$suffix; shift
  mkdir -p "runs/$name"
  echo "== $name: $*"
  local t0=$SECONDS
  # --overwrite: a rerun replaces the earlier run of the same name (the CLI refuses otherwise).
  # Through tee the CLI has no terminal, so it prints one progress line per batch (into log.txt too).
  "$BIN" "$@" --out "runs/$name" --overwrite 2>&1 | tee "runs/$name/log.txt"
  echo "wall time $((SECONDS - t0)) s" | tee -a "runs/$name/log.txt"
}
for exp in "${@:-finetune scratch freeze two-phase}"; do
  for e in $exp; do
    case $e in
      zero-shot) mkdir -p runs/zero-shot; "$BIN" zero-shot ${data[@]+"${data[@]}"} --device "$DEVICE" --weights "$W" 2>&1 | tee runs/zero-shot/log.txt ;;
      finetune) run lite0-finetune finetune "${common[@]}" --weights "$W" --epochs 5 ;;
      finetune-hotdog-head) run lite0-finetune-hotdog-head finetune "${common[@]}" --weights "$W" --epochs 5 --head-init hotdog ;;
      scratch) run lite0-scratch scratch "${common[@]}" --epochs 5 ;;
      freeze) run lite0-freeze freeze "${common[@]}" --weights "$W" --epochs 5 ;;
      flowers) flowers ;;
      two-phase) run lite0-two-phase two-phase "${common[@]}" --weights "$W" --head-epochs 10 --fine-epochs 10 --patience 3 ;;
      *) echo "unknown experiment $e" >&2; exit 2 ;;
    esac
  done
done
