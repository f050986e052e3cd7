#!/usr/bin/env bash
# Everything issues #4 (profile) and #5 (plan) need measured on a GPU, in ONE device-tool run, most
# important first, each step cut off so the whole run ends within BUDGET_S seconds (default 500).
#
#   here:    scripts/fetch_gpu_wheels.sh
#   device:  run(command="bash scripts/gpu_session.sh", carry=[".whl"], timeout_s=600)
#   here:    tar xzf <files_at>/gpu-reports.tar.gz   # -> reports/gpu/, then commit
#
# 1. the CUDA context of the card (memprof gpus --measure-context; a --gpu-file entry for plan)
# 2. plan vs profile, Llama-3.2-1B shape: infer / lora (bf16) / qlora (nf4-dq) at seq 512, 1024, 2048
# 3. profile Llama-3.2-1B shape at all five settings (LoRA, QLoRA on 4-bit), batch 1 x 512
# 4. plan vs profile, Qwen2.5-0.5B (a second architecture)
# 5. profile Qwen2.5-0.5B at all five settings; 6. full fine-tune; 7. batch 4 x 2048 with checkpointing;
# 8. generate 128 tokens (prefill, decode, KV cache) at bf16 and nf4; 9. the FSDP2 path in one rank
# (world size 1: one GPU is what is lent); 10. offload under a 1 GiB budget
# Models are random weights made from the catalog configs: nothing is downloaded.
#
# Before any of that, scripts/gpu_preflight.py imports everything the steps need (memprof.cli, pynvml,
# accelerate, bitsandbytes, peft, transformers at memprof's pins) and checks torch sees the GPU; on
# failure the run stops at once with that one line and exit 4. DRY_RUN=1 (tests/test_gpu_session.py,
# on the CPU) installs nothing and runs every memprof line through scripts/memprof_argcheck.py, which
# parses it with memprof's own parser and measures nothing; it exits 1 if any line does not parse.
set -uo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS  # the budget counts the set-up (wheels, preflight) too
BUDGET_S=${BUDGET_S:-500}
DRY_RUN=${DRY_RUN:-0}
OUT=${OUT:-/tmp/memprof-gpu-out}
mkdir -p "$OUT" reports/gpu
LOG="$OUT/session.log"
if [ -d .whl ] && [ "$DRY_RUN" != 1 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed" | tee -a "$LOG"; exit 3; }
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
# No process but a worker may initialise CUDA (the parent's context would be in the workers' NVML
# peaks; the fork server's would break every worker): torch.cuda.is_available() asks NVML, not CUDA.
# CUDA numbers the cards in PCI order, as NVML does, so the parent can name the card without CUDA.
export PYTORCH_NVML_BASED_CUDA_CHECK=1 CUDA_DEVICE_ORDER=PCI_BUS_ID
export PYTHONUNBUFFERED=1 MEMPROF_CACHE_DIR=/tmp/memprof-cache COLUMNS=160
PY=${PY:-python3}
MEMPROF=("$PY" -m memprof)
preflight_args=()
if [ "$DRY_RUN" = 1 ]; then
    MEMPROF=("$PY" scripts/memprof_argcheck.py)
    preflight_args=(--no-gpu)
fi
date -u | tee -a "$LOG"
preflight=$("$PY" scripts/gpu_preflight.py ${preflight_args[@]+"${preflight_args[@]}"} 2>>"$LOG")
preflight_rc=$?
echo "${preflight:-preflight FAILED: scripts/gpu_preflight.py printed nothing (exit $preflight_rc)}" | tee -a "$LOG"
[ "$preflight_rc" -eq 0 ] || exit 4
[ "$DRY_RUN" = 1 ] || nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1 | tee -a "$LOG"

step() {  # step NAME CMD...: run with what is left of the budget; a failure does not stop the others
    local name=$1; shift
    local left=$(( BUDGET_S - (SECONDS - started) ))
    if [ "$left" -lt 40 ]; then echo "== $name: skipped, ${left}s of the budget left" | tee -a "$LOG"; return; fi
    echo "== $name ($left s left): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=15 "$left" "$@" >>"$LOG" 2>&1
    local rc=$?
    [ "$rc" -eq 0 ] || failed+=("$name")
    echo "== $name: exit $rc after $(( SECONDS - t0 ))s" | tee -a "$LOG"
}
failed=()
L=meta-llama/Llama-3.2-1B
Q=Qwen/Qwen2.5-0.5B
ALL=fp32,bf16,int8,nf4,nf4-dq
step context "${MEMPROF[@]}" gpus --measure-context --json --out reports/gpu/cuda-context.json
step validate-llama "${MEMPROF[@]}" validate $L --device cuda --seqs 512,1024,2048 --format md \
    --out reports/gpu/validate-llama-3.2-1b.md --save reports/gpu/validate-llama-3.2-1b.json
step profile-llama "${MEMPROF[@]}" profile $L --device cuda --settings $ALL --train lora --seq 512 --repeats 5 \
    --out reports/gpu/profile-llama-3.2-1b-lora.json --format md
step validate-qwen "${MEMPROF[@]}" validate $Q --device cuda --seqs 512,1024,2048 --format md \
    --out reports/gpu/validate-qwen2.5-0.5b.md --save reports/gpu/validate-qwen2.5-0.5b.json
step profile-qwen "${MEMPROF[@]}" profile $Q --device cuda --settings $ALL --train lora --seq 512 --repeats 5 \
    --out reports/gpu/profile-qwen2.5-0.5b-lora.json --format md
step profile-full "${MEMPROF[@]}" profile $L --device cuda --settings fp32,bf16 --train full --seq 512 --repeats 5 \
    --out reports/gpu/profile-llama-3.2-1b-full.json --format md
step profile-llama-b4-gc "${MEMPROF[@]}" profile $L --device cuda --settings $ALL --train lora --batch 4 --seq 2048 \
    --grad-checkpointing --repeats 3 --out reports/gpu/profile-llama-3.2-1b-lora-b4s2048-gc.json --format md
step generate "${MEMPROF[@]}" profile $L --device cuda --settings bf16,nf4 --train none --seq 512 --generate 128 \
    --repeats 3 --out reports/gpu/profile-llama-3.2-1b-generate.json --format md
step fsdp-smoke "${MEMPROF[@]}" profile $L --device cuda --settings bf16 --train full --seq 512 --repeats 3 \
    --nproc 1 --shard fsdp --out reports/gpu/profile-llama-3.2-1b-fsdp-1rank.json --format md
step offload "${MEMPROF[@]}" profile $L --device cuda --settings bf16,nf4 --train none --max-gpu-memory 1GiB \
    --out reports/gpu/profile-llama-3.2-1b-offload.json --format md
jsons=(reports/gpu/profile-*.json)
[ "$DRY_RUN" = 1 ] && jsons=(reports/gpu/profile-dry-run.json)  # no run made one: check the line anyway
for json in "${jsons[@]}"; do  # Markdown beside each saved profile (stdout went to the log)
    if [ -f "$json" ] || [ "$DRY_RUN" = 1 ]; then
        "${MEMPROF[@]}" report "$json" --format md --out "${json%.json}.md" >>"$LOG" 2>&1 || failed+=("report $json")
    fi
done
if [ "$DRY_RUN" = 1 ]; then
    echo "dry run: ${#failed[@]} line(s) failed to parse${failed[*]:+: ${failed[*]}}" | tee -a "$LOG"
    [ "${#failed[@]}" -eq 0 ]
    exit
fi
tar czf "$OUT/gpu-reports.tar.gz" reports/gpu
echo "done in $(( SECONDS - started ))s; failed: ${failed[*]:-none}; reports/gpu packed into $OUT/gpu-reports.tar.gz" \
    | tee -a "$LOG"
