#!/usr/bin/env bash
# QDyLoRA Table 2's shape, offline on a CPU, four rows: QDyLoRA (one run, ranks 1..8 trained, 1/2/4/8
# evaluated); QLoRA trained at each rank (one run per rank in $ranks); QLoRA truncated (one rank-8 run
# evaluated at 1/2/4/8, the DyLoRA paper's baseline); QLoRA SVD-truncated (the same, re-factored by SVD first).
# All on the NF4 SmolLM2 of experiment=qdylora/quick, scored on the whole stdlib-QA test split (122 questions),
# then one table per metric by the report task.
# Usage: bash experiments/scripts/qdylora_table2_quick.sh [out_dir] [seeds, e.g. 42 or 1,2] [extra overrides...]
#   e.g. ... out 42 trainer.max_steps=200   (about 4 min per run per 50 steps on 2 idle cores)
# Env: ranks=1,2,4,8 (the per-rank QLoRA runs).
set -euo pipefail
out=${1:-multirun/qdylora_table2_quick/$(date +%Y-%m-%d_%H-%M-%S)}
seeds=${2:-42}
shift $(( $# < 2 ? $# : 2 ))
common=(experiment=qdylora/quick data.limit_test=122 "seed=$seeds" "$@")
python run.py -m "${common[@]}" adapter=dylora adapter.eval_ranks=pow2 hydra.sweep.dir="$out/qdylora"
python run.py -m "${common[@]}" adapter=lora "adapter.r_max=${ranks:-1,2,4,8}" hydra.sweep.dir="$out/qlora"
python run.py -m "${common[@]}" adapter=lora_truncated,lora_svd adapter.r_max=8 adapter.eval_ranks=pow2 \
  hydra.sweep.dir="$out/truncated"
for metric in test/em test/loss val/loss; do
  python run.py task=report table=qdylora_ranks table.metric=$metric table.name=qdylora_ranks_${metric//\//_} \
    "report.sweep_dir=[$out/qdylora,$out/qlora,$out/truncated]"
done
cat "$out"/qdylora/qdylora_ranks_*.md
