#!/usr/bin/env bash
# A batch from the command line: every slide in a folder (here: the demo slide's folder) into one
# output folder. Rerunning skips the slides already done; a slide that fails gets one line and the
# others go on. Usage: examples/batch_cli.sh [SLIDE_FOLDER] [OUT]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
slides="${1:-$here}"
out="${2:-batch-out}"
idcmap run "$slides" --out "$out" --quiet
idcmap run "$slides" --out "$out" --quiet   # second run: everything is skipped
ls "$out"
