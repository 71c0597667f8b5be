#!/usr/bin/env bash
# KnGPT2's offline table (docs/kngpt2.md): SmolLM2-135M (package-shipped) compressed to ~94M and trained the same
# way on Python's reference docs (experiment=kngpt2/quick), one run per row, then one markdown table of test
# perplexity (strided protocol of the preset), parameter counts, compression ratio and wall time per row:
#   dense            the uncompressed model itself, no training (the teacher's own perplexity)
#   random           Kronecker factors, random init, task loss only
#   nearest          Kronecker factors, nearest-Kronecker init, task loss only
#   nearest+ILKD     the preset: nearest-Kronecker init, ILKD from the dense model
#   dense-truncated  the dense model cut to the block count of equal size (compression=truncate), ILKD
# Usage: bash experiments/scripts/kngpt2_quick_table.sh [out_dir] [extra overrides, e.g. trainer.max_steps=80]
# Env: table_only=1 rewrites the table of an out_dir whose runs are done (nothing is trained). A row whose run
# finished in out_dir is kept as it is (rerun the script after a kill to continue).
set -euo pipefail
out=${1:-outputs/kngpt2_quick_table/$(date +%Y-%m-%d_%H-%M-%S)}
shift $(( $# < 1 ? $# : 1 ))
mkdir -p "$out"
rows=(
  "dense|compression=none distill=none trainer.max_steps=0"
  "random|compression=random_kronecker distill=none"
  "nearest|distill=none"
  "nearest+ILKD|"
  "dense-truncated|compression=truncate"
)
for row in "${rows[@]}"; do
  [ -n "${table_only:-}" ] && break
  name=${row%%|*}; args=${row#*|}
  [ -f "$out/$name/results.json" ] && [ -f "$out/$name/wall_s" ] && { echo "$name: done before"; continue; }
  start=$(date +%s)
  # shellcheck disable=SC2086
  python run.py experiment=kngpt2/quick threads=1 hydra.run.dir="$out/$name" $args "$@" > "$out/$name.log" 2>&1
  echo $(( $(date +%s) - start )) > "$out/$name/wall_s"
  echo "$name: $(cat "$out/$name/wall_s") s"
done
python - "$out" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
lines = ["| row | test ppl | val ppl | params (distinct) | params (head untied) | compression ratio | protocol | wall s |",
         "|---|---|---|---|---|---|---|---|"]
total = 0
for folder in sorted((p for p in out.iterdir() if (p / "results.json").is_file()), key=lambda p: (p / "wall_s").stat().st_mtime):
    r = json.loads((folder / "results.json").read_text())
    wall = int((folder / "wall_s").read_text())
    total += wall
    lines.append(f"| {folder.name} | {r['test/ppl']:.1f} | {r['val/ppl']:.1f} | {r['params/total'] / 1e6:.2f}M | "
                 f"{r['params/total_untied_head'] / 1e6:.2f}M | {r['compression/ratio']:.3f} | {r['protocol']} | {wall} |")
lines.append(f"\ntotal wall time: {total} s")
(out / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
