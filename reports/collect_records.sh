#!/usr/bin/env bash
# Copy a suite's records (JSON, per-episode accuracies, events, artifacts; no checkpoints, and no saved learners
# unless --with-learners) from a run folder into reports/<suite>-<profile>/records, then regenerate the report.
# Saved learners (<stem>.learner.safetensors, about 0.5 MB per Conv4) let `evaluate` re-test the cells under
# another protocol (e.g. protocol.lr_grid) without refitting.
# Usage: reports/collect_records.sh [--with-learners] SUITE PROFILE RUNS_DIR
set -euo pipefail
learners=no
if [ "${1:-}" = "--with-learners" ]; then learners=yes; shift; fi
suite=$1; profile=$2; runs=$3
cd "$(dirname "$0")/.."
dest="reports/$suite-$profile/records"
mkdir -p "$dest"
skip=(! -name '*.pt')
if [ "$learners" = no ]; then skip+=(! -name '*.safetensors'); fi
(cd "$runs" && find "$suite/$profile" -type f "${skip[@]}" -print0) |
  while IFS= read -r -d '' file; do mkdir -p "$dest/$(dirname "$file")"; cp "$runs/$file" "$dest/$file"; done
python -m dfmlbench report --suite "$suite" --profile "$profile" --runs "$dest" --out "reports/$suite-$profile"
