#!/usr/bin/env bash
# Issue 14's GPU try in one device slot (one call of at most 10 minutes): the sigma-lite II recipe (run g's data
# mix) at batch 64 / 256 px, from the shipped file, then the pre-registered gates scored on the same machine for
# the shipped file and the run's best and final weights. Everything is sized from the clock: the cache is built
# on the GPU, the check sets are written, the engine's pairs/s is measured, and the step count is chosen so the
# cosine schedule ends inside the slot (`max_minutes` is only the safety net: a cut schedule never anneals).
#
# Prepare here (not committed; ~45 MB, under the 64 MiB a call carries):
#   python scripts/pack_photos.py ../shared/data/photos .devpack/shared/data/photos
#   cp -r ../shared/weights/taef2 .devpack/shared/weights/
#   .whl/: pydantic, pydantic_core, annotated_types, typing_inspection, typing_extensions, pycocotools (cp312)
# Run (the device tool): bash scripts/gpu_trial.sh      carry: [".devpack", ".whl"]
# What comes back under $OUT: trial.log, gates.txt, best.tar / final.tar / model.tar (run folders' weights), logs.tar.
set -uo pipefail
T0=$(date +%s)
OUT=${OUT:-runs/gpu-trial-out}
WORK=${WORK:-runs/gpu-trial}
BUDGET=${BUDGET:-570}          # seconds the whole script may take
TAIL=${TAIL:-70}               # seconds kept after training: scoring the gates, copying back
WORKERS=${WORKERS:-14}
BATCH=${BATCH:-64}
CROP=${CROP:-256}
LR=${LR:-4e-4}
SEED=${SEED:-21}
INIT=${INIT:-sigma/weights/sigma-lite.safetensors}
EXTRA=${EXTRA:-}               # more training overrides, space-separated (e.g. a Stage II try: stage=II ema.enabled=true)
NDIV=${NDIV:-1}                # divides the check sets' sizes (a local dry run)
PHOTOS=${PHOTOS:-.devpack/shared/data/photos}
CACHE=${CACHE:-$WORK/cache}
export SIGMA_SHARED=${SIGMA_SHARED:-$PWD/.devpack/shared} PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd); WORK=$(cd "$WORK" && pwd)   # absolute: tar -C below moves between them
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/trial.log"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

if [ -d .whl ] && ! python3 -c "import pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { log "wheels did not install"; exit 3; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/scripts:$PWD${PYTHONPATH:+:$PYTHONPATH}
log "$(python3 -c 'import torch, sys; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")')"

# 1. the cache, on the GPU
python3 -m sigma synth --build-cache "$CACHE" --photos "$PHOTOS" --scales 1.0,0.75,0.5 --no-progress \
  >> "$OUT/trial.log" 2>&1 || { log "cache build failed"; exit 4; }
log "cache built"

# 2. the trial's config: the recipe's, reading the packed photos and this cache
CFG=$WORK/trial.yaml
sed -e "s#^  cache: .*#  cache: $CACHE#" -e "s#^  photos: .*#  photos: $PHOTOS#" configs/train/sigma-lite-ii.yaml > "$CFG"
VAL=$WORK/val
python3 - "$CFG" "$VAL/synth-ii-v2" $(( 192 / NDIV )) >> "$OUT/trial.log" 2>&1 <<'EOF' || { log "v2 failed"; exit 5; }
import sys
from _cli import write_check_set
write_check_set(sys.argv[1], sys.argv[2], int(sys.argv[3]), 12345, lambda data: {})
EOF
log "v2 written"
( nice -n 5 python3 scripts/write_margin_check.py "$CFG" "$VAL/margin-check" $(( 96 / NDIV )) 777 \
  && nice -n 5 python3 scripts/write_margin_check.py "$CFG" "$VAL/box-check" $(( 96 / NDIV )) 779 1.0 \
  && nice -n 5 python3 scripts/write_margin_check.py "$CFG" "$VAL/fill-check" $(( 240 / NDIV )) 780 0.0 1.0 \
  && nice -n 5 python3 scripts/write_online_vae_check.py "$CFG" "$VAL/online-vae-check" $(( 128 / NDIV )) 778 ) \
  > "$OUT/checksets.log" 2>&1 &
CHECKS=$!

# 3. pace: the engine's pairs/s with the training's settings, then the steps that fit
TRAIN_ARGS=(data.crop=$CROP data.mix.inpaint=0.16 data.mix.splice=0.16 data.inpaint_margin_p=0.6)
read -r -a EXTRA_ARGS <<< "$EXTRA"
TRAIN_ARGS+=("${EXTRA_ARGS[@]}")
log "overrides: ${TRAIN_ARGS[*]}"
RATE=$(python3 scripts/data_rate.py "$CFG" "$WORKERS" 12 "${TRAIN_ARGS[@]}" 2>> "$OUT/trial.log" | tail -1)
[[ "$RATE" =~ ^[0-9.]+$ ]] || { log "no pace measured: 100 pairs/s assumed"; RATE=100; }
# the network's side of the pace: a short probe of the real training (a Stage II teacher, say, can halve the
# rate the engine alone allows: gpu2 planned 1,476 steps from 270 pairs/s and ran 865 at 140 before max_minutes).
# The trainer logs cumulative pairs/s; the rate between the probe's middle and last log lines leaves out the start.
PROBE_STEPS=${PROBE_STEPS:-60}
python3 -m sigma train "$CFG" name=probe out_dir="$WORK/probe" init_from="$INIT" "${TRAIN_ARGS[@]}" \
  batch_size=$BATCH num_workers=$WORKERS lr=$LR warmup_steps=5 seed=$SEED steps=$PROBE_STEPS ckpt_every=$PROBE_STEPS \
  eval.every=0 eval.val_size=0 eval.val_dir="" log_every=10 > "$OUT/probe.log" 2>&1
PROBE=$(python3 scripts/probe_rate.py "$OUT/probe.log" "$BATCH" 2>> "$OUT/trial.log" | tail -1)
if [[ "$PROBE" =~ ^[0-9.]+$ ]] && python3 -c "import sys; sys.exit(not float('$PROBE') < float('$RATE'))"; then
  log "the training's own pace ${PROBE} pairs/s is below the engine's: sizing from 0.9 of it"
  RATE=$(python3 -c "print(f'{0.9 * float(\"$PROBE\"):.2f}')")
fi
rm -rf "$WORK/probe"
TRAIN_S=$(( $(left) - TAIL - 25 ))     # 25 s: the workers' start and the validations
STEPS=$(python3 -c "print(max(20, int(float('$RATE') * $TRAIN_S / $BATCH * 0.92)))")
EVERY=$(( STEPS / 3 ))
log "pace ${RATE} pairs/s; ${TRAIN_S}s to train: ${STEPS} steps of ${BATCH}"

# 4. train
python3 -m sigma train "$CFG" name=run out_dir="$WORK/runs" init_from="$INIT" \
  "${TRAIN_ARGS[@]}" batch_size=$BATCH num_workers=$WORKERS lr=$LR warmup_steps=30 seed=$SEED steps=$STEPS \
  ckpt_every=$EVERY eval.every=$EVERY eval.val_dir="$VAL/synth-ii-v2" eval.val_size=$(( 192 / NDIV )) \
  log_every=10 max_minutes=$(python3 -c "print(round($TRAIN_S / 60 + 0.3, 2))") > "$OUT/train.log" 2>&1
log "train exit $?"
RUN=$WORK/runs/run
wait $CHECKS; log "check sets exit $?"

# the weights first: a slot that ends during the scoring still brings them back
for m in best final model; do   # each a folder tar (model.safetensors + config.json), at most 16 MiB apiece
  [ -f "$RUN/$m/model.safetensors" ] && tar -cf "$OUT/$m.tar" -C "$RUN" "$m"
done

# 5. the gates, for the shipped file and the run's best, final (or, cut short, latest) weights
MODELS=(sigma/weights/sigma-lite.safetensors)
for m in best final model; do
  [ -f "$RUN/$m/model.safetensors" ] && { [ $m != model ] || [ ! -d "$RUN/final" ]; } && MODELS+=("$RUN/$m")
done
for set in synth-ii-v2 box-check margin-check online-vae-check fill-check; do
  [ -f "$VAL/$set/pairs.jsonl" ] || continue
  echo "## $set" >> "$OUT/gates.txt"
  python3 scripts/val_breakdown.py "$VAL/$set" "${MODELS[@]}" >> "$OUT/gates.txt" 2>> "$OUT/trial.log"
done
log "gates scored"
tar -cf "$OUT/logs.tar" -C "$OUT" train.log checksets.log -C "$RUN" metrics.jsonl best.json config.yaml 2>/dev/null
rm -f "$OUT/train.log" "$OUT/checksets.log"
log "done"
