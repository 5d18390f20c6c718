#!/usr/bin/env bash
# The public Fashion-MNIST protocol through the CLI: Fashion-MNIST, database = 60k train images with
# 2 cached views, queries = 10k test images, EfficientNet-Lite0 at 112 px (timm's eval transform:
# resize to 128, centre crop 112, with bilinear resizing), mAP@1000, every method at 16/32/64/128 bits, one CLI command
# per stage. Results: one JSON per run under $OUT/results/, collected into
# benchmarks/results/fashion_mnist.json by benchmarks/collect.py. (`hashindex bench` measures the
# same protocol in one command, with re-ranking and speed; BENCHMARKS.md shows both when present.)
# About an hour on 2 CPU cores; minutes on a GPU. Re-running skips what exists.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/fmnist}
BITS=${BITS:-16 32 64 128}
METHODS=${METHODS:-crovca crovca-sup lsh pca pca-rr itq}
H=${H:-.venv/bin/hashindex}
mkdir -p "$OUT/results"
t0=$(date +%s.%N)
[ -f "$OUT/q.h5" ] || $H embed fashion-mnist "$OUT/q.h5" --split test --image-size 112 --interpolation bilinear
[ -f "$OUT/db.h5" ] || $H embed fashion-mnist "$OUT/db.h5" --split train --views 2 --image-size 112 --interpolation bilinear
for bits in $BITS; do
  for m in $METHODS; do
    name="$m-$bits"
    [ -f "$OUT/results/$name.json" ] && continue
    case $m in
      crovca-sup) args=(--method crovca --supervised) ;;
      *) args=(--method "$m") ;;
    esac
    rm -rf "$OUT/probes/$name" "$OUT/indexes/$name"
    $H fit-probe "$OUT/db.h5" "$OUT/probes/$name" --bits "$bits" "${args[@]}"
    $H build "$OUT/db.h5" "$OUT/probes/$name" "$OUT/indexes/$name"
    float=(--no-float); [ "$name" = "crovca-64" ] && float=()
    $H evaluate "$OUT/indexes/$name" "$OUT/q.h5" --topk 1000 --json "${float[@]}" > "$OUT/results/$name.json.tmp"
    mv "$OUT/results/$name.json.tmp" "$OUT/results/$name.json"
  done
done
.venv/bin/python benchmarks/collect.py "$OUT"
