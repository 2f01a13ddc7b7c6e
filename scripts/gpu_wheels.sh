#!/usr/bin/env bash
# Prepare, on this (networked, CPU) machine, the Python packages that the GPU machine lacks, as an unpacked
# site directory `.whl/site` for scripts/gpu_check.sh to put on PYTHONPATH there.
#
#   bash scripts/gpu_wheels.sh            # then carry `.whl` with the working tree (about 40 MB)
#
# The GPU machine (docs/benchmarks.md, "GPU") runs Python 3.12 with torch, transformers, peft, accelerate, pyarrow,
# pandas, tiktoken, matplotlib and pytest, but has no network and lacks bitsandbytes, trl, datasets (and its dill,
# multiprocess), pydantic (and pydantic-core, annotated-types, typing-inspection) and llama-models. Versions are
# pinned to the ones installed here, so the GPU run tests what CI tests. bitsandbytes ships a library per CUDA/ROCm
# build (125 MB); only the CUDA 13.0 one (the machine's torch is built for CUDA 13) and the CPU one are kept.
# deepspeed and wandb are left out on purpose: the GPU check runs one process without W&B.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CUDA_LIB=${CUDA_LIB:-libbitsandbytes_cuda130.so}
PACKAGES="bitsandbytes trl datasets dill multiprocess pydantic pydantic-core annotated-types typing-inspection llama-models"

pins=$("$PYTHON" - "$PACKAGES" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

pins = []
for name in sys.argv[1].split():
    try:
        pins.append(f"{name}=={version(name)}")
    except PackageNotFoundError:
        sys.exit(f"{name} is not installed here; install the project first (pip install -e '.[dev]')")
print(" ".join(pins))
EOF
)
echo "pinned: $pins"
platforms=""
for tag in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_28_x86_64 linux_x86_64; do
  platforms="$platforms --platform $tag"
done
rm -rf .whl/site .whl/download
mkdir -p .whl/download
# shellcheck disable=SC2086
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  $platforms -d .whl/download $pins
# shellcheck disable=SC2086
"$PYTHON" -m pip install --quiet --no-deps --no-index --only-binary=:all: --python-version 3.12 --implementation cp \
  $platforms --target .whl/site .whl/download/*.whl
find .whl/site/bitsandbytes -maxdepth 1 -name 'libbitsandbytes_*' ! -name "$CUDA_LIB" ! -name 'libbitsandbytes_cpu.so' -delete
find .whl/site -name __pycache__ -prune -exec rm -rf {} +
rm -rf .whl/download
test -f ".whl/site/bitsandbytes/$CUDA_LIB" || { echo "bitsandbytes has no $CUDA_LIB" >&2; exit 1; }
du -sh .whl/site
