#!/usr/bin/env bash
# Copy a suite's records (JSON, per-episode accuracies, events, artifacts; no checkpoints or saved learners) from a
# run folder into reports/<suite>-<profile>/records, then regenerate the report from them.
# Usage: reports/collect_records.sh SUITE PROFILE RUNS_DIR
set -euo pipefail
suite=$1; profile=$2; runs=$3
cd "$(dirname "$0")/.."
dest="reports/$suite-$profile/records"
mkdir -p "$dest"
(cd "$runs" && find "$suite/$profile" -type f ! -name '*.pt' ! -name '*.safetensors' -print0) |
  while IFS= read -r -d '' file; do mkdir -p "$dest/$(dirname "$file")"; cp "$runs/$file" "$dest/$file"; done
python -m dfmlbench report --suite "$suite" --profile "$profile" --runs "$dest" --out "reports/$suite-$profile"
