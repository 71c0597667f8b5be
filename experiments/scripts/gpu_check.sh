#!/usr/bin/env bash
# The one GPU check (docs/gpu_check.md): QDyLoRA vs PEFT QLoRA on the LLaMA-2-7B shape, KronA vs PEFT LoKr at
# d = 4096, SoFT decoding full vs quarter depth, one rehearsed full-scale preset on the GPU in bf16.
#   bash experiments/scripts/gpu_check.sh --out "$OUT"        # one H200/H100-class GPU, no network, < 8 minutes
#   bash experiments/scripts/gpu_check.sh --smoke --out /tmp/gc  # the same steps, tiny shapes, on a CPU
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python}" -m experiments.scripts.gpu_check "$@"
