#!/usr/bin/env bash
# GPU check for issue #16: fedtune's trainer, DP trainer and a 2-site in-process federation on
# CUDA and on the CPU side by side, a CUDA-vs-CPU round agreement check (fp32) and samples/s,
# written to bench/results/gpu_check.json + .md. Fits in 10 minutes on one H200-class GPU with
# 16 cores; needs no network and no model weights (the model is built from BertConfig defaults).
#
#   bench/gpu_check.sh                      # on the GPU machine
#   bench/gpu_check.sh --cpu-only --quick   # the same Python code on a CPU-only machine
#
# Python environment, first that applies:
#   $VENV (default .venv) with fedtune's dependencies          -> used as is
#   wheels/ (fedtune's dependencies as wheels, e.g. made with   -> a venv in $VENV that also sees
#     `pip download -d wheels <pyproject's dependencies>`          the system's packages (a CUDA
#     on a machine with network)                                   torch there is kept), filled
#                                                                   from wheels/ only (--no-index)
# Exit status: 0 ok, 1 the CUDA and CPU rounds disagree, 2 no usable environment or no CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
       TOKENIZERS_PARALLELISM=false PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export FLWR_HOME=${FLWR_HOME:-$(mktemp -d)}

need() { "$1" -c "import torch, transformers, peft, opacus, flwr, pandas, sklearn" 2>/dev/null; }

if [ -x "$VENV/bin/python" ] && need "$VENV/bin/python"; then
  PY="$VENV/bin/python"
elif [ -d wheels ]; then
  echo "gpu_check: installing from wheels/ into $VENV (no network)"
  if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))' \
      || { echo "gpu_check: fedtune needs Python 3.11 or 3.12: set PYTHON=/path/to/python3.12"; exit 2; }
    "${PYTHON:-python3}" -m venv --system-site-packages "$VENV"
  fi
  # only the dependencies: the check runs from this checkout (python -m bench.gpu_check)
  "$VENV/bin/python" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > "$VENV/fedtune-requirements.txt"
  "$VENV/bin/pip" install --quiet --no-index --find-links wheels -r "$VENV/fedtune-requirements.txt"
  PY="$VENV/bin/python"
  need "$PY" || { echo "gpu_check: $VENV still lacks a dependency: add its wheel to wheels/"; exit 2; }
else
  echo "gpu_check: no $VENV with fedtune's dependencies and no wheels/ directory: bring one of them"
  exit 2
fi

"$PY" - <<'EOF'
import torch
print(f"gpu_check: torch {torch.__version__}, CUDA build {torch.version.cuda}, "
      f"CUDA available: {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
EOF
# 9.5 minutes for the Python part: the whole script stays inside 10 on a warm machine
exec timeout 570 "$PY" -m bench.gpu_check "$@"
