#!/usr/bin/env bash
# Run recipes (one, all in turn, or several at once) and print one leaderboard.
#
#   scripts/run_recipes.sh r4 0,1
#   scripts/run_recipes.sh all -- --max-steps 20
#   scripts/run_recipes.sh parallel r1 r2 -- --max-steps 20 --set data.num_train=64
set -uo pipefail

usage() {
  cat <<'EOF'
Usage:
  scripts/run_recipes.sh [OPTIONS] RECIPE [GPUS]       [-- TRAIN_ARGS...]
  scripts/run_recipes.sh [OPTIONS] all [GPUS]          [-- TRAIN_ARGS...]
  scripts/run_recipes.sh [OPTIONS] parallel [RECIPES...] [-- TRAIN_ARGS...]

Modes
  RECIPE [GPUS]   one recipe, e.g. `r4 0,1` (data parallel on GPUs 0 and 1) or `r2 cpu`. Without GPUS the
                  trainer picks (the visible GPUs, else the CPU).
  all [GPUS]      every recipe in src/vlm_recipes/recipes/, one after another, each on GPUS.
                  A failed run does not stop the others.
  parallel [RECIPES...]
                  several recipes at once (default: every recipe). With GPUs, each run gets its
                  own group and trains data parallel on it (one process per GPU of the group):
                  the GPUs are split evenly in contiguous blocks (4 GPUs, 2 runs: 0,1 and 2,3),
                  or as --gpu-groups says. On a CPU-only machine the runs share
                  the CPU: each gets OMP_NUM_THREADS = cores / runs (at least 1).

Recipes are names from `python scripts/train_recipe.py --list` (r1-llm-only, mrl, ...), short
names r1..r9 (= the recipe whose name starts with `rN-`), or paths to recipe .yaml files.

Every run has its own directory SWEEP/<recipe>/ and log SWEEP/<recipe>.log, under the sweep
directory SWEEP (default runs/sweep-<YYYYmmdd-HHMMSS>). At the end the leaderboard of all the
runs is printed and written to SWEEP/leaderboard.{md,csv,png} (scripts/compare_runs.py).
Arguments after `--` go to every scripts/train_recipe.py call, e.g.
  -- --max-steps 20 --set data.num_train=64 --no-wandb
(--output-dir and --gpu are set by this script and may not be passed there.)

Options
  --out DIR             sweep directory (default runs/sweep-<time>); must not exist or be empty
  --gpu-groups G1:G2..  parallel mode: GPU group per run, e.g. 0,1:2,3 (one group per run)
  --dry-run             print the commands (with their environment) and exit without running
  -h, --help            this help

Environment
  PYTHON                interpreter (default .venv/bin/python, else python3)
  RUN_RECIPES_GPU_COUNT / RUN_RECIPES_CPU_COUNT
                        override the detected GPU / CPU-core count (tests, dry runs)

Signals: SIGTERM/SIGINT go to every running recipe, which saves a checkpoint and stops; the
sweep waits for them, starts no further recipe, prints the leaderboard of what finished, and
exits 143/130. Continue a run with scripts/train_recipe.py --resume SWEEP/<recipe>.

Exit status: 0 when every run completed; 1 when any run failed (see its log); 2 on bad arguments;
143 / 130 when stopped by SIGTERM / SIGINT.
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RECIPE_DIR="$ROOT/src/vlm_recipes/recipes"

die() { echo "error: $*" >&2; exit 2; }

# --- arguments --------------------------------------------------------------------------------
OUT="" GPU_GROUPS="" DRY_RUN=0
POSITIONAL=() EXTRA=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --out) (($# >= 2)) || die "--out needs a directory"; OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#--out=}"; shift ;;
    --gpu-groups) (($# >= 2)) || die "--gpu-groups needs a value such as 0,1:2,3"; GPU_GROUPS="$2"; shift 2 ;;
    --gpu-groups=*) GPU_GROUPS="${1#--gpu-groups=}"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) die "unknown option $1 (see --help); arguments for train_recipe.py go after --" ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done
((${#POSITIONAL[@]})) || { usage >&2; exit 2; }

for arg in "${EXTRA[@]}"; do
  case "$arg" in
    --output-dir|--output-dir=*|--gpu|--gpu=*) die "$arg after --: run_recipes.sh sets it per run (use --out / GPUS)" ;;
  esac
done

if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY="python3"; fi

# by name (mrl before mrl-distill, which learns from it), not by file name (mrl-distill.yaml < mrl.yaml)
all_recipes() { local f; for f in "$RECIPE_DIR"/*.yaml; do basename "$f" .yaml; done | LC_ALL=C sort; }

# resolve NAME -> "name|recipe argument" (the run directory name, and what --recipe gets)
resolve() {
  local name="$1" matches
  if [[ "$name" == *.yaml || "$name" == *.yml ]]; then
    [[ -f "$name" ]] || die "recipe file $name does not exist"
    echo "$(basename "${name%.*}")|$name"; return
  fi
  if [[ -f "$RECIPE_DIR/$name.yaml" ]]; then echo "$name|$name"; return; fi
  if [[ "$name" =~ ^r[0-9]+$ ]]; then
    matches=("$RECIPE_DIR/$name"-*.yaml)
    if ((${#matches[@]} == 1)) && [[ -f "${matches[0]}" ]]; then
      name="$(basename "${matches[0]}" .yaml)"; echo "$name|$name"; return
    fi
  fi
  die "unknown recipe '$name': choose one of $(all_recipes | tr '\n' ' ')(or r1..r4, or a .yaml path)"
}

check_gpus() {  # GPU ids like 0,1 or "cpu"
  [[ "$1" == cpu || "$1" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "GPUS '$1': expected ids like 0 or 0,1, or cpu"
}

gpu_count() {
  if [[ -n "${RUN_RECIPES_GPU_COUNT:-}" ]]; then echo "$RUN_RECIPES_GPU_COUNT"
  elif command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
  else echo 0; fi
}
cpu_count() { echo "${RUN_RECIPES_CPU_COUNT:-$(nproc 2>/dev/null || echo 1)}"; }

MODE="${POSITIONAL[0]}"
NAMES=() ARGS=() GPUS_OF=() THREADS=""
case "$MODE" in
  all|parallel)
    if [[ "$MODE" == all ]]; then
      ((${#POSITIONAL[@]} <= 2)) || die "all takes at most one GPUS argument, got: ${POSITIONAL[*]:1}"
      GPU="${POSITIONAL[1]:-}"; [[ -z "$GPU" ]] || check_gpus "$GPU"
      LIST=($(all_recipes))
    else
      LIST=("${POSITIONAL[@]:1}"); ((${#LIST[@]})) || LIST=($(all_recipes))
    fi ;;
  *)
    ((${#POSITIONAL[@]} <= 2)) || die "one recipe takes at most one GPUS argument (for several recipes use parallel)"
    GPU="${POSITIONAL[1]:-}"; [[ -z "$GPU" ]] || check_gpus "$GPU"
    LIST=("$MODE") ;;
esac
for item in "${LIST[@]}"; do
  resolved="$(resolve "$item")" || exit 2
  name="${resolved%%|*}"
  for seen in "${NAMES[@]}"; do [[ "$seen" != "$name" ]] || die "recipe $name is listed twice"; done
  NAMES+=("$name"); ARGS+=("${resolved#*|}")
done

# --- devices per run --------------------------------------------------------------------------
RUNS=${#NAMES[@]}
if [[ "$MODE" == parallel ]]; then
  GPUS_TOTAL=$(gpu_count)
  if [[ -n "$GPU_GROUPS" ]]; then
    IFS=':' read -r -a GROUPS_LIST <<<"$GPU_GROUPS"
    ((${#GROUPS_LIST[@]} == RUNS)) || die "--gpu-groups has ${#GROUPS_LIST[@]} group(s) for $RUNS run(s): give one per run"
    for g in "${GROUPS_LIST[@]}"; do check_gpus "$g"; GPUS_OF+=("$g"); done
  elif ((GPUS_TOTAL > 0)); then
    per=$((GPUS_TOTAL / RUNS))
    ((per >= 1)) || die "$RUNS runs at once need at least $RUNS GPUs (found $GPUS_TOTAL): run fewer recipes, or share GPUs with --gpu-groups"
    for ((i = 0; i < RUNS; i++)); do
      GPUS_OF+=("$(seq -s, $((i * per)) $((i * per + per - 1)))")
    done
  else
    CORES=$(cpu_count)
    THREADS=$((CORES / RUNS)); ((THREADS >= 1)) || THREADS=1
    for ((i = 0; i < RUNS; i++)); do GPUS_OF+=("cpu"); done
  fi
else
  [[ -z "$GPU_GROUPS" ]] || die "--gpu-groups is for parallel mode; give GPUS after the recipe instead"
  for ((i = 0; i < RUNS; i++)); do GPUS_OF+=("${GPU:-}"); done
fi

SWEEP="${OUT:-$ROOT/runs/sweep-$(date +%Y%m%d-%H%M%S)}"
if [[ -e "$SWEEP" && -n "$(ls -A "$SWEEP" 2>/dev/null)" ]]; then
  die "sweep directory $SWEEP already holds files: pass another --out"
fi

command_for() {  # index -> the train command, one word per line
  local i=$1
  printf '%s\n' "$PY" "$ROOT/scripts/train_recipe.py" --recipe "${ARGS[$i]}" --output-dir "$SWEEP/${NAMES[$i]}"
  [[ -z "${GPUS_OF[$i]}" ]] || printf '%s\n' --gpu "${GPUS_OF[$i]}"
  ((${#EXTRA[@]} == 0)) || printf '%s\n' "${EXTRA[@]}"
  teacher_for "$i"
}

# mrl-distill learns from a teacher: the sweep's own mrl run when it trains one first (`all`, which
# runs mrl before mrl-distill), unless a teacher is named after --; otherwise name it yourself:
#   scripts/run_recipes.sh mrl-distill -- --set objective.options.teacher=runs/<mrl run>/model
teacher_for() {  # index -> "--set objective.options.teacher=SWEEP/mrl/model" when that applies
  local i=$1 j arg
  [[ "${NAMES[$i]}" == mrl-distill && "$MODE" != parallel ]] || return 0
  for arg in "${EXTRA[@]}"; do [[ "$arg" != objective.options.teacher=* ]] || return 0; done
  for ((j = 0; j < i; j++)); do
    if [[ "${NAMES[$j]}" == mrl ]]; then printf '%s\n' --set "objective.options.teacher=$SWEEP/mrl/model"; return 0; fi
  done
}

ENV_PREFIX=()
[[ -z "$THREADS" ]] || ENV_PREFIX=(env "OMP_NUM_THREADS=$THREADS" "MKL_NUM_THREADS=$THREADS")

quoted() { local out; printf -v out '%q ' "$@"; echo "${out% }"; }
RUN_DIRS=(); for name in "${NAMES[@]}"; do RUN_DIRS+=("$SWEEP/$name"); done
if ((DRY_RUN)); then
  echo "mode: $([[ $MODE == all || $MODE == parallel ]] && echo "$MODE" || echo single), $RUNS run(s), sweep directory $SWEEP"
  for ((i = 0; i < RUNS; i++)); do
    mapfile -t cmd < <(command_for "$i")
    echo "$(quoted "${ENV_PREFIX[@]}" "${cmd[@]}") > $(quoted "$SWEEP/${NAMES[$i]}.log")"
  done
  quoted "$PY" "$ROOT/scripts/compare_runs.py" "${RUN_DIRS[@]}" --out-dir "$SWEEP"
  exit 0
fi

# --- running ----------------------------------------------------------------------------------
# Each run starts in the background and the script waits for it: bash runs a trap only between
# commands, so a foreground run would hold a SIGTERM back until it ended. On SIGTERM/SIGINT the
# signal goes to every run (each saves a checkpoint and writes status.json "interrupted"), the
# script waits for them, starts no further recipe, prints the leaderboard of what finished and
# exits 128 + the signal (143 / 130).
mkdir -p "$SWEEP"
declare -a STATUS SECONDS_OF START PIDS=()
STOPPED=""
on_signal() {
  [[ -n "$STOPPED" ]] || echo "received SIG$1: stopping the runs (each saves a checkpoint; resume with --resume)" >&2
  STOPPED=$1
  local pid; for pid in "${PIDS[@]}"; do [[ -z "$pid" ]] || kill -s "$1" "$pid" 2>/dev/null; done
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

start_run() {  # index [tee]: start run i in the background, its output to its log (and the terminal)
  local i=$1 log="$SWEEP/${NAMES[$1]}.log"
  mapfile -t cmd < <(command_for "$i")
  START[$i]=$(date +%s)
  if [[ "${2:-}" == tee ]]; then "${ENV_PREFIX[@]}" "${cmd[@]}" > >(tee "$log") 2>&1 &
  else "${ENV_PREFIX[@]}" "${cmd[@]}" >"$log" 2>&1 &
  fi
  PIDS[$i]=$!
}

wait_run() {  # index: wait for run i to end (a trapped signal interrupts `wait`: wait again)
  local i=$1 pid=${PIDS[$1]} rc
  while :; do
    wait "$pid"; rc=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  STATUS[$i]=$rc
  SECONDS_OF[$i]=$(($(date +%s) - START[$i]))
}

if [[ "$MODE" == parallel ]]; then
  for ((i = 0; i < RUNS; i++)); do
    start_run "$i"
    echo "started ${NAMES[$i]} (pid ${PIDS[$i]}, ${GPUS_OF[$i]:-default device}${THREADS:+, $THREADS thread(s)}), log $SWEEP/${NAMES[$i]}.log"
  done
  for ((i = 0; i < RUNS; i++)); do
    wait_run "$i"
    echo "finished ${NAMES[$i]}: exit ${STATUS[$i]} after ${SECONDS_OF[$i]} s"
  done
else
  for ((i = 0; i < RUNS; i++)); do
    [[ -z "$STOPPED" ]] || break
    echo "=== ${NAMES[$i]} (log $SWEEP/${NAMES[$i]}.log)"
    start_run "$i" tee
    wait_run "$i"
  done
  wait  # the tee of the last run: its output is complete before the summary
fi

FAILED=0
echo
echo "## Runs"
for ((i = 0; i < RUNS; i++)); do
  if [[ -z "${STATUS[$i]:-}" ]]; then result="not started (the sweep was stopped)"; FAILED=1
  elif ((STATUS[i] == 0)); then result="ok"
  elif ((STATUS[i] == 130 || STATUS[i] == 143)); then
    result="interrupted (exit ${STATUS[$i]}): resume with scripts/train_recipe.py --resume $SWEEP/${NAMES[$i]}"; FAILED=1
  else result="FAILED (exit ${STATUS[$i]}, see $SWEEP/${NAMES[$i]}.log)"; FAILED=1; fi
  echo "- ${NAMES[$i]}: $result${SECONDS_OF[$i]:+, ${SECONDS_OF[$i]} s}"
done
echo
"$PY" "$ROOT/scripts/compare_runs.py" "${RUN_DIRS[@]}" --out-dir "$SWEEP"
COMPARE=$?
case "$STOPPED" in TERM) exit 143 ;; INT) exit 130 ;; esac
if ((FAILED)); then exit 1; fi
((COMPARE == 0)) || exit 1
exit 0
