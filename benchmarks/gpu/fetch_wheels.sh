#!/usr/bin/env bash
# Wheels the GPU machine lacks, for its Python 3.12 (run here, where PyPI is reachable; .whl/ is git-ignored and
# travels with `carry`). The image has torch, triton, accelerate, pyarrow, pandas and tokenizers; trl and datasets
# and peft are missing, and transformers is brought at the version the CPU suite runs, so both sides run the same code.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  trl==1.16.0 datasets==5.2.0 transformers==5.24.0 peft==0.21.2 dill==0.4.1 multiprocess==0.70.19
du -sh .whl && ls .whl
