#!/usr/bin/env bash
# GPU checks for a lent GPU machine (one H100 or H200, no network): the commands, each with what it must print.
# First run on one H200 on 2026-12-04: every check met its line (BENCHMARKS.md "GPU: bench/gpu_suite.sh").
# Run from the repository root with the project's pins installed (on a machine without network, from wheels
# fetched beforehand with `pip download`), and paste the tail of each log into BENCHMARKS.md with the date.
#
#   bash bench/gpu_suite.sh            # about 8 minutes (457 s on the H200); logs in $OUT (outputs/gpu_suite when unset)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-outputs/gpu_suite}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
common="overwrite=true progress_bar=false data_cache_dir=$out/data_cache"

check() {  # check NAME SECONDS COMMAND...: run it with a time limit, keep its log, print its last lines
    local name=$1 limit=$2
    shift 2
    /usr/bin/time -f "$name: %e s wall, %M KB peak RSS" timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "== $name (exit $?)"
    grep -E "held-out|saved|error:|wall" "$out/$name.log" | tail -5
}

# 1. The default chat SFT in bf16. Expect: "after: held-out exact match" >= 95% (98.5% on CPU in fp32) and
#    "saved outputs/gpu_suite/sft_chat/final".
check sft_chat 240 accelerate launch sft_chat.py output_dir="$out/sft_chat" $common
# 2. Completion SFT. Expect: "after: held-out exact match" >= 95% (99.0% on CPU).
check sft_completion 240 accelerate launch sft_completion.py output_dir="$out/sft_completion" $common
# 3. DPO from step 1. Expect: "after: held-out preference accuracy" not below its "before" line (100% both on
#    the H200: the SFT model already prefers the chosen answers) and "margin grew" on most pairs (82.0% there).
check dpo 120 accelerate launch dpo.py model="$out/sft_chat/final" output_dir="$out/dpo" \
    ref_cache_dir="$out/ref_cache" $common
# 4. ZeRO-3 on one GPU, a short run. Expect: "saved" and a final/ that loads (the held-out line is printed).
check zero3 120 accelerate launch --config_file configs/accelerate/zero3.yaml --num_processes 1 sft_chat.py \
    output_dir="$out/zero3" max_steps=30 $common
