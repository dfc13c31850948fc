#!/usr/bin/env bash
# All serving experiments of docs/benchmarks.md, in one run (about 20 minutes on 2 cores).
#   bash benchmarks/serving.sh [OUT_DIR]
# Deployments are never up together; each starts its own embedded Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-results/serving-$(date +%Y%m%d-%H%M)}
mkdir -p "$OUT"
export PATH="$PWD/.venv/bin:$PATH" TANDEM_KV_CACHE_GB=0.5
PY=.venv/bin/python
DEPLOY=(--deploy disaggregated http://127.0.0.1:8401/v1 "tandem up --port 8401"
        --deploy colocated http://127.0.0.1:8402/v1 "tandem up --colocated --port 8402")
MODEL=(--model SmolLM2-135M-Instruct)

echo "== 1. same workload, both modes, alternating" | tee "$OUT/log.txt"
$PY -m benchmarks.serving_experiments "${DEPLOY[@]}" --rounds 2 --out "$OUT/compare" \
    -- "${MODEL[@]}" --dataset random --input-len 256 --output-len 64 --concurrency 4 --num-requests 16 \
       --warmup 2 --no-progress 2>&1 | tee -a "$OUT/log.txt"

echo "== 2. goodput vs request rate" | tee -a "$OUT/log.txt"
$PY -m benchmarks.serving_experiments "${DEPLOY[@]}" --rounds 1 --sweep request-rate=0.5,1,2,4 \
    --out "$OUT/rates" -- "${MODEL[@]}" --dataset random --input-len 512 --output-len 48 \
       --num-requests 16 --warmup 2 --no-progress 2>&1 | tee -a "$OUT/log.txt"

echo "== 3. interference: decode streams while long prompts arrive" | tee -a "$OUT/log.txt"
$PY -m benchmarks.interference --rounds 2 --out "$OUT/interference" 2>&1 | tee -a "$OUT/log.txt"

echo "== 4. KV handoff cost" | tee -a "$OUT/log.txt"
TANDEM_DATA_DIR="$OUT/kv-data" tandem up --port 8403 > "$OUT/kv-up.log" 2>&1 &
UP=$!
for _ in $(seq 1 300); do curl -sf http://127.0.0.1:8403/ready > /dev/null && break; sleep 1; done
$PY -m benchmarks.kv_handoff --base-url http://127.0.0.1:8403/v1 --json "$OUT/kv_handoff.json" 2>&1 | tee -a "$OUT/log.txt"
kill -INT $UP; wait $UP || true
echo "results in $OUT"
