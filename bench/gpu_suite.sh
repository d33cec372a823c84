#!/usr/bin/env bash
# The GPU suite: one prepared run for a lent GPU machine (one H100 or H200, 16 cores, no network, no hub) that
# fits in 10 minutes with its setup and writes a markdown table for BENCHMARKS.md to $OUT/gpu_suite.md
# (outputs/gpu_suite.md when OUT is unset). It measures, each in its own process with its own timeout (a run that
# fails or times out becomes a "failed: <reason>" cell and the suite goes on):
#   1. the defaults in bf16: `accelerate launch sft_chat.py` and sft_completion.py: wall time, held-out exact match
#   2. the presets zero2, zero3, fsdp2 and zero3_offload, --num_processes 1, on stand-ins of Qwen2.5-0.5B and
#      Qwen2.5-1.5B (bench/stand_in_model.py: real shapes, random weights): s/step, tokens/s, peak GPU memory
#   3. MFU of those runs against the GPU's bf16 matmul peak, measured first
#   4. packed batches with per-document attention against padded ones, 0.5B stand-in, one epoch: tokens/s
#
#   bash bench/gpu_suite.sh                  # on the GPU machine
#   bash bench/gpu_suite.sh --check          # anywhere, seconds: the plan, its PARAMS and presets, the table
#   bash bench/gpu_suite.sh --fetch-wheels   # where PyPI is reachable: outputs/wheels/ for a GPU machine offline
#
# Python: GPU_SUITE_PYTHON if set, else .venv when its torch sees a GPU, else the machine's python3 when its torch
# does; pip then installs what requirements.txt and requirements-deepspeed.txt need beyond that interpreter into
# the scratch folder (never torch: the machine's CUDA build stays), from outputs/wheels/ (GPU_SUITE_WHEELS) when it
# exists, else from the index. A machine without network needs that folder carried (run tool: carry
# ["outputs/wheels"]). With no CUDA torch anywhere, a new venv gets both requirement files from the index.
# Everything the suite writes (installs, models, data, caches, runs, logs) goes under outputs/gpu_suite/
# (GPU_SUITE_SCRATCH); the whole suite stops by GPU_SUITE_BUDGET_S seconds (570) after it starts.

set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
budget=${GPU_SUITE_BUDGET_S:-570}
mkdir -p "${GPU_SUITE_SCRATCH:-outputs/gpu_suite}/logs"
scratch=$(cd "${GPU_SUITE_SCRATCH:-outputs/gpu_suite}" && pwd)
wheels=${GPU_SUITE_WHEELS:-outputs/wheels}
table=${OUT:+$OUT/gpu_suite.md}
table=${table:-outputs/gpu_suite.md}

# No network at run time, and every cache in the scratch folder.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export HF_HOME="$scratch/hf_home" XDG_CACHE_HOME="$scratch/cache" PIP_CACHE_DIR="$scratch/cache/pip"
export TORCH_EXTENSIONS_DIR="$scratch/torch_extensions" TRITON_CACHE_DIR="$scratch/cache/triton"
export MPLCONFIGDIR="$scratch/cache/matplotlib" WANDB_DIR="$scratch/wandb"
# zero3_offload's CPU Adam is C++ only: a minor CUDA version gap between nvcc and torch must not stop its build.
export DS_SKIP_CUDA_CHECK=1
unset WANDB_PROJECT

case "${1:-}" in
    "") ;;
    --check) exec "${GPU_SUITE_PYTHON:-$(command -v python || command -v python3)}" bench/gpu_suite.py check \
        --scratch "$scratch/check" --table "$scratch/check/gpu_suite.md" ;;
    --fetch-wheels) exec "${GPU_SUITE_PYTHON:-$(command -v python || command -v python3)}" bench/gpu_suite.py wheels \
        --dest "$wheels" "${@:2}" ;;
    *) echo "usage: bash bench/gpu_suite.sh [--check | --fetch-wheels [REQUIREMENT...]]" >&2; exit 2 ;;
esac

rm -f "$table"  # a table left by an earlier run must not pass for this one's
setup_log=$scratch/logs/setup.log
: >"$setup_log"
cuda_torch() { "$1" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' >>"$setup_log" 2>&1; }
if [ -n "${GPU_SUITE_PYTHON:-}" ]; then
    py=$GPU_SUITE_PYTHON how="GPU_SUITE_PYTHON ($py)"
elif [ -x .venv/bin/python ] && cuda_torch .venv/bin/python; then
    py=$PWD/.venv/bin/python how="reused .venv"
elif command -v python3 >/dev/null && cuda_torch python3; then
    py=$(command -v python3) how="the machine's python3 and its CUDA torch ($py)"
else
    py=$scratch/venv/bin/python how="a new venv from requirements.txt and requirements-deepspeed.txt"
    python3 -m venv "$scratch/venv" >>"$setup_log" 2>&1 &&
        timeout $((budget - 120)) "$scratch/venv/bin/pip" install -q -r requirements.txt \
            -r requirements-deepspeed.txt >>"$setup_log" 2>&1 || how="$how (pip failed: see logs/setup.log)"
fi
mkdir -p "$scratch/site"
export PYTHONPATH="$scratch/site${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$scratch/site/bin:$(dirname "$py"):$PATH"  # ninja and the compilers' helpers beside the interpreter
echo "python: $how"
timeout 240 "$py" bench/gpu_suite.py setup --target "$scratch/site" --wheels "$wheels" --how "$how" \
    --summary "$scratch/setup.json" >>"$setup_log" 2>&1 || echo "setup did not finish: see $setup_log"
echo "setup: $(($(date +%s) - start)) s"

# The runner stops itself 30 s before the budget ends (each run's timeout is cut to fit); timeout is the backstop.
left=$((start + budget - $(date +%s)))
timeout -k 30 $((left > 30 ? left : 30)) "$py" bench/gpu_suite.py run --scratch "$scratch" --table "$table" \
    --setup "$scratch/setup.json" --deadline $((start + budget - 30)) --started "$start" 2>&1 | tee "$scratch/logs/suite.log"
status=$?
if [ ! -s "$table" ]; then
    mkdir -p "$(dirname "$table")"
    printf '## GPU suite\n\n| suite | result |\n|---|---|\n| bench/gpu_suite.sh | failed: %s |\n' \
        "$(tail -n 1 "$scratch/logs/suite.log" | tr '|' '/')" >"$table"
fi
if [ -n "${OUT:-}" ]; then
    cp "$scratch/results.json" "$OUT/gpu_suite_results.json" 2>/dev/null
    tar -czf "$OUT/gpu_suite_logs.tar.gz" -C "$scratch" logs
fi
cat "$table"
echo "suite: $(($(date +%s) - start)) s, exit status $status; table: $table"
exit "$status"
