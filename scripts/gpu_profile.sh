#!/usr/bin/env bash
# Run `memprof profile` on a GPU machine (H100/H200) and save JSON + Markdown under reports/.
#
#   scripts/gpu_profile.sh            # from the repository root, with memprof installed (or .venv/)
#
# Llama-3.2-1B-shaped random weights (the catalog config; nothing is downloaded) at all five
# settings, LoRA/QLoRA and full training, plus a second architecture (Qwen2.5-0.5B) and an
# offload run under a T4-sized budget. Each run writes reports/<name>.json (the session, re-render
# with `memprof report FILE --format md|html`) and reports/<name>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
STAMP=$(date +%Y%m%d)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_' )
mkdir -p reports

run() {  # run NAME ARGS...: profile, save JSON, render Markdown; a failing run does not stop the rest
  local name=$1; shift
  local json="reports/profile-${name}-${GPU}-${STAMP}.json"
  echo "== $name: memprof profile $*" >&2
  local rc=0
  "$PY" -m memprof profile "$@" --device cuda --out "$json" --format md > "${json%.json}.md" || rc=$?
  case $rc in
    0) echo "   wrote $json and ${json%.json}.md" >&2 ;;
    1) echo "   some settings failed (their rows say why); wrote $json and ${json%.json}.md" >&2 ;;
    *) echo "   FAILED (exit $rc): see above; partial results, if any, are in $json" >&2 ;;
  esac
}

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name())"

# 1. Llama-3.2-1B shape, all five settings, QLoRA on the 4-bit ones, batch 1 x 512 and 4 x 2048
run llama-3.2-1b-lora meta-llama/Llama-3.2-1B --settings fp32,bf16,int8,nf4,nf4-dq --train lora --batch 1 --seq 512
run llama-3.2-1b-lora-b4s2048-gc meta-llama/Llama-3.2-1B --settings fp32,bf16,int8,nf4,nf4-dq --train lora \
    --batch 4 --seq 2048 --grad-checkpointing
# 2. full fine-tuning where it is defined (fp32/bf16)
run llama-3.2-1b-full meta-llama/Llama-3.2-1B --settings fp32,bf16 --train full --batch 1 --seq 512
# 3. a second architecture
run qwen2.5-0.5b-lora Qwen/Qwen2.5-0.5B --settings fp32,bf16,int8,nf4,nf4-dq --train lora --batch 1 --seq 512
# 4. CPU offload under a T4-sized budget (15 GiB is more than 1B needs: use 1GiB to force offload)
run llama-3.2-1b-offload meta-llama/Llama-3.2-1B --settings bf16,nf4 --train none --max-gpu-memory 1GiB

# 5. memprof's own prediction error on the GPU: plan's predicted peak vs the measured allocator peak
#    (with reserved and NVML peaks, fragmentation and context) for infer / lora / qlora
validate_run() {  # validate_run NAME MODEL: writes reports/validate-cuda-NAME-GPU-DATE.{md,json}
  local name=$1 model=$2
  local base="reports/validate-cuda-${name}-${GPU}-${STAMP}"
  echo "== $name: memprof validate $model --device cuda --seqs 512,1024,2048" >&2
  local rc=0
  "$PY" -m memprof validate "$model" --device cuda --seqs 512,1024,2048 --format md --out "$base.md" \
      --save "$base.json" || rc=$?
  case $rc in
    0) echo "   wrote $base.md and $base.json" >&2 ;;
    1) echo "   some rows failed (they say why); wrote $base.md and $base.json" >&2 ;;
    *) echo "   FAILED (exit $rc): see above" >&2 ;;
  esac
}
validate_run llama-3.2-1b meta-llama/Llama-3.2-1B
validate_run qwen2.5-0.5b Qwen/Qwen2.5-0.5B
