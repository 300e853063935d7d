#!/usr/bin/env bash
# Checks the data-parallel path on a machine with 2+ GPUs (NCCL), where CI (CPU, gloo) cannot:
#   scripts/check_multi_gpu.sh [OUT_DIR]
# 1. r2-vision-only, r4-joint and mrl on --gpu 0,1 at per-device batch 4 against --gpu 0 at batch 8:
#    per-step losses equal (rel 1e-3: bf16 and NCCL reductions are not bit-exact), one metrics.json.
# 2. FSDP2 (--accelerate-config configs/accelerate/fsdp.yaml) on r2-vision-only (sharded full fine-tune)
#    and r4-joint (4-bit + LoRA) against the same 1-GPU runs: losses equal (rel 1e-3), and `evaluate`
#    on the saved model/ reproduces the run's fine-tuned mean IoU (the gathered weights were saved).
# 3. accelerate launch with zero3.yaml fails with one line and exit code 2.
# 4. Packed batches (train.packing, D31): a real-size random-init Qwen2-VL-2B, padding-free rows through
#    FlashAttention-2's varlen path against the padded batch through SDPA: loss (rel 2e-3, bf16) and the
#    logits of every real token (scripts/check_packing_gpu.py; needs flash-attn; runs alone on 1 GPU).
# Exit 0 when every check passes. About 5 minutes on 2 GPUs (tiny base, tiny data).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
OUT="${1:-$(mktemp -d /tmp/check-multi-gpu-XXXX)}"
SMALL=(--no-wandb --max-steps 6 --set data.num_train=64 --set data.num_test=9 --set eval.batch_size=4
       --set train.logging_steps=1 --set lora.dropout=0.0 --set model.dtype=float32)
count=$(nvidia-smi -L | grep -c '^GPU ' || true)
((count >= 2)) || { echo "error: needs 2 GPUs, found $count" >&2; exit 2; }
FAILED=0

compare() {  # DIR_A DIR_B: same per-step losses, one complete run each
  "$PY" - "$1" "$2" <<'PY'
import json, sys
from pathlib import Path
a, b = (Path(p) for p in sys.argv[1:])
loss = lambda d: [e["loss"] for e in json.loads((d / "train_log.json").read_text()) if "loss" in e]
assert all(json.loads((d / "status.json").read_text())["state"] == "complete" for d in (a, b))
la, lb = loss(a), loss(b)
worst = max(abs(x - y) / abs(y) for x, y in zip(la, lb))
print(f"  losses 2 GPUs {['%.5f' % x for x in la]}\n  losses 1 GPU  {['%.5f' % x for x in lb]}\n  max rel diff {worst:.2e}")
sys.exit(0 if len(la) == len(lb) and worst <= 1e-3 else 1)
PY
}

for recipe in r2-vision-only r4-joint mrl; do
  echo "== $recipe: --gpu 0,1 x 4 vs --gpu 0 x 8"
  "$PY" "$ROOT/scripts/train_recipe.py" --recipe "$recipe" --gpu 0,1 "${SMALL[@]}" \
    --set train.per_device_train_batch_size=4 --output-dir "$OUT/$recipe-2gpu" >"$OUT/$recipe-2gpu.log" 2>&1 || FAILED=1
  "$PY" "$ROOT/scripts/train_recipe.py" --recipe "$recipe" --gpu 0 "${SMALL[@]}" \
    --set train.per_device_train_batch_size=8 --output-dir "$OUT/$recipe-1gpu" >"$OUT/$recipe-1gpu.log" 2>&1 || FAILED=1
  compare "$OUT/$recipe-2gpu" "$OUT/$recipe-1gpu" || { echo "  FAILED (logs in $OUT)"; FAILED=1; }
done

for recipe in r2-vision-only r4-joint; do
  echo "== $recipe: FSDP2 on --gpu 0,1 x 4 vs --gpu 0 x 8"
  "$PY" "$ROOT/scripts/train_recipe.py" --recipe "$recipe" --gpu 0,1 "${SMALL[@]}" \
    --accelerate-config "$ROOT/configs/accelerate/fsdp.yaml" \
    --set train.per_device_train_batch_size=4 --output-dir "$OUT/$recipe-fsdp" >"$OUT/$recipe-fsdp.log" 2>&1 || FAILED=1
  compare "$OUT/$recipe-fsdp" "$OUT/$recipe-1gpu" || { echo "  FAILED (logs in $OUT)"; FAILED=1; }
  "$PY" -m vlm_recipes evaluate --model "$OUT/$recipe-fsdp/model" --dataset synthetic --device cuda \
    --out "$OUT/$recipe-fsdp-evaluate" >"$OUT/$recipe-fsdp-evaluate.log" 2>&1 || FAILED=1
  "$PY" - "$OUT/$recipe-fsdp" <<'PY' || { echo "  FAILED: the saved model does not score what the run did"; FAILED=1; }
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
ran = json.loads((run / "metrics.json").read_text())["finetuned"]["mean_iou"]
saved = json.loads(Path(f"{run}-evaluate/metrics.json").read_text())["metrics"]["mean_iou"]
print(f"  fine-tuned mean IoU: run {ran:.4f}, saved model {saved:.4f}")
sys.exit(0 if abs(ran - saved) <= 0.02 else 1)
PY
done

for config in zero3; do
  echo "== $config.yaml is refused with one line"
  set +e
  "$PY" -m accelerate.commands.launch --config_file "$ROOT/configs/accelerate/$config.yaml" --num_processes 2 \
    "$ROOT/scripts/train_recipe.py" --recipe r2-vision-only "${SMALL[@]}" --output-dir "$OUT/$config" \
    >"$OUT/$config.log" 2>&1
  code=$?
  set -e
  lines=$(grep -c '^error: ' "$OUT/$config.log" || true)
  if ((code != 0 && lines == 1)); then echo "  ok: $(grep '^error: ' "$OUT/$config.log")"
  else echo "  FAILED: exit $code, $lines error line(s) (log $OUT/$config.log)"; FAILED=1; fi
done
echo "== packed (FlashAttention-2, padding-free) vs padded (SDPA) loss on a real-size Qwen2-VL-2B"
"$PY" "$ROOT/scripts/check_packing_gpu.py" --device cuda --attn flash_attention_2 || { echo "  FAILED"; FAILED=1; }
exit $FAILED
