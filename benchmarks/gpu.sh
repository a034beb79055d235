#!/usr/bin/env bash
# OPD throughput and MFU on one CUDA GPU, from a bare copy of this repo with no hub or index access.
#
# Run from anywhere:  bash benchmarks/gpu.sh        (about 1-3 minutes on an H100; hard cap 8 min)
#
# 1. Finds a python3 whose torch sees a CUDA device (else tries a fresh venv with torch==2.13.0).
# 2. Installs foresight editable with --no-deps, and any missing or mismatched pure-Python pins.
#    pip may have no index there: wheels placed in .whl/ at the repo root are used offline instead.
# 3. Runs benchmarks/gpu_opd.py; its last output line is one JSON object with every number.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

# pyproject's pins that the training step imports, plus pydantic's own exact needs: pydantic-core is
# compiled, so a carried wheel must match the machine's Python (cp312 on the lent GPUs).
PINS=(transformers==5.24.0 tokenizers==0.23.3 safetensors==0.8.0 pydantic==2.14.4 typer==0.29.2
      rich==15.0.0 PyYAML==6.0.4 pydantic-core==2.50.5 annotated-types==0.8.0
      typing-inspection==0.4.5)
# Short timeouts: with no index, pip's default retries would burn minutes of the budget.
PIP=(--disable-pip-version-check --no-input --timeout 10 --retries 1)
if compgen -G ".whl/*.whl" >/dev/null; then
  PIP+=(--no-index --find-links .whl)
fi

PY=python3
if ! "$PY" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  echo "gpu.sh: $PY has no torch that sees a CUDA device; trying a fresh venv with torch==2.13.0"
  "$PY" -m venv /tmp/foresight-gpu-venv
  PY=/tmp/foresight-gpu-venv/bin/python
  if ! timeout 240 "$PY" -m pip install -q "${PIP[@]}" torch==2.13.0 ||
     ! "$PY" -c 'import torch; assert torch.cuda.is_available()'; then
    echo "gpu.sh: FAILED: no torch with CUDA (no GPU, or torch could not be installed offline)." >&2
    exit 1
  fi
fi
echo "gpu.sh: using $("$PY" -c 'import sys, torch; print(sys.executable, torch.__version__)')"

# Prints the pins that are not met (missing or another version), one per line, and why to stderr.
unmet_pins() {
  "$PY" - "${PINS[@]}" <<'EOF'
import importlib.metadata as metadata
import sys

for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = "missing"
    if have != want:
        print(f"gpu.sh:   {name}: need {want}, have {have}", file=sys.stderr)
        print(pin)
EOF
}

mapfile -t UNMET < <(unmet_pins)
if ((${#UNMET[@]})); then
  echo "gpu.sh: installing unmet pins (--no-deps): ${UNMET[*]}"
  timeout 120 "$PY" -m pip install -q --no-deps "${PIP[@]}" "${UNMET[@]}" ||
    echo "gpu.sh: pip could not install them (no index?); put their wheels in .whl/ and rerun." >&2
  mapfile -t UNMET < <(unmet_pins)
fi
# The package calls the model with transformers 5.24's keyword names (e.g. `cache=` in rollout.py);
# another version could silently drop the KV cache and time something else, so refuse it.
for pin in "${UNMET[@]}"; do
  case "$pin" in
    transformers==* | tokenizers==*)
      echo "gpu.sh: FAILED: $pin is required; carry its wheel in .whl/ (see the device README)." >&2
      exit 1 ;;
  esac
done

# --no-build-isolation: an isolated build would fetch setuptools from the index.
if ! "$PY" -m pip install -q --no-deps --no-build-isolation "${PIP[@]}" -e .; then
  echo "gpu.sh: editable install failed; running from src/ via PYTHONPATH instead."
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c 'import foresight.train.loop'; then
  echo "gpu.sh: FAILED: foresight does not import (see the error above for the missing module)." >&2
  exit 1
fi

# Whatever the installs above took, the script ends within 8 minutes (SECONDS counts from start);
# the GPU run itself needs about 1-2 of them.
LEFT=$((470 - SECONDS))
if ((LEFT < 90)); then
  echo "gpu.sh: FAILED: the installs left only ${LEFT}s of the 8-minute budget." >&2
  exit 1
fi
timeout "$LEFT" "$PY" benchmarks/gpu_opd.py "$@"
