#!/usr/bin/env bash
# Every offline quick experiment into one results folder, then one report of every paper table they fill
# (Markdown + a self-contained HTML file with the plots inline): <out>/tables/report.{md,html}.
# Usage: bash experiments/scripts/report_all_quick.sh [out_dir] [extra overrides for every run...]
# A run that already finished in <out> is not redone (rerun the script to continue after a kill); one CPU
# thread per run. KnGPT2's quick preset runs too when conf/experiment/kngpt2/quick.yaml exists.
set -euo pipefail
out=${1:-results/quick_$(date +%Y-%m-%d)}
shift $(( $# < 1 ? $# : 1 ))
experiments=(qdylora/quick sortednet/quick whisper/quick krona/quick soft/quick soft/sft_quick focl/quick)
[[ -f conf/experiment/kngpt2/quick.yaml ]] && experiments+=(kngpt2/quick)
for exp in "${experiments[@]}"; do
  echo "== $exp -> $out/${exp//\//_}"
  start=$(date +%s)
  python run.py "experiment=$exp" threads=1 "$@" "hydra.run.dir=$out/${exp//\//_}"
  echo "== $exp: $(( $(date +%s) - start )) s"
done
python run.py task=report report.all=true "report.sweep_dir=$out" "hydra.run.dir=$out/.report"
echo "report: $out/tables/report.md and $out/tables/report.html"
