"""Policies and sampling: the Boltzmann policy is softmax(beta * Q), generation is seeded, batch-invariant and stops
at EOS, and best-of-N under the gold reward beats plain samples."""

import numpy as np
import pytest
import torch

from avalign.data.collator import TQRCollator
from avalign.data.tokenize import tokenize_dataset
from avalign.errors import ConfigError
from avalign.evaluation.judges import gold_scorer
from avalign.generation import BoltzmannHead, best_of_n, generate_completions, load_policy
from avalign.modeling import TQRConfig, TQRModel

from conftest import reference_gold_return, tiny_backbone

ARCHS = ["gpt2", "llama", "bart", "t5"]


def saved_tqr(path, arch, tokenizer, **config):
    torch.manual_seed(3)
    model = TQRModel(tiny_backbone(arch, tokenizer), TQRConfig(**config))
    if model.q_head is not None:  # a trained-looking head, so that Q is far from uniform
        torch.nn.init.normal_(model.q_head.weight, std=0.5)
        torch.nn.init.normal_(model.q_head.bias)
    bias = getattr(model.backbone, "final_logits_bias", None)
    if bias is not None:  # BART adds it after the head: the policy must undo it
        bias.normal_()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("arch", ARCHS)
def test_boltzmann_policy_is_softmax_beta_q(arch, tokenizer, synthetic, tmp_path):
    """Fresh Q head: the policy's logits, in a forward pass and inside generate, give softmax(beta * Q) with Q from
    Eq. 12 in float64 on the hidden states TQRModel uses; the same formula reproduces TQRModel.forward's q-values."""
    alpha, beta = 3.0, 0.7
    path = saved_tqr(tmp_path, arch, tokenizer, pretrained_q=False, alpha=alpha)
    policy, _ = load_policy(str(path), beta=beta, device="cpu")
    assert isinstance(policy.get_output_embeddings(), BoltzmannHead)
    policy.double()
    reference = TQRModel.from_pretrained(str(path)).double()

    rows, _ = tokenize_dataset(synthetic[1].select(range(3)), tokenizer, max_length=None,
                               is_encoder_decoder=reference.is_encoder_decoder)
    collator = TQRCollator(tokenizer.pad_token_id, reference.is_encoder_decoder,
                           getattr(reference.backbone.config, "decoder_start_token_id", None))
    batch = collator([rows[i] for i in range(len(rows))])
    batch.pop("is_preference")
    out = reference(**batch)
    decoder = "decoder_" if reference.is_encoder_decoder else ""
    tokens, token_mask = batch[f"{decoder}input_ids"], batch[f"{decoder}attention_mask"].bool()[:, 1:]
    with torch.no_grad():
        hidden = reference.sequence_hidden_states(batch["input_ids"], batch["attention_mask"],
                                                  batch.get("decoder_input_ids"), batch.get("decoder_attention_mask"))
        q_logits = hidden[:, :-1] @ reference.q_head.weight.T + reference.q_head.bias
        q_all = torch.log_softmax(alpha * torch.softmax(q_logits, -1), -1)  # Eq. 12, float64
        policy_logits = policy(**{k: v for k, v in batch.items() if k != "completion_mask"}).logits[:, :-1]
    taken = q_all.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(taken[out.mask], out.q_values[out.mask].double(), rtol=0, atol=1e-10)
    expected = torch.log_softmax(beta * q_all, -1)
    torch.testing.assert_close(policy_logits.log_softmax(-1)[token_mask], expected[token_mask], rtol=0, atol=1e-10)

    # Inside generate (KV cache, one position at a time): each step's logits are beta * Q of the prefix so far.
    prompt = batch["input_ids"][:1, : (3 if decoder else int(batch["completion_mask"][0].argmax()))]
    generated = policy.generate(prompt, do_sample=False, max_new_tokens=4, min_new_tokens=4, output_logits=True,
                                return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    sequence = generated.sequences
    with torch.no_grad():
        if decoder:
            hidden = reference.sequence_hidden_states(prompt, torch.ones_like(prompt), sequence, torch.ones_like(sequence))
        else:
            hidden = reference.sequence_hidden_states(sequence, torch.ones_like(sequence))
    q_steps = torch.log_softmax(alpha * torch.softmax(hidden @ reference.q_head.weight.T + reference.q_head.bias, -1), -1)
    first = sequence.shape[1] - 1 - len(generated.logits)  # position of the state before the first new token
    for step, logits in enumerate(generated.logits):
        torch.testing.assert_close(logits[0].double().log_softmax(-1), (beta * q_steps[0, first + step]).log_softmax(-1),
                                   rtol=0, atol=1e-6)


def test_pretrained_q_and_plain_directories_give_the_lm(tokenizer, synthetic, tmp_path):
    path = saved_tqr(tmp_path / "tqr", "gpt2", tokenizer, pretrained_q=True)
    policy, _ = load_policy(str(path), device="cpu")
    backbone = TQRModel.from_pretrained(str(path)).backbone
    ids = tokenizer(synthetic[1]["prompt"][:1], return_tensors="pt")["input_ids"]
    torch.testing.assert_close(policy(ids).logits, backbone(ids).logits, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="beta applies to TQR models with a fresh Q head"):
        load_policy(str(path), beta=2.0)
    backbone.save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    plain, _ = load_policy(str(tmp_path / "plain"), device="cpu")
    torch.testing.assert_close(plain(ids).logits, backbone(ids).logits, rtol=0, atol=0)


def test_seeded_sampling_is_reproducible(tokenizer, synthetic):
    model = tiny_backbone("gpt2", tokenizer).eval()
    prompts = synthetic[1]["prompt"][:6]
    sample = lambda seed: generate_completions(model, tokenizer, prompts, num_return_sequences=2,  # noqa: E731
                                               max_new_tokens=8, seed=seed, batch_size=4, progress=False)
    first = sample(0)
    assert first == sample(0)
    assert [r["completion"] for r in first] != [r["completion"] for r in sample(1)]
    assert [(r["prompt"], r["sample_index"]) for r in first] == [(p, i) for p in prompts for i in range(2)]


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_greedy_equals_unbatched(arch, tokenizer, synthetic):
    model = tiny_backbone(arch, tokenizer).eval()
    prompts = synthetic[1]["prompt"][:5]
    assert len({len(p.split()) for p in prompts}) > 1  # padding is exercised
    # Random models often emit a special token first; suppress them so that every completion has words.
    greedy = dict(do_sample=False, max_new_tokens=8, progress=False, suppress_tokens=tokenizer.all_special_ids)
    batched = generate_completions(model, tokenizer, prompts, batch_size=5, **greedy)
    one_by_one = generate_completions(model, tokenizer, prompts, batch_size=1, **greedy)
    assert batched == one_by_one
    assert all(len(row["completion"].split()) == 8 for row in batched)


def test_max_prompt_tokens_keeps_the_prompts_end(tokenizer, synthetic):
    """A clipped prompt generates what its last k tokens alone generate, and a prompt within k is untouched."""
    model = tiny_backbone("gpt2", tokenizer).eval()
    k = 2
    prompts = [p for p in synthetic[1]["prompt"] if len(tokenizer(p)["input_ids"]) > k][:4]
    greedy = dict(do_sample=False, max_new_tokens=6, progress=False, suppress_tokens=tokenizer.all_special_ids)
    ends = [tokenizer.decode(tokenizer(p)["input_ids"][-k:]) for p in prompts]
    assert len(prompts) == 4 and all(len(tokenizer(e)["input_ids"]) == k for e in ends)
    clipped = generate_completions(model, tokenizer, prompts, max_prompt_tokens=k, **greedy)
    assert [r["completion"] for r in clipped] == [r["completion"] for r in generate_completions(model, tokenizer, ends, **greedy)]
    assert generate_completions(model, tokenizer, prompts, max_prompt_tokens=1000, **greedy) == \
        generate_completions(model, tokenizer, prompts, **greedy)
    with pytest.raises(ConfigError, match="max_prompt_tokens"):
        generate_completions(model, tokenizer, prompts, max_prompt_tokens=0, **greedy)


def test_generation_stops_at_eos(synthetic):
    """Make a word the greedy policy emits mid-way the EOS token: the completion ends just before it."""
    task = synthetic[2]
    model = tiny_backbone("gpt2", task.tokenizer()).eval()
    prompts = synthetic[1]["prompt"][:2]
    greedy = dict(do_sample=False, max_new_tokens=8, progress=False)
    words = generate_completions(model, task.tokenizer(), prompts, **greedy)[0]["completion"].split()
    assert len(words) == 8
    stop = words[3]
    stopping = task.tokenizer()
    stopping.eos_token = stop
    stopped = generate_completions(model, stopping, prompts, **greedy)
    assert stopped[0]["completion"] == " ".join(words[: words.index(stop)])


def test_best_of_n_under_the_gold_reward_beats_single_samples(synthetic):
    task = synthetic[2]
    tokenizer = task.tokenizer()
    model = tiny_backbone("gpt2", tokenizer).eval()
    prompts = synthetic[1]["prompt"][:16]
    sampling = dict(max_new_tokens=6, batch_size=8, progress=False)
    rows = best_of_n(model, tokenizer, prompts, gold_scorer(task), n=4, seed=0, **sampling)
    for row in rows:
        golds = [reference_gold_return(task, row["prompt"], c) for c in row["candidates"]]
        assert row["proxy_score"] == pytest.approx(max(golds))
        assert row["best_index"] == int(np.argmax(golds)) and row["completion"] == row["candidates"][row["best_index"]]
    singles = generate_completions(model, tokenizer, prompts, seed=1, **sampling)
    single_mean = np.mean([reference_gold_return(task, r["prompt"], r["completion"]) for r in singles])
    best_mean = np.mean([reference_gold_return(task, r["prompt"], r["completion"]) for r in rows])
    assert best_mean > single_mean
