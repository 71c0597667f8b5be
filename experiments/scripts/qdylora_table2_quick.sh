#!/usr/bin/env bash
# QDyLoRA Table 2's shape, offline on a CPU: QDyLoRA (one run, ranks 1..8 trained, 1/2/4/8 evaluated) vs
# QLoRA (one run per rank 1, 2, 4, 8), both on the NF4 SmolLM2 of experiment=qdylora/quick, scored on the
# whole stdlib-QA test split (122 questions), then one table per metric by the report task.
# Usage: bash experiments/scripts/qdylora_table2_quick.sh [out_dir] [seeds, e.g. 42 or 1,2]  (~15 min / seed)
set -euo pipefail
out=${1:-multirun/qdylora_table2_quick/$(date +%Y-%m-%d_%H-%M-%S)}
seeds=${2:-42}
common=(experiment=qdylora/quick data.limit_test=122 "seed=$seeds")
python run.py -m "${common[@]}" adapter=dylora adapter.eval_ranks=pow2 hydra.sweep.dir="$out/qdylora"
python run.py -m "${common[@]}" adapter=lora adapter.r_max=1,2,4,8 hydra.sweep.dir="$out/qlora"
for metric in test/em test/loss val/loss; do
  python run.py task=report table=qdylora_ranks table.metric=$metric table.name=qdylora_ranks_${metric//\//_} \
    "report.sweep_dir=[$out/qdylora,$out/qlora]"
done
cat "$out"/qdylora/qdylora_ranks_*.md
