#!/usr/bin/env bash
# The quick-start job: Fashion-MNIST through the pretrained EfficientNet-Lite0 -> CroVCA probe ->
# faiss binary index -> queries -> a short quality/speed report. Outputs go to ${OUT:-runs/demo}.
# DB/NQ choose how many database and query images (the full protocol is benchmarks/fashion_mnist.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/demo}
DB=${DB:-5000}
NQ=${NQ:-1000}
BITS=${BITS:-64}
H=.venv/bin/hashindex
mkdir -p "$OUT"
[ -f "$OUT/db.h5" ] || $H embed fashion-mnist "$OUT/db.h5" --split train --limit "$DB" --views 2 --image-size 112 --interpolation bilinear
[ -f "$OUT/q.h5" ] || $H embed fashion-mnist "$OUT/q.h5" --split test --limit "$NQ" --image-size 112 --interpolation bilinear
[ -d "$OUT/probe" ] || $H fit-probe "$OUT/db.h5" "$OUT/probe" --bits "$BITS"
[ -d "$OUT/index" ] || $H build "$OUT/db.h5" "$OUT/probe" "$OUT/index"
echo "--- three queries, top 5 each"
$H query "$OUT/index" --embeddings "$OUT/q.h5" --limit 3 -k 5
echo "--- quality and speed (mAP@1000 over $NQ queries, $DB database images)"
$H evaluate "$OUT/index" "$OUT/q.h5" --topk 1000
echo "--- speed at scale: 1M synthetic codes vs float IndexFlatIP on 1M 1280-d vectors (same run)"
[ -f "$OUT/bench/report.md" ] || $H -q bench "$OUT/db.h5" "$OUT/q.h5" -o "$OUT/bench" --methods crovca --bits 16,64 \
  --scales 1000000 --speed-queries 200 --latency-queries 20 --nprobes 4
sed -n '/^## Speed/,/^## Targets/p' "$OUT/bench/report.md" | grep -E '^\| (scope|synthetic)'
echo "(full report: $OUT/bench/report.md)"
