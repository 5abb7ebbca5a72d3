#!/usr/bin/env bash
# Every GPU check of the project in one run on one H200 (docs/performance.md, "GPU run"): about 5 minutes expected,
# 545 s at most (the parts' limits), inside one device call of 600 s.
# Needs the wheels of benchmarks/gpu/fetch_wheels.sh in .whl/. Results go to $OUT (default benchmarks/results/gpu);
# each part has its own time limit, so one that hangs does not take the others' results with it.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
unset TRITON_INTERPRET
part() {  # part NAME SECONDS COMMAND...: run with a limit, log to $OUT/run.log, go on whatever happens
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date +%T), limit ${limit}s): $*" | tee -a "$OUT/run.log"
  timeout "$limit" "$@" >>"$OUT/run.log" 2>&1
  echo "== $name: exit $? at $(date +%T)" | tee -a "$OUT/run.log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >>"$OUT/run.log" 2>&1
# The carried wheels against the image's packages (datasets 5.2 wants pyarrow >= 24): fails here, not in every part.
part imports 30 python3 -c "import importlib.metadata as m, torch, transformers, trl, datasets, triton, avalign; \
print({p: m.version(p) for p in ('torch', 'transformers', 'trl', 'datasets', 'pyarrow', 'triton', 'accelerate')}, \
torch.cuda.get_device_name(0))"
# On CUDA these run the compiled kernels, and packed vs padded batches in bf16 with sdpa and flex attention.
part unit_tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_packing.py
part train_step 255 python3 benchmarks/train_step.py --preset gpu \
  --markdown "$OUT/train_step_gpu.md" --json "$OUT/train_step_gpu.json"
part q_op 50 python3 benchmarks/q_op.py --preset gpu --markdown "$OUT/q_op_gpu.md" --json "$OUT/q_op_gpu.json"
# FSDP2 on one card: the accelerate config of examples/, the CLI's default synthetic job; then the saved (gathered)
# model is scored again, which must repeat the trainer's final eval_accuracy_last / _sum.
part fsdp 60 accelerate launch --config_file examples/accelerate/fsdp.yaml --num_processes 1 -m avalign.cli train \
  --output_dir /tmp/fsdp-run --max_steps 20 --bf16 true
part fsdp_reload 30 python3 -m avalign.cli evaluate --model_name_or_path /tmp/fsdp-run --dataset_name synthetic
