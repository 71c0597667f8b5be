#!/usr/bin/env bash
# QDyLoRA ablations in Table 2's shape, offline on a CPU, one seed per call: the dynamic run with scale
# alpha/b (paper), alpha/r_max and alpha/sqrt(b) (rsLoRA) under uniform rank sampling (one rank per step);
# the baselines QLoRA per rank (8, 4, 2, 1), QLoRA truncated and SVD-truncated (both evaluated from the rank-8
# QLoRA checkpoint with task=eval, so they are the same training run as `lora` at rank 8); and alpha/b under
# sandwich sampling (largest + smallest + one random rank per step: 3 sub-models per step) at a third of the
# steps, i.e. the same number of sub-model forward/backward passes as the uniform runs.
# Usage: steps=300 bash experiments/scripts/qdylora_ablation.sh <out_dir> <seed> [extra overrides]
# Rerunning the same command skips finished jobs. Render over seeds: see docs/qdylora.md ("Ablations").
set -euo pipefail
out=$1; seed=$2; shift 2
steps=${steps:-300}
common=(experiment=qdylora/quick data.limit_test=122 seed=$seed threads=1 "$@")
python run.py -m "${common[@]}" trainer.max_steps=$steps adapter=dylora adapter.eval_ranks=pow2 \
  "adapter.scale=alpha/b,alpha/r_max,'alpha/sqrt(b)'" hydra.sweep.dir="$out/dylora"
python run.py -m "${common[@]}" trainer.max_steps=$steps adapter=lora adapter.r_max=8,4,2,1 hydra.sweep.dir="$out/qlora"
rank8=$(dirname "$(grep -l -x -- '- adapter.r_max=8' "$out"/qlora/*/.hydra/overrides.yaml)")/..
python run.py -m task=eval "${common[@]}" trainer.max_steps=$steps adapter=lora_truncated,lora_svd adapter.r_max=8 \
  adapter.eval_ranks=pow2 eval.ckpt_path="$(cd "$rank8" && pwd)" hydra.sweep.dir="$out/truncated"
python run.py -m "${common[@]}" trainer.max_steps=$((steps / 3)) adapter=dylora adapter.eval_ranks=pow2 \
  sampling=sandwich hydra.sweep.dir="$out/sandwich"
