#!/usr/bin/env bash
# One training command on a lent GPU machine (see tools/gpu/README.md). From the repo root:
#   MINUTES=7 bash tools/gpu/train.sh        (device tool: carry [".gpu/train", ".gpu/whl"])
# Starts from the shipped weights (or INIT), trains MINUTES with the usual warmup and final
# decay, and leaves in $OUT the EMA weights in half precision (a full checkpoint is ~4x the
# 16 MiB a returned file may have) and the loss log.
set -eo pipefail
. tools/gpu/setup.sh
: "${OUT:=/tmp/out}" "${MINUTES:=7}" "${BATCH:=16}" "${CROP:=256}" "${LR:=2e-4}" "${DEVICE:=cuda}"
mkdir -p "$OUT" /tmp/ck
python3 -m vaecodec train .gpu/train --out /tmp/ck/gpu.pt --device "$DEVICE" \
    --init-from "${INIT:-models/vaecodec-groups-vr.safetensors}" --minutes "$MINUTES" \
    ${STEPS:+--steps $STEPS} --batch-size "$BATCH" --crop "$CROP" --lr "$LR" \
    --decay-frac 0.2 --log "$OUT/gpu-train.csv"
python3 tools/gpu/shrink.py /tmp/ck/gpu.pt "$OUT/gpu-ema-fp16.pt"
