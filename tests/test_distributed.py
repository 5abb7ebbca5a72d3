"""Data-parallel training and FSDP2 sharding on 2 CPU processes (gloo) through torchrun, the launcher accelerate
also wraps."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def torchrun(script: str, *args: str) -> list[dict]:
    """Run tests/<script> on 2 CPU processes; what each rank wrote to <out_dir>/rank<r>.json (out_dir: args[0])."""
    with socket.socket() as probe:  # a free port, so parallel or repeated runs don't collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(Path(__file__).with_name(script)), *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((Path(args[0]) / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_process_training_and_gathered_evaluation(tmp_path):
    ranks = torchrun("distributed_script.py", str(tmp_path))
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


@pytest.mark.slow
@pytest.mark.parametrize("separate_head", [False, True], ids=["tied-head-in-root", "head-its-own-unit"])
def test_fsdp2_sharded_gradients_equal_unsharded(tmp_path, separate_head):
    """The Q op reads the LM head's weight directly; with the head as its own FSDP unit that weight is a shard
    outside the head's hooks, which the op must not see (it runs as the head's forward: run_as_forward)."""
    ranks = torchrun("fsdp_script.py", str(tmp_path), *(["--separate-head"] if separate_head else []))
    for rank in ranks:
        assert rank["world_size"] == 2
        assert max(rank["relative_grad_error"].values()) < 1e-5, rank["relative_grad_error"]
    assert any("lm_head" in name or "embed_tokens" in name for name in ranks[0]["relative_grad_error"])
