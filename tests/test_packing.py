"""Padding-free batches: the packed row unpacks to the padded batch's outputs, losses, gradients and training."""

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, OPTConfig

from avalign import AVAConfig, AVATrainer, TQRModel
from avalign.data.collator import collate_packed, collate_sequences, unpack_index
from avalign.data.tokenize import tokenize_dataset
from avalign.errors import ConfigError
from avalign.modeling import supports_padding_free

from conftest import tiny_backbone


def config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-2, max_steps=3, logging_steps=1,
        save_strategy="no", report_to="none", disable_tqdm=True, max_length=48, use_cpu=True, seed=0,
    )
    return AVAConfig(**{**values, **overrides})


def test_packed_collator_exact_tensors():
    features = [{"prompt_ids": [5, 6], "chosen_ids": [7, 2], "rejected_ids": [8, 9, 2]}, {"prompt_ids": [5], "chosen_ids": [2], "rejected_ids": [9, 2]}]
    batch = collate_packed(features, ("chosen", "rejected"))
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2, 5, 2, 5, 6, 8, 9, 2, 5, 9, 2]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 0, 1, 2, 3, 4, 0, 1, 2]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1]]
    assert batch["is_preference"] is True and "attention_mask" not in batch
    index, valid = unpack_index(batch["position_ids"])
    assert index.tolist() == [[0, 1, 2, 3, 0], [4, 5, 0, 0, 0], [6, 7, 8, 9, 10], [11, 12, 13, 0, 0]]
    # The unpacked tokens and masks are exactly the padded collator's.
    padded = collate_sequences(features, ("chosen", "rejected"), pad_token_id=0)
    assert valid.long().tolist() == padded["attention_mask"].tolist()
    assert (batch["input_ids"][0, index] * valid).tolist() == padded["input_ids"].tolist()


def _features(tokenizer, synthetic, n=4):
    rows, _ = tokenize_dataset(synthetic[0].select(range(n)), tokenizer, max_length=48)
    return [rows[i] for i in range(n)]


def _randomised_heads(model):
    """Zero-initialised reward heads would make every reward comparison trivially equal."""
    torch.manual_seed(1)
    for parameter in model.reward_head.parameters():
        torch.nn.init.normal_(parameter, std=0.5)
    return model


def _padded_and_packed(model, features, pad_token_id, device="cpu"):
    """(mask, outputs at valid positions, parameter gradients) of the padded batch and of the packed row, with
    the same weighted sum of all four outputs backpropagated in both."""
    results = []
    for batch in (collate_sequences(features, ("chosen", "rejected"), pad_token_id),
                  collate_packed(features, ("chosen", "rejected"))):
        batch.pop("is_preference")
        model.zero_grad()
        output = model(**{k: v.to(device) for k, v in batch.items()})
        m = output.mask
        values = [output.q_values[m], output.reward_mean[m], output.reward_log_std[m], output.reward_weights[m]]
        sum(v.float().sum() * (i + 1) for i, v in enumerate(values)).backward()
        results.append((m, values, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    return results


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_packed_outputs_and_gradients_equal_padded(arch, tokenizer, synthetic):
    model = _randomised_heads(TQRModel(tiny_backbone(arch, tokenizer)))
    (mask_a, values_a, grads_a), (mask_b, values_b, grads_b) = _padded_and_packed(
        model, _features(tokenizer, synthetic), tokenizer.pad_token_id)
    assert torch.equal(mask_a, mask_b) and mask_a.sum() > 0
    for a, b in zip(values_a + grads_a, values_b + grads_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 attention kernels and flex attention need CUDA")
@pytest.mark.parametrize("attention", ["sdpa", "flex_attention"])
def test_packed_equals_padded_in_bf16_on_cuda(attention):
    """The GPU setting: Qwen2 in bf16, sequences of 16-300 tokens, sdpa or flex attention (which skips the blocks
    between packed sequences). bf16 rounds differently in the two layouts, so the comparison is of relative norms;
    a leak across sequences changes them by O(1)."""
    from avalign.backbones import build_backbone

    backbone = build_backbone("qwen2", 32_000, hidden_size=256, num_layers=4, num_heads=4, max_positions=1024)
    backbone.set_attn_implementation(attention)
    model = _randomised_heads(TQRModel(backbone)).to("cuda", torch.bfloat16)
    assert supports_padding_free(model.backbone)
    rng = torch.Generator().manual_seed(0)
    features = [{key: torch.randint(5, 32_000, (int(n),), generator=rng).tolist() for key, n in
                 zip(("prompt_ids", "chosen_ids", "rejected_ids"), lengths)}
                for lengths in torch.randint(16, 300, (8, 3), generator=rng)]
    (mask_a, values_a, grads_a), (mask_b, values_b, grads_b) = _padded_and_packed(model, features, 0, "cuda")
    assert torch.equal(mask_a, mask_b)
    for a, b in ((values_a, values_b), (grads_a, grads_b)):
        a, b = (torch.cat([t.float().flatten() for t in x]) for x in (a, b))
        assert ((b - a).norm() / a.norm()).item() < 5e-2


@pytest.mark.parametrize("objective", ["ava-p", "ava-d"])
def test_padding_free_training_matches_padded(objective, tokenizer, synthetic, tmp_path):
    """Same logged losses, trained weights and evaluation after 3 steps, with and without padding."""
    runs = []
    for padding_free in (False, True):
        args = config(tmp_path / str(padding_free), objective=objective, padding_free=padding_free)
        model = TQRModel(tiny_backbone("llama", tokenizer), args.tqr_config())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the sdpa cost warning, tested below
            trainer = AVATrainer(model, args=args, train_dataset=synthetic[0], eval_dataset=synthetic[1],
                                 processing_class=tokenizer)
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        # The reward weights' key bias adds one constant to each query row's scores, which the softmax removes: its
        # true gradient is 0, and Adam turns the rounding noise left in it into steps of any sign. Not compared.
        runs.append((losses, {n: p.detach().clone() for n, p in model.named_parameters()
                              if n != "reward_weights.key.bias"}, trainer.evaluate()))
    (losses_a, params_a, eval_a), (losses_b, params_b, eval_b) = runs
    assert len(losses_a) == 3
    assert losses_b == pytest.approx(losses_a, rel=1e-4)
    for name in params_a:
        torch.testing.assert_close(params_a[name], params_b[name], rtol=1e-3, atol=1e-5, msg=name)
    assert eval_b["eval_loss"] == pytest.approx(eval_a["eval_loss"], rel=1e-4)
    assert (eval_b["eval_accuracy_last"], eval_b["eval_accuracy_sum"]) == (eval_a["eval_accuracy_last"], eval_a["eval_accuracy_sum"])


def test_padding_free_batch_is_one_unpadded_row(tokenizer, synthetic, tmp_path):
    args = config(tmp_path, padding_free=True)
    with pytest.warns(UserWarning, match="attn_implementation=sdpa"):
        trainer = AVATrainer(TQRModel(tiny_backbone("gpt2", tokenizer), args.tqr_config()), args=args,
                             train_dataset=synthetic[0], processing_class=tokenizer)
    batch = next(iter(trainer.get_eval_dataloader(trainer.train_dataset)))  # sequential: the first 8 pairs
    rows = [trainer.train_dataset[i] for i in range(8)]
    lengths = [len(r["prompt_ids"]) + len(r[f"{key}_ids"]) for key in ("chosen", "rejected") for r in rows]
    assert "attention_mask" not in batch and batch["input_ids"].shape == (1, sum(lengths))
    index, valid = unpack_index(batch["position_ids"])
    assert valid.sum(1).tolist() == lengths


def test_backbones_that_ignore_position_ids_are_refused(tokenizer, synthetic, tmp_path):
    torch.manual_seed(0)
    opt = AutoModelForCausalLM.from_config(OPTConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
        word_embed_proj_dim=32, pad_token_id=tokenizer.pad_token_id))
    assert supports_padding_free(tiny_backbone("llama", tokenizer))
    assert not supports_padding_free(opt)  # OPT derives positions from the attention mask
    args = config(tmp_path, padding_free=True)
    with pytest.raises(ConfigError, match="opt backbone lets packed sequences see each other"):
        AVATrainer(TQRModel(opt, args.tqr_config()), args=args, train_dataset=synthetic[0], processing_class=tokenizer)
    with pytest.raises(ConfigError, match="t5 is an encoder-decoder"):
        AVATrainer(TQRModel(tiny_backbone("t5", tokenizer), args.tqr_config()), args=args,
                   train_dataset=synthetic[0], processing_class=tokenizer)
