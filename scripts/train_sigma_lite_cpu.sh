#!/usr/bin/env bash
# Reproduce sigma-lite on a CPU: cache → Stage I → Stage II → evaluation on ../shared/data/eval.
# Usage: scripts/train_sigma_lite_cpu.sh [stage1 overrides...]   (run from the repository root)
# OMP_WAIT_POLICY=PASSIVE: on a shared 2-core machine spinning OpenMP threads are 5x slower.
set -euo pipefail
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
SHARED=${SIGMA_SHARED:-../shared}
S1_STEPS=${S1_STEPS:-700}
S2_STEPS=${S2_STEPS:-180}
if [ ! -f runs/cache/photos384/index.json ]; then
  sigma synth --build-cache runs/cache/photos384 --photos "$SHARED/data/photos" --max-side 384 --scales 1.0,0.5 --latent-edits 1
fi
if [ -f runs/sigma-lite-stage1/checkpoint.pt ]; then sigma train --resume runs/sigma-lite-stage1
else sigma train configs/train/sigma-lite-stage1.yaml steps="$S1_STEPS" "$@"; fi
if [ -f runs/sigma-lite-stage2/checkpoint.pt ]; then sigma train --resume runs/sigma-lite-stage2
else sigma train configs/train/sigma-lite-stage2.yaml steps="$S2_STEPS"; fi
for run in sigma-lite-stage2 sigma-lite-stage1; do
  sigma eval --data "$SHARED/data/eval" --annotator sigma-lite --set options.weights="runs/$run/final" \
    --perturb none,vae,jpeg75,resize --out "runs/eval-$run" > "runs/eval-$run.txt" 2>&1 || true
done
