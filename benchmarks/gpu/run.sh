#!/usr/bin/env bash
# Every GPU check of the project in one run on one H200 (docs/performance.md, "GPU run"), inside one device call of
# 600 s: the install of the carried wheels and every part share a budget of $BUDGET seconds (default 570) counted
# from the start of this script, and no part runs past it.
# Needs the wheels of benchmarks/gpu/fetch_wheels.sh in .whl/. Results go to $OUT (default benchmarks/results/gpu):
# each part's output in $OUT/NAME.log, its JSON written as it finishes (the benchmarks write theirs as they go; the
# CLI parts' last line goes to $OUT/NAME.json), and a line per part in $OUT/run.log. A failed imports part stops
# the run with its error: nothing after it could run.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results/gpu}
END=$((SECONDS + ${BUDGET:-570}))
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
unset TRITON_INTERPRET
part() {  # part NAME SECONDS COMMAND...: run with a limit (cut to the budget left), log, return its exit status
  local name=$1 limit=$2 status; shift 2
  local left=$((END - SECONDS))
  if ((left < limit)); then limit=$left; fi
  if ((limit < 5)); then
    echo "== $name: skipped, ${left}s of the budget left" | tee -a "$OUT/run.log"
    return 124
  fi
  echo "== $name ($(date +%T), limit ${limit}s): $*" | tee -a "$OUT/run.log"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  status=$?
  echo "== $name: exit $status at $(date +%T)" | tee -a "$OUT/run.log"
  if ((status != 0)); then tail -n 5 "$OUT/$name.log"; fi  # the error in the call's own output, too
  tail -n 1 "$OUT/$name.log" | python3 -c "import json, sys; json.loads(sys.stdin.read())" 2>/dev/null \
    && tail -n 1 "$OUT/$name.log" >"$OUT/$name.json"
  return $status
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >>"$OUT/run.log" 2>&1
# The carried wheels against the image's packages (datasets 5.2 wants pyarrow >= 24): fails here, not in every part.
part imports 30 python3 -c "import importlib.metadata as m, json, torch, transformers, trl, datasets, peft, triton, \
avalign; print(json.dumps({**{p: m.version(p) for p in ('torch', 'transformers', 'trl', 'datasets', 'peft', 'pyarrow', \
'triton', 'accelerate')}, 'gpu': torch.cuda.get_device_name(0)}))" || { echo "imports failed: stopping"; exit 1; }
# On CUDA these run the compiled kernels, and packed vs padded batches in bf16 with sdpa and flex attention.
part unit_tests 120 python3 -m pytest -q -p no:cacheprovider --junitxml "$OUT/unit_tests.xml" \
  tests/test_kernels.py tests/test_packing.py
part train_step 255 python3 benchmarks/train_step.py --preset gpu \
  --markdown "$OUT/train_step_gpu.md" --json "$OUT/train_step_gpu.json"
part q_op 50 python3 benchmarks/q_op.py --preset gpu --markdown "$OUT/q_op_gpu.md" --json "$OUT/q_op_gpu.json"
# FSDP2 on one card: the accelerate config of examples/, the CLI's default synthetic job; then the saved (gathered)
# model is scored again, which must repeat the trainer's final eval_accuracy_last / _sum.
part fsdp 60 accelerate launch --config_file examples/accelerate/fsdp.yaml --num_processes 1 -m avalign.cli train \
  --output_dir /tmp/fsdp-run --max_steps 20 --bf16 true
part fsdp_reload 30 python3 -m avalign.cli evaluate --model_name_or_path /tmp/fsdp-run --dataset_name synthetic
exit 0
