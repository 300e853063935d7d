#!/usr/bin/env bash
# One recipe on N nodes x G GPUs: srun starts one `accelerate launch` per node, which starts one
# process per GPU; every process trains data parallel and only global rank 0 writes the run.
#
#   sbatch --nodes=2 --gres=gpu:8 scripts/train.slurm.sh --recipe r4-joint --output-dir runs/r4-2x8
#   sbatch --nodes=2 --gres=gpu:8 scripts/train.slurm.sh --config configs/accelerate/zero2.yaml --recipe r2-vision-only
#   scripts/train.slurm.sh --dry-run --recipe r4-joint     # print the srun command (inside an allocation)
#
# The run directory (--output-dir) must be on a filesystem every node sees: multi-stage recipes load
# the previous stage from it on every node. Pass --output-dir so a requeued job finds it again.
#SBATCH --job-name=vlm-recipes
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --exclusive
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/train.slurm.sh [--config FILE] [--gpus-per-node G] [--port P] [--dry-run] TRAIN_ARGS...
  --config FILE       accelerate config (default configs/accelerate/ddp.yaml)
  --gpus-per-node G   processes per node (default: SLURM_GPUS_ON_NODE, else nvidia-smi's count)
  --port P            rendezvous port on the first node (default 29500)
  --dry-run           print the srun command and exit
TRAIN_ARGS go to scripts/train_recipe.py (--recipe ..., --output-dir ..., --set ...).
Slurm variables read: SLURM_JOB_NUM_NODES, SLURM_JOB_NODELIST (first host = rendezvous),
SLURM_GPUS_ON_NODE; SLURM_NODEID gives each node's machine rank. MASTER_ADDR overrides the host.
USAGE
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "error: $*" >&2; exit 2; }

CONFIG="$ROOT/configs/accelerate/ddp.yaml" GPUS="" PORT=29500 DRY_RUN=0 TRAIN=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --config) (($# >= 2)) || die "--config needs a file"; CONFIG="$2"; shift 2 ;;
    --gpus-per-node) (($# >= 2)) || die "--gpus-per-node needs a number"; GPUS="$2"; shift 2 ;;
    --port) (($# >= 2)) || die "--port needs a number"; PORT="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) TRAIN+=("$1"); shift ;;
  esac
done
((${#TRAIN[@]})) || { usage >&2; exit 2; }
[[ -f "$CONFIG" ]] || die "--config $CONFIG does not exist (see configs/accelerate/)"
[[ -n "${SLURM_JOB_NODELIST:-}" ]] || die "no SLURM_JOB_NODELIST: run inside a Slurm allocation (sbatch/salloc)"

NODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
if [[ -z "$GPUS" ]]; then
  GPUS="${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)}"
fi
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || die "could not tell the GPUs per node ('$GPUS'): pass --gpus-per-node"
MASTER="${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)}"

if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY="python3"; fi

# SLURM_NODEID differs per node: escaped here, expanded by each srun task's own shell
printf -v TRAIN_WORDS '%q ' "${TRAIN[@]}"
LAUNCH="$(printf '%q ' "$PY" -m accelerate.commands.launch --config_file "$CONFIG" \
  --num_machines "$NODES" --num_processes "$((NODES * GPUS))" --main_process_ip "$MASTER" \
  --main_process_port "$PORT" --rdzv_backend c10d --same_network)--machine_rank \$SLURM_NODEID \
$(printf '%q' "$ROOT/scripts/train_recipe.py") ${TRAIN_WORDS% }"
CMD=(srun --nodes="$NODES" --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c "$LAUNCH")

if ((DRY_RUN)); then
  echo "nodes: $NODES x $GPUS GPU(s) = $((NODES * GPUS)) processes; rendezvous $MASTER:$PORT"
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
exec "${CMD[@]}"
