#!/usr/bin/env bash
# A batch from the command line: every slide in a folder (here: the demo slide's folder) into one
# output folder. Rerunning skips the slides already done; a slide that fails gets one line and the
# others go on; OUT/cohort.csv has one row per slide. Usage: examples/batch_cli.sh [SLIDE_FOLDER] [OUT]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
slides="${1:-$here}"
out="${2:-batch-out}"
idcmap run "$slides" --out "$out" --quiet
idcmap run "$slides" --out "$out" --quiet   # second run: everything is skipped
ls "$out"                                   # one folder per slide, and cohort.csv
cut -d, -f1,3,5,6,8,9 "$out/cohort.csv"     # slide, status, foci, IDC mm², IDC %, largest mm
