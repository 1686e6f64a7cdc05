#!/usr/bin/env bash
# One training command on a lent GPU machine (see tools/gpu/README.md). From the repo root:
#   MINUTES=8 bash tools/gpu/train.sh     (device tool: carry [".gpu/train", ".gpu/train_hq", ".gpu/whl"])
# Starts from the shipped weights (or INIT), trains MINUTES with the usual warmup and final
# decay on both photo sets (held-out photos are not packed), and leaves in $OUT the EMA
# weights in half precision (a full checkpoint is ~4x the 16 MiB a returned file may have)
# and the loss log.
set -eo pipefail
. tools/gpu/setup.sh
# The recipe (models/README.md, "Joint training"): crops of 192 (at 256 the 2x-downscaled
# pool of train/ holds only its 15 photos of 512 px and more), the noise rate term, float32
# (bfloat16 cost the top quality more in CPU runs), the transforms at a lower lr, each
# crop's cost over its own (power 1: every crop's relative gain alike, the low rates weigh
# as much as the high ones).
: "${OUT:=/tmp/out}" "${MINUTES:=8}" "${BATCH:=16}" "${CROP:=192}" "${LR:=1e-4}" \
  "${RATE:=noise}" "${TLR:=0.3}" "${BF16:=0}" "${COST_POWER:=1}" "${COST_SCALE:=crop}" "${DEVICE:=cuda}" "${LOG_EVERY:=200}"
mkdir -p "$OUT" /tmp/ck
DATA=(.gpu/train)
[ -d .gpu/train_hq ] && DATA+=(.gpu/train_hq)
python3 -m vaecodec train "${DATA[@]}" --out /tmp/ck/gpu.pt --device "$DEVICE" \
    --init-from "${INIT:-models/vaecodec-groups-vr.safetensors}" --minutes "$MINUTES" \
    ${STEPS:+--steps $STEPS} --batch-size "$BATCH" --crop "$CROP" --lr "$LR" \
    --rate "$RATE" --transform-lr "$TLR" --cost-power "$COST_POWER" --cost-scale "$COST_SCALE" --log-every "$LOG_EVERY" \
    $([ "$BF16" = 1 ] && echo --bf16 || echo --no-bf16) \
    --no-hold-out `# pack.py left the held-out photos out (by their PNG names)` \
    --decay-frac 0.2 --log "$OUT/gpu-train.csv"
python3 tools/gpu/shrink.py /tmp/ck/gpu.pt "$OUT/gpu-ema-fp16.pt"
