#!/usr/bin/env bash
# Every offline quick experiment (with the baselines each table compares against) into one results folder,
# then one report of every paper table they fill (Markdown + a self-contained HTML file with the plots
# inline): <out>/tables/report.{md,html}.
# Usage: bash experiments/scripts/report_all_quick.sh [out_dir] [extra overrides for every run...]
# Env: lanes=2 (default) runs two queues of runs side by side, one CPU thread per run; lanes=1 runs one queue.
# Each run's output is appended to <out>/<name>.log; one line per run here. A run that already finished in
# <out> is not redone, so rerunning the script after a kill continues it.
set -euo pipefail
out=${1:-results/quick_$(date +%Y-%m-%d)}
shift $(( $# < 1 ? $# : 1 ))
mkdir -p "$out"
extra=("$@")

step() {  # step <name> <run.py arguments...>: one run (or sweep) of the report, logged to <out>/<name>.log
  local name=$1 start; shift
  start=$(date +%s)
  echo "== $name: started $(date +%H:%M:%S)"
  if ! python run.py "$@" threads=1 "${extra[@]}" >> "$out/$name.log" 2>&1; then
    echo "== $name: FAILED after $(( $(date +%s) - start )) s, see $out/$name.log" >&2; return 1
  fi
  echo "== $name: done in $(( $(date +%s) - start )) s"
}

lane_a() {  # SoFT's SFT baseline first: the SoFT run is judged against it, exit by exit
  step soft_sft_quick experiment=soft/sft_quick "hydra.run.dir=$out/soft_sft_quick"
  step soft_quick experiment=soft/quick judge=reference "judge.against=$out/soft_sft_quick" "hydra.run.dir=$out/soft_quick"
  step qdylora_quick experiment=qdylora/quick "hydra.run.dir=$out/qdylora_quick"
  # Table 2's baselines: QLoRA at rank 8, and that same checkpoint evaluated truncated / SVD-truncated per rank
  step qlora_rank8 experiment=qdylora/quick adapter=lora adapter.r_max=8 "hydra.run.dir=$out/qlora_rank8"
  step qlora_truncated -m task=eval experiment=qdylora/quick adapter=lora_truncated,lora_svd adapter.r_max=8 \
    adapter.eval_ranks=pow2 "eval.ckpt_path=$(cd "$out/qlora_rank8" && pwd)" "hydra.sweep.dir=$out/qlora_truncated"
  step krona_quick -m experiment=krona/quick adapter=krona,lora "hydra.sweep.dir=$out/krona_quick"
}

lane_b() {
  local start; start=$(date +%s)
  echo "== kngpt2 (5 rows): started $(date +%H:%M:%S)"
  bash experiments/scripts/kngpt2_quick_table.sh "$out/kngpt2" "${extra[@]}" >> "$out/kngpt2.log" 2>&1 \
    || { echo "== kngpt2: FAILED, see $out/kngpt2.log" >&2; return 1; }
  echo "== kngpt2: done in $(( $(date +%s) - start )) s"
  step sortednet_quick -m experiment=sortednet/quick "hydra.sweep.dir=$out/sortednet_quick"  # sorted, standard, independent
  step whisper_quick experiment=whisper/quick "hydra.run.dir=$out/whisper_quick"
  step focl_quick -m experiment=focl/quick regularizer=none,feature "hydra.sweep.dir=$out/focl_quick"
}

start=$(date +%s)
if [[ ${lanes:-2} == 1 ]]; then
  lane_a && lane_b
else
  lane_a & a=$!
  lane_b & b=$!
  status=0
  wait $a || status=1
  wait $b || status=1
  (( status == 0 )) || exit 1
fi
echo "== all runs: $(( $(date +%s) - start )) s"
python run.py task=report report.all=true "report.sweep_dir=$out" "hydra.run.dir=$out/.report"
echo "report: $out/tables/report.md and $out/tables/report.html"
