"""Smoke tests of benchmarks/train_step.py: presets build, and three methods measure in-process on a tiny model."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_gpu_preset_builds_qwen2_half_billion_shape(bench, capsys):
    bench.main(["--preset", "gpu", "--dry-run"])
    out = json.loads(capsys.readouterr().out)
    config = out["settings"]["config"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (896, 24, 14)
    assert (config["num_key_value_heads"], config["intermediate_size"], config["vocab_size"]) == (2, 4864, 151_936)
    assert out["settings"]["parameters"] == 494_032_768  # Qwen2-0.5B, tied embeddings
    assert out["tokens"]["longest_sequence"] < out["settings"]["max_length"]


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_presets_fit_max_length(bench, name):
    preset = bench.PRESETS[name]
    assert sum(preset.prompt_words[1:]) + preset.response_words[1] + 1 < preset.max_length


@pytest.mark.filterwarnings("ignore:padding_free with attn_implementation")
def test_measure_and_render_on_tiny_model(bench, tmp_path):
    preset = bench.PRESETS["smoke"]
    tokenizer = bench.word_tokenizer(preset.vocab_size)
    bench.build_model(preset, tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    tokens = bench.pair_token_counts(bench.make_pairs(preset, tokenizer, preset.batch_pairs), tokenizer)

    results = {method: bench.measure(method, preset, str(tmp_path)) for method in ("ava-p", "ava-p-packed", "sft")}
    for result in results.values():
        assert len(result["step_times_s"]) == preset.warmup_steps + preset.measured_steps
        assert result["step_s"] > 0 and result["peak_abs_bytes"] > 0
        assert result["tokens_per_step"] == tokens["pair_tokens"]  # all train on exactly the pairs' tokens
    packed = results["ava-p-packed"]
    assert packed["padded_tokens_per_step"] == packed["tokens_per_step"] < results["ava-p"]["padded_tokens_per_step"]

    report = {
        "preset": "smoke", "date": "today", "command": "python benchmarks/train_step.py", "tokens": tokens,
        "machine": {"cpu_model": "cpu", "nproc": 2, "machine": "x86_64"}, "versions": {"torch": "x"},
        "load_average": {"start": (0.0, 0.0, 0.0), "end": (0.0, 0.0, 0.0)},
        "settings": {"device": "cpu", "model": "llama", "parameters": 1, "bf16": False, "batch_pairs": 2,
                     "max_length": 16, "optim": "adamw", "measured_steps": 2, "warmup_steps": 1},
        "methods": {**results, "dpo-live": {"error": "exit 1: boom"}},
    }
    table = bench.render(report)
    assert "| ava-p |" in table and "| sft |" in table and "failed" in table
