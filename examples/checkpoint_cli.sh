#!/usr/bin/env bash
# Save a state_dict of the reference CNN, then let `gradscope check` diagnose it.
# Run:  bash examples/checkpoint_cli.sh [OUTDIR]
set -euo pipefail
out="${1:-gradscope_out}"
mkdir -p "$out"
python - "$out/cnn.pt" <<'PY'
import sys
import torch
from gradscope.models import builtin_specs

torch.manual_seed(0)
torch.save(builtin_specs()["cnn"].factory().state_dict(), sys.argv[1])
print(f"saved {sys.argv[1]}")
PY
# exit code: 0 healthy, 1 findings at or above --fail-on, 2 bad input
gradscope check "$out/cnn.pt" --model cnn --steps 10 --plot "$out/plots" --html "$out/cnn.html"
