"""Data-parallel training on 2 CPU processes (gloo) through torchrun, the launcher accelerate also wraps."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_two_process_training_and_gathered_evaluation(tmp_path):
    script = Path(__file__).with_name("distributed_script.py")
    with socket.socket() as probe:  # a free port, so parallel or repeated runs don't collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), str(script), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # Each rank trained on its own shard (2 steps x 4 rows at least; the loader may fetch one batch ahead),
    # and no prompt reached both ranks.
    seen = [set(map(tuple, r["train_prompts"])) for r in ranks]
    assert min(len(r["train_prompts"]) for r in ranks) >= 8
    assert not seen[0] & seen[1]
    # Evaluation: each rank scored part of the 20 pairs, and the metrics cover all of them on both ranks.
    assert 0 < ranks[0]["eval_rows_this_rank"] < 20 and 0 < ranks[1]["eval_rows_this_rank"] < 20
    assert ranks[0]["eval"]["eval_n"] == ranks[1]["eval"]["eval_n"] == 20
    assert ranks[0]["eval"]["eval_accuracy"] == ranks[1]["eval"]["eval_accuracy"]
