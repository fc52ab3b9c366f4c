#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on a machine that may lack some of domix's packages and has no
# network: packages missing there are installed from wheels carried in .whl/ (made here beforehand with
# `bash benchmarks/gpu_check.sh --fetch-wheels`), then domix runs from src/ without being installed.
#
#   bash benchmarks/gpu_check.sh --out "$OUT"      # on the GPU machine (carry .whl and .cache/smollm2-135m's
#                                                  # config.json and tokenizer files)
#   bash benchmarks/gpu_check.sh --dry-run         # here: every section tiny, on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  # the packages the lent machine's image lacks (it has torch, transformers, peft, accelerate, pyarrow,
  # pandas, xxhash, fsspec), at the versions of requirements.lock, for its Python 3.12 on x86-64
  mkdir -p .whl
  for name in datasets dill multiprocess gguf; do
    pin=$(grep -oE "^${name}==[^ ]+" requirements.lock)
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$pin"
  done
  grep -qxF /.whl/ .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
  ls .whl
  exit 0
fi

if compgen -G ".whl/*.whl" > /dev/null; then
  missing=()
  for wheel in .whl/*.whl; do
    module=$(basename "$wheel" | cut -d- -f1)
    $PY -c "import $module" 2>/dev/null || missing+=("$wheel")
  done
  if (( ${#missing[@]} )); then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu-check-site "${missing[@]}"
    export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec $PY benchmarks/gpu_check.py "$@"
