#!/usr/bin/env bash
# The GPU check of issue 15 (benchmarks/gpu_check.py says what it measures): one call on a lent GPU machine,
# at most 8 minutes, no network; results in benchmarks/results/gpu.md and gpu.json (and in $OUT when set).
#
#   bash benchmarks/gpu_check.sh --prepare        # here first: build/gpu_check/samrs_512.tar (needs ../shared/data)
#   bash benchmarks/gpu_check.sh                  # on the GPU machine (the device tool: carry build/gpu_check)
#   bash benchmarks/gpu_check.sh --cpu-smoke --out /tmp/gpu.md   # a dry run of the same code on the CPU
#
# On the GPU machine nothing can be downloaded and GDAL is missing; what it needs travels with the checkout:
# build/gpu_check/samrs_512.tar (4 MB, made by --prepare) and, optionally, wheels in .whl/. The ViT-B+RVSA
# UperNet package (509 MB) is made there (about a minute on 16 cores), its parity tiles read with Pillow.
# Then copy the gpu.md and gpu.json it wrote (also into $OUT) to benchmarks/results/ here and commit them.
#
# Python: $PYTHON, else the checkout's .venv, else python3 (the GPU machine's, which holds PyTorch with CUDA).
# Wheels in .whl/ (carried with the call) are installed first into /tmp/gpu_check_site, e.g. onnxruntime-gpu
# where a future machine or a smaller repository lets it travel (today its 256 MB wheel does not fit).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  echo "installing the carried wheels: $(ls .whl)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site \
      .whl/*.whl && export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# 8 minutes in all: the script plans for 420 s and skips what would not fit; SIGINT at 470 s keeps what it wrote.
timeout --signal=INT --kill-after=10 470 "$PY" benchmarks/gpu_check.py "$@"
rc=$?
out=benchmarks/results/gpu.md
for ((i = 1; i <= $#; i++)); do [ "${!i}" = --out ] && { j=$((i + 1)); out=${!j}; }; done
if [ -n "${OUT:-}" ] && [ -f "$out" ]; then
  cp "$out" "${out%.md}.json" "$OUT"/ 2>/dev/null
fi
exit $rc
