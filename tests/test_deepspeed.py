"""DeepSpeed ZeRO-3 through accelerate, on CPU: examples/accelerate/deepspeed_zero3.yaml with two processes.

ZeRO-3 keeps each parameter as an empty shard outside its own module's forward, and AVA's Q op reads the LM-head
weight directly, so without gathering it the step fails. Reference: one process without DeepSpeed, from the same
weights (an untied LM head, so both the forward and the backward pass have to gather it) and on the same batches
(8 pairs a step: 4 on each of the two ranks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import last_json_line, tiny_backbone, untied

pytest.importorskip("deepspeed", reason="deepspeed is in the dev extras on Linux")

ZERO3 = Path(__file__).parents[1] / "examples" / "accelerate" / "deepspeed_zero3.yaml"
ARGS = ["--synthetic_train_size", "64", "--synthetic_eval_size", "32", "--max_steps", "3",
        "--learning_rate", "1e-2", "--warmup_steps", "0", "--eval_strategy", "no",
        "--logging_steps", "1", "--seed", "0", "--max_length", "64", "--save_strategy", "steps", "--save_steps", "3"]


def steps(output_dir: Path) -> list[float]:
    """Loss and gradient norm of each logged step, at full precision (the checkpoint's trainer state)."""
    history = json.loads((output_dir / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    return [value for entry in history if "loss" in entry for value in (entry["loss"], entry["grad_norm"])]


def run(launcher: list[str], *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_DISABLE_RICH": "1"}
    result = subprocess.run([*launcher, "-m", "avalign.cli", *args], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return last_json_line(result.stdout)


@pytest.mark.slow
def test_zero3_trains_as_a_single_process_does(tmp_path, synthetic):
    untied(tiny_backbone("llama", synthetic[2].tokenizer())).save_pretrained(tmp_path / "base")
    synthetic[2].tokenizer().save_pretrained(tmp_path / "base")
    common = ["--model_name_or_path", str(tmp_path / "base"), *ARGS]
    def zero3(precision="no"):
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ZERO3), "--num_processes",
                "2", "--mixed_precision", precision]

    on_two = ["--per_device_train_batch_size", "4", "--use_cpu", "true"]

    plain = run([sys.executable], "train", *common, "--per_device_train_batch_size", "8",
                "--output_dir", str(tmp_path / "plain"))
    sharded = run(zero3(), "train", *common, *on_two, "--output_dir", str(tmp_path / "zero3"))
    assert (tmp_path / "zero3" / "checkpoint-3" / "zero_to_fp32.py").exists()  # DeepSpeed did run
    # Same weights, same batches: every step's loss and gradient norm as without DeepSpeed.
    assert steps(tmp_path / "zero3") == pytest.approx(steps(tmp_path / "plain"), rel=1e-5)
    for key in ("eval_loss", "eval_accuracy_last", "eval_accuracy_sum"):
        assert sharded[key] == pytest.approx(plain[key], rel=1e-5), key

    # A fresh Q head (sized from the sharded LM head) and padding-free batches (checked on the gathered backbone).
    fresh_q = ["--pretrained_q", "false"]
    plain_fresh_q = run([sys.executable], "train", *common, *fresh_q, "--per_device_train_batch_size", "8",
                        "--output_dir", str(tmp_path / "plain-fresh-q"))
    packed_fresh_q = run(zero3(), "train", *common, *fresh_q, *on_two, "--padding_free", "true",
                         "--output_dir", str(tmp_path / "packed-fresh-q"))
    assert steps(tmp_path / "packed-fresh-q") == pytest.approx(steps(tmp_path / "plain-fresh-q"), rel=1e-4)
    assert packed_fresh_q["eval_loss"] == pytest.approx(plain_fresh_q["eval_loss"], rel=1e-4)

    # The shipped config's bf16: ZeRO-3 creates the backbone in bf16 and the heads follow (they were float32, and
    # DeepSpeed refused the mix). bf16 rounding is the only difference left.
    run(zero3("bf16"), "train", *common, *on_two, "--bf16", "true", "--output_dir", str(tmp_path / "bf16"))
    assert steps(tmp_path / "bf16") == pytest.approx(steps(tmp_path / "plain"), rel=1e-2)

    # The model saved from the shards (gathered by zero3_save_16bit_model) scores as the trainer did at the end.
    reloaded = run([sys.executable], "evaluate", "--model_name_or_path", str(tmp_path / "zero3"),
                   "--dataset_name", "synthetic", "--synthetic_eval_size", "32", "--max_length", "64")
    assert (reloaded["accuracy_last"], reloaded["accuracy_sum"]) == (sharded["eval_accuracy_last"],
                                                                   sharded["eval_accuracy_sum"])
