"""LoRA (PEFT) and TRL's model-loading flags: AVATrainer(peft_config=...), `avalign train --use_peft --lora_* --dtype`,
the adapter saved next to the TQR heads and reloaded by evaluate / scoring / generate, `avalign merge`, and the TRL
baselines trained with the same adapter config."""

import json
import os

import pytest
import torch
from peft import LoraConfig

from avalign import AVAConfig, AVARewardModel, AVATrainer, TQRModel
from avalign.cli import main
from avalign.commands.merge import merge
from avalign.modeling import parameter_counts, unwrapped

from conftest import last_json_line, tiny_backbone

COMMON = ["--synthetic_train_size", "48", "--synthetic_eval_size", "24", "--max_steps", "4", "--learning_rate", "1e-2",
          "--report_to", "none", "--disable_tqdm", "true"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory, tokenizer):
    """Tiny GPT-2 and Llama backbones saved with the synthetic task's tokenizer: LoRA adapts a saved model."""
    paths = {}
    for arch in ("gpt2", "llama"):
        path = tmp_path_factory.mktemp(f"base-{arch}")
        tiny_backbone(arch, tokenizer).save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths[arch] = str(path)
    return paths


def lora_parameters(backbone, targets, r):
    """LoRA's A (r x in) and B (out x r) for every linear layer whose name ends in a target, from the layer shapes
    (nn.Linear keeps [out, in], GPT-2's Conv1D [in, out]: either way r * (in + out))."""
    return sum(r * sum(module.weight.shape) for name, module in backbone.named_modules()
               if name.split(".")[-1] in targets and hasattr(module, "weight"))


def head_parameters(tokenizer):
    return sum(p.numel() for n, p in TQRModel(tiny_backbone("gpt2", tokenizer)).named_parameters()
               if not n.startswith("backbone."))


def scores(reward_model, synthetic):
    rows = synthetic[1].select(range(6))
    return [(r.reward_mean, r.reward_weights, r.reward_std) for r in reward_model.score(rows["prompt"], rows["chosen"])]


@pytest.mark.parametrize("arch,targets", [("gpt2", {"c_attn"}), ("llama", {"q_proj", "v_proj"})])
def test_lora_trains_adapter_and_heads_saves_both_and_reloads_and_merges_exactly(
        arch, targets, bases, tokenizer, synthetic, tmp_path):
    args = AVAConfig(output_dir=str(tmp_path / "run"), max_steps=4, learning_rate=1e-2, per_device_train_batch_size=4,
                     save_strategy="no", report_to="none", disable_tqdm=True, max_length=48, use_cpu=True)
    trainer = AVATrainer(bases[arch], args=args, train_dataset=synthetic[0], processing_class=tokenizer,
                         peft_config=LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM"))
    model = trainer.model
    base = tiny_backbone(arch, tokenizer)  # the saved weights, to check that they stay frozen
    counts = parameter_counts(model)
    assert counts["trainable_params"] == lora_parameters(base, targets, 4) + head_parameters(tokenizer)
    assert counts["total_params"] == sum(p.numel() for p in base.parameters()) + counts["trainable_params"]
    trainer.train()
    trained = dict(unwrapped(model.backbone).named_parameters())
    for name, value in base.named_parameters():  # PEFT renames a wrapped layer's weight to base_layer.weight
        name = next(n for n in trained if n.replace("base_layer.", "") == name)
        assert torch.equal(trained[name], value), name
    assert all(p.abs().sum() > 0 for n, p in trained.items() if "lora_B" in n)  # zero at init: the adapter trained
    assert model.reward_head.weight.abs().sum() > 0  # zero at init: the heads trained too

    out = tmp_path / "lora"
    trainer.save_model(str(out))
    saved = set(os.listdir(out))
    assert {"adapter_config.json", "adapter_model.safetensors", "tqr_heads.safetensors", "tqr_config.json"} <= saved
    assert "model.safetensors" not in saved  # the frozen backbone is not written again
    expected = scores(AVARewardModel(model, tokenizer), synthetic)
    assert scores(AVARewardModel.from_pretrained(str(out)), synthetic) == expected
    merge(str(out), str(tmp_path / "merged"))
    assert "adapter_config.json" not in os.listdir(tmp_path / "merged")
    for merged, exact in zip(scores(AVARewardModel.from_pretrained(str(tmp_path / "merged")), synthetic), expected):
        for a, b in zip(merged, exact):
            torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-4, atol=1e-5)


def test_cli_lora_flags_train_evaluate_generate_bon_and_merge(bases, tokenizer, tmp_path, capsys):
    out = tmp_path / "lora"
    assert main(["train", "--model_name_or_path", bases["llama"], "--output_dir", str(out), *COMMON, "--use_peft",
                 "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "k_proj", "v_proj", "o_proj",
                 "--lora_dropout", "0.0"]) == 0
    printed = capsys.readouterr().out
    trained = last_json_line(printed)
    lora = lora_parameters(tiny_backbone("llama", tokenizer), {"q_proj", "k_proj", "v_proj", "o_proj"}, 4)
    assert trained["trainable_params"] == lora + head_parameters(tokenizer)
    assert f"[avalign] trainable parameters: {trained['trainable_params']:,} of {trained['total_params']:,}" in printed
    assert main(["evaluate", "--model_name_or_path", str(out), "--synthetic_eval_size", "24"]) == 0
    assert last_json_line(capsys.readouterr().out)["accuracy"] == trained["eval_accuracy"]
    assert main(["generate", "--policy", str(out), "--output", str(tmp_path / "gen.jsonl"), "--max_prompts", "2",
                 "--max_new_tokens", "4", "--synthetic_eval_size", "24"]) == 0
    assert last_json_line(capsys.readouterr().out)["rows"] == 2
    assert main(["bon", "--policy", str(out), "--reward_model", str(out), "--output", str(tmp_path / "bon.jsonl"),
                 "--max_prompts", "2", "--n", "2", "--max_new_tokens", "4", "--synthetic_eval_size", "24"]) == 0
    assert last_json_line(capsys.readouterr().out)["prompts"] == 2
    assert main(["merge", "--model_name_or_path", str(out), "--output_dir", str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model_name_or_path", str(tmp_path / "merged"), "--synthetic_eval_size", "24"]) == 0
    assert last_json_line(capsys.readouterr().out)["accuracy"] == trained["eval_accuracy"]


def test_cli_dtype_reaches_the_backbone(bases, tmp_path, capsys):
    out = tmp_path / "bf16"
    assert main(["train", "--model_name_or_path", bases["gpt2"], "--output_dir", str(out), *COMMON, "--max_steps", "1",
                 "--dtype", "bfloat16", "--attn_implementation", "eager"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16"


@pytest.mark.parametrize("objective", ["bt", "dpo"])
def test_trl_baselines_train_the_same_lora_config(objective, bases, tokenizer, tmp_path, capsys):
    out = tmp_path / objective
    assert main(["train", "--objective", objective, "--model_name_or_path", bases["llama"], "--output_dir", str(out),
                 *COMMON, "--use_peft", "--lora_r", "4"]) == 0
    trained = last_json_line(capsys.readouterr().out)
    lora = lora_parameters(tiny_backbone("llama", tokenizer), {"q_proj", "v_proj"}, 4)
    score_head = tiny_backbone("llama", tokenizer).config.hidden_size  # BT's fresh scalar head, no bias: trained too
    assert trained["trainable_params"] == lora + (score_head if objective == "bt" else 0)
    assert "adapter_config.json" in os.listdir(out)
    if objective == "bt":  # reloaded (base + adapter + head) and merged, it ranks the eval pairs as in training
        for path in (out, tmp_path / "merged"):
            if path != out:
                assert main(["merge", "--model_name_or_path", str(out), "--output_dir", str(path)]) == 0
                capsys.readouterr()
            assert main(["evaluate", "--model_name_or_path", str(path), "--synthetic_eval_size", "24"]) == 0
            assert last_json_line(capsys.readouterr().out)["accuracy"] == trained["eval_accuracy"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a CUDA GPU")
def test_quantisation_is_refused_without_a_gpu(bases, tmp_path, capsys):
    assert main(["train", "--model_name_or_path", bases["gpt2"], "--output_dir", str(tmp_path), *COMMON,
                 "--use_peft", "--load_in_4bit"]) == 2
    error = capsys.readouterr().err.strip()
    assert "load_in_4bit/load_in_8bit" in error and "CUDA GPU" in error and len(error.splitlines()) == 1


def test_lora_needs_a_saved_backbone(tmp_path, capsys):
    assert main(["train", "--output_dir", str(tmp_path), *COMMON, "--use_peft"]) == 2
    assert "--model_name_or_path" in capsys.readouterr().err
