#!/usr/bin/env bash
# The card's training step on one GPU at full SDXL size, in one table (issue #14, item 10).
#
#   bash benchmarks/gpu_check.sh          # needs a CUDA GPU (16 GB+); under 8 minutes on one GPU
#   bash benchmarks/gpu_check.sh --dry    # CPU, tiny model, seconds: the same code path (what CI runs)
#   more options: bash benchmarks/gpu_check.sh --help
#
# Installs nothing: it checks that the Python packages the trainer needs are importable and says which are
# missing. The interpreter is $PYTHON, else python3. Exit codes: 0 ok, 2 missing packages, 3 no usable CUDA
# GPU, 4 out of GPU memory at a bucket.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "gpu_check: no Python interpreter '$PY' (set PYTHON=/path/to/python)" >&2
    exit 2
fi
# The repository's packages without an install; data-loader workers are fresh interpreters and inherit this.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

missing="$("$PY" - <<'PYEOF'
import importlib.util
wanted = ["torch", "diffusers", "transformers", "accelerate", "lycoris", "bitsandbytes", "safetensors", "PIL",
          "numpy"]
print(" ".join(name for name in wanted if importlib.util.find_spec(name) is None))
PYEOF
)"
if [ -n "$missing" ]; then
    echo "gpu_check: missing Python packages: $missing" >&2
    echo "gpu_check: install the project's requirements (pip install -e $ROOT) with this interpreter ($PY) first" >&2
    exit 2
fi

exec "$PY" "$ROOT/benchmarks/gpu_check.py" "$@"
