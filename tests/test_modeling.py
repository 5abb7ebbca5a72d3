"""The TQR model: Q transform bounds, reward-index causality, LM-head projection, heads, save/load."""

import math

import pytest
import torch
import torch.nn.functional as F

from avalign.data.collator import TQRCollator
from avalign.data.tokenize import tokenize_dataset
from avalign.modeling import TQRConfig, TQRModel, _lm_head_projection
from avalign.ops import pretrained_q_values
from avalign.reward_model import AVARewardModel

from conftest import tiny_backbone

ARCHS = ["gpt2", "llama", "qwen2", "bart", "t5"]


def batch_for(model, tokenizer, rows):
    data, _ = tokenize_dataset(rows, tokenizer, max_length=64, is_encoder_decoder=model.is_encoder_decoder)
    collator = TQRCollator(tokenizer.pad_token_id, model.is_encoder_decoder, getattr(model.backbone.config, "decoder_start_token_id", None))
    batch = collator([data[i] for i in range(len(data))])
    batch.pop("is_preference")
    return batch


@pytest.mark.parametrize("alpha", [0.5, 1.0, 8.0])
def test_q_transform_is_bounded(alpha):
    """Q = alpha*p(a) - log sum_a' exp(alpha*p(a')) lies in [-log(V-1+e^a), a - log(V-1+e^a)]: pushing the
    rejected sequence's Q down cannot diverge."""
    vocab, hidden = 50, 8
    weight = torch.randn(vocab, hidden, requires_grad=True)
    h = torch.randn(16, hidden) * 30  # extreme logits
    actions = torch.randint(vocab, (16,))
    low, high = -math.log(vocab - 1 + math.exp(alpha)), alpha - math.log(vocab - 1 + math.exp(alpha))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    for _ in range(200):  # minimise Q of the taken actions, as the rejected term does
        q = pretrained_q_values(h, weight, None, actions, alpha)
        assert q.min() >= low - 1e-5 and q.max() <= high + 1e-5
        optimizer.zero_grad()
        q.sum().backward()
        optimizer.step()
    assert q.min().item() == pytest.approx(low, abs=1e-3)  # it saturates at the bound instead of diverging


@pytest.mark.parametrize("arch", ARCHS)
def test_lm_head_projection_reproduces_backbone_logits(arch, tokenizer, synthetic):
    model = TQRModel(tiny_backbone(arch, tokenizer))
    if hasattr(model.backbone, "final_logits_bias"):  # BART's starts at zero, where adding it is not seen
        torch.nn.init.normal_(model.backbone.final_logits_bias)
    batch = batch_for(model, tokenizer, synthetic[0].select(range(4)))
    hidden = model.sequence_hidden_states(batch["input_ids"], batch["attention_mask"], batch.get("decoder_input_ids"), batch.get("decoder_attention_mask"))
    weight, bias, scale = _lm_head_projection(model.backbone)
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
    torch.testing.assert_close(F.linear(hidden * scale, weight, bias), model.backbone(**inputs).logits)


# T5's tied head scales the decoder output by d_model**-0.5; a float64 model gets float64 Q values.
@pytest.mark.parametrize(("arch", "dtype"), [("gpt2", torch.float32), ("t5", torch.float32), ("gpt2", torch.float64)])
def test_q_values_are_the_transformed_lm_policy(arch, dtype, tokenizer, synthetic):
    """Q(y_1:i, y_i+1) equals log softmax(alpha * softmax(backbone logits at i)) at the next token."""
    model = TQRModel(tiny_backbone(arch, tokenizer).to(dtype), TQRConfig(alpha=3.0))
    batch = batch_for(model, tokenizer, synthetic[0].select(range(2)))
    out = model(**batch)
    logits = model.backbone(**{k: v for k, v in batch.items() if k != "completion_mask"}).logits
    q_all = torch.log_softmax(3.0 * logits.softmax(-1), -1)[:, :-1]
    tokens = batch["decoder_input_ids"] if model.is_encoder_decoder else batch["input_ids"]
    expected = q_all.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    assert out.q_values.dtype == dtype
    torch.testing.assert_close(out.q_values[out.mask], expected[out.mask], rtol=1e-5, atol=1e-5)
    assert (out.q_values[~out.mask] == 0).all()


@pytest.mark.parametrize("arch", ["gpt2", "bart"])
def test_reward_index_causality(arch, tokenizer):
    """R(y_1:t+1) depends on y_t+1 (its hidden state has seen the action) but the unweighted mu does not depend
    on y_t+2."""
    torch.manual_seed(0)
    model = TQRModel(tiny_backbone(arch, tokenizer)).eval()
    torch.nn.init.normal_(model.reward_head.weight, std=1.0)  # zero init would make every mu equal
    ids = torch.randint(5, len(tokenizer), (1, 10))
    if model.is_encoder_decoder:
        prompt = torch.randint(5, len(tokenizer), (1, 4))
        def forward(seq):
            ones = torch.ones_like(seq)
            return model(prompt, torch.ones_like(prompt), ones, seq, ones)
    else:
        def forward(seq):
            return model(seq, torch.ones_like(seq), torch.ones_like(seq))
    t = 4  # column t is the transition with action ids[:, t + 1]
    base = forward(ids).reward_mean
    changed_action = ids.clone()
    changed_action[0, t + 1] = 5 + (ids[0, t + 1] - 5 + 1) % (len(tokenizer) - 5)
    changed_next = ids.clone()
    changed_next[0, t + 2] = 5 + (ids[0, t + 2] - 5 + 1) % (len(tokenizer) - 5)
    assert not torch.allclose(forward(changed_action).reward_mean[0, t], base[0, t])
    torch.testing.assert_close(forward(changed_next).reward_mean[0, : t + 1], base[0, : t + 1])


def test_reward_weights_mask_and_rescale(tokenizer, synthetic):
    model = TQRModel(tiny_backbone("gpt2", tokenizer))
    out = model(**batch_for(model, tokenizer, synthetic[0].select(range(3))))
    assert (out.reward_weights[~out.mask] == 0).all()
    torch.testing.assert_close(out.reward_weights.sum(-1), out.mask.sum(-1).float())  # rescaled: mean weight 1
    plain = TQRModel(tiny_backbone("gpt2", tokenizer), TQRConfig(rescale_reward_weights=False))
    plain.load_state_dict(model.state_dict())
    out_plain = plain(**batch_for(model, tokenizer, synthetic[0].select(range(3))))
    torch.testing.assert_close(out_plain.reward_weights.sum(-1), torch.ones(out.mask.shape[0]))


def test_without_reward_weights_they_are_one(tokenizer, synthetic):
    model = TQRModel(tiny_backbone("gpt2", tokenizer), TQRConfig(use_reward_weights=False))
    assert model.reward_weights is None
    out = model(**batch_for(model, tokenizer, synthetic[0].select(range(3))))
    torch.testing.assert_close(out.reward_weights, out.mask.float())


def test_without_pretrained_q_a_fresh_head_gives_q(tokenizer, synthetic):
    """'w/o ptq': Q is the same transform applied to a fresh linear head's logits, not the LM head's."""
    model = TQRModel(tiny_backbone("gpt2", tokenizer), TQRConfig(pretrained_q=False, alpha=2.0))
    batch = batch_for(model, tokenizer, synthetic[0].select(range(2)))
    out = model(**batch)
    hidden = model.sequence_hidden_states(batch["input_ids"], batch["attention_mask"])[:, :-1]
    actions = batch["input_ids"][:, 1:, None]
    from_fresh_head = torch.log_softmax(2.0 * model.q_head(hidden).softmax(-1), -1).gather(-1, actions).squeeze(-1)
    from_lm_head = torch.log_softmax(2.0 * model.backbone.lm_head(hidden).softmax(-1), -1).gather(-1, actions).squeeze(-1)
    torch.testing.assert_close(out.q_values[out.mask], from_fresh_head[out.mask], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out.q_values[out.mask], from_lm_head[out.mask], atol=1e-4)


def test_heads_take_the_backbone_dtype(tokenizer, synthetic):
    """A bf16 backbone gets bf16 heads (as a Hugging Face score head would), so the model runs in bf16 without
    autocast and DeepSpeed's bf16 sees one dtype; its rewards match the float32 model's to bf16 rounding."""
    full = TQRModel(tiny_backbone("gpt2", tokenizer), TQRConfig(pretrained_q=False))
    torch.nn.init.normal_(full.reward_head.weight, std=0.5)
    half = TQRModel(tiny_backbone("gpt2", tokenizer).to(torch.bfloat16), TQRConfig(pretrained_q=False))
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    half.load_state_dict(full.state_dict())
    batch = batch_for(full, tokenizer, synthetic[0].select(range(2)))
    torch.testing.assert_close(half(**batch).reward_mean, full(**batch).reward_mean, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_save_load_round_trip_gives_identical_scores(arch, tokenizer, synthetic, tmp_path):
    torch.manual_seed(1)
    model = TQRModel(tiny_backbone(arch, tokenizer), TQRConfig(alpha=2.0, log_std_max=1.5))
    for module in (model.reward_head, model.reward_weights.query):
        torch.nn.init.normal_(module.weight)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    rows = synthetic[1].select(range(5))
    before = AVARewardModel(model, tokenizer).score(rows["prompt"], rows["chosen"])
    loaded = AVARewardModel.from_pretrained(str(tmp_path))
    after = loaded.score(rows["prompt"], rows["chosen"])
    assert loaded.model.tqr_config == model.tqr_config
    assert [r.reward_mean for r in before] == [r.reward_mean for r in after]
    assert [(r.last, r.sum) for r in before] == [(r.last, r.sum) for r in after]
    assert len(set(r.last for r in before)) > 1  # scores differ between responses


def test_scoring_without_q_gives_the_same_rewards(tokenizer, synthetic):
    torch.manual_seed(2)
    model = TQRModel(tiny_backbone("llama", tokenizer))
    torch.nn.init.normal_(model.reward_head.weight)
    batch = batch_for(model, tokenizer, synthetic[0].select(range(3)))
    full, lean = model(**batch), model(**batch, with_q=False)
    for name in ("reward_mean", "reward_log_std", "reward_weights", "mask"):
        torch.testing.assert_close(getattr(lean, name), getattr(full, name))
    assert (lean.q_values == 0).all() and (full.q_values[full.mask] != 0).all()


def test_save_pretrained_writes_a_given_state_dict(tokenizer, tmp_path):
    """What the Trainer passes when it gathered the weights from FSDP or DeepSpeed shards is what gets saved."""
    model = TQRModel(tiny_backbone("llama", tokenizer))
    gathered = {k: v + 1.0 for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path, state_dict=gathered)
    loaded = TQRModel.from_pretrained(str(tmp_path))
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, gathered[name], msg=name)


def whole_attention_reward_weights(module, hidden, mask, rescale):
    """Eq. 11 with the whole [B, T, T] attention materialised: the form before chunking, kept as the reference."""
    queries, keys = module.query(hidden).float(), module.key(hidden).float()
    scores = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])
    scores = scores.masked_fill(~mask[:, None, :], torch.finfo(scores.dtype).min)
    attention = scores.softmax(-1) * mask[:, :, None]
    counts = mask.sum(-1, keepdim=True).clamp(min=1)
    weights = attention.sum(1) / counts * mask
    return weights * counts if rescale else weights


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("chunk_rows", [1, 3])
def test_chunked_reward_weights_equal_the_whole_attention(packed, chunk_rows, tokenizer, synthetic):
    """Query rows in chunks (each recomputed in the backward) give the whole attention's weights and gradients, for
    padded batches and padding-free packed rows, whatever the chunk size (3 rows leave a ragged last chunk)."""
    from avalign.data.collator import collate_packed, collate_sequences

    data, _ = tokenize_dataset(synthetic[0].select(range(4)), tokenizer, max_length=48)
    features = [data[i] for i in range(len(data))]
    collate = collate_packed if packed else lambda f, keys: collate_sequences(f, keys, tokenizer.pad_token_id)
    model = TQRModel(tiny_backbone("llama", tokenizer))
    batch = collate(features, ("chosen", "rejected"))
    batch.pop("is_preference")
    with torch.no_grad():
        mask = model(**batch, with_q=False).mask
    model.reward_weights.chunk_elements = chunk_rows * mask.numel()  # chunk_rows query rows per chunk
    assert mask.shape[-1] > 2 * chunk_rows and mask.any()
    chunked = model.reward_weights.forward
    results = []
    for forward in (chunked, lambda *a: whole_attention_reward_weights(model.reward_weights, *a)):
        model.reward_weights.forward = forward
        model.zero_grad()
        weights = model(**batch, with_q=False).reward_weights
        (weights * torch.randn(weights.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
        results.append([weights] + [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(results[0]) == len(results[1]) > 10  # gradients reach the backbone through the weights
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_lm_head_projection_folds_every_quirk_into_weight_bias_and_scale():
    """A stand-in backbone with all the quirks at once: a head bias plus a BART-style final_logits_bias, Cohere's
    logit_scale and T5's d_model**-0.5; its logits written out by hand: logit_scale * (d_model**-0.5 * h) W^T + b + f.
    Gemma 2's final_logit_softcapping is refused."""
    from types import SimpleNamespace

    from avalign.errors import ConfigError

    torch.manual_seed(0)
    head, final_bias, h = torch.nn.Linear(4, 6), torch.randn(1, 6), torch.randn(3, 4)
    config = SimpleNamespace(logit_scale=2.0, scale_decoder_outputs=True, d_model=16)
    backbone = SimpleNamespace(config=config, get_output_embeddings=lambda: head, final_logits_bias=final_bias)
    weight, bias, scale = _lm_head_projection(backbone)
    expected = 2.0 * (16**-0.5 * h) @ head.weight.T + head.bias + final_bias[0]
    torch.testing.assert_close(F.linear(scale * h, weight, bias), expected)
    config.final_logit_softcapping = 30.0
    with pytest.raises(ConfigError, match=r"^backbones with final_logit_softcapping \(Gemma 2\) are not supported yet$"):
        _lm_head_projection(backbone)


@pytest.mark.parametrize("grad", [True, False])
def test_reward_weights_chunk_rows_and_checkpointing(monkeypatch, grad):
    """chunk_elements // (B * T) query rows per chunk (at least one; whole when that covers T), each chunk
    checkpointed only when gradients flow; the weights equal the whole attention's, a row with a single valid
    position (at column 0) included."""
    from avalign import modeling

    batch, length = 2, 5
    module = modeling.RewardWeights(4).double()
    module.query.requires_grad_(False)  # the keys alone still need the checkpoint
    hidden = torch.randn(batch, length, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 0, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    column_sums, rows, checkpoints = modeling._attention_column_sums, [], []
    monkeypatch.setattr(modeling, "_attention_column_sums", lambda q, *a: rows.append(q.shape[1]) or column_sums(q, *a))
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda f, *a, **k: checkpoints.append(1) or f(*a))
    for chunk_elements, chunks in ((2 * batch * length, [2, 2, 1]), (1, [1] * 5), (length * batch * length, [5])):
        module.chunk_elements = chunk_elements
        rows.clear(), checkpoints.clear()
        with torch.set_grad_enabled(grad):
            for rescale in (False, True):
                weights = module(hidden, mask, rescale)
                torch.testing.assert_close(weights, whole_attention_reward_weights(module, hidden, mask, rescale).double())
        assert rows == chunks * 2
        assert len(checkpoints) == (2 * len(chunks) if grad and len(chunks) > 1 else 0)
    assert weights[1].tolist() == [1.0, 0, 0, 0, 0]  # one valid position takes all the weight
    module.requires_grad_(False)  # nothing to differentiate: no checkpoint, even with gradients enabled
    module.chunk_elements = batch * length
    module(hidden, mask, True)
    assert len(checkpoints) == 0


def test_q_values_take_the_configured_chunks_kernel_and_hidden_scale(monkeypatch, tokenizer):
    """_taken_q_values hands the op the config's chunk size and kernel and the hidden states times the projection's
    scale (here 2, as Cohere's logit_scale could be): Q = log softmax(alpha * softmax(2 h W^T)) at the next token."""
    from avalign import modeling

    model = TQRModel(tiny_backbone("gpt2", tokenizer), TQRConfig(alpha=2.0, q_chunk_size=3, q_kernel="auto"))
    weight = model.backbone.get_output_embeddings().weight
    monkeypatch.setattr(model, "q_projection", lambda: (weight, None, 2.0))
    calls = []
    monkeypatch.setattr(modeling, "pretrained_q_values",
                        lambda *args, **kwargs: calls.append(kwargs) or pretrained_q_values(*args, **kwargs))
    ids, completion = torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([[0, 1, 1, 1, 1]])
    with torch.no_grad():
        out = model(ids, torch.ones_like(ids), completion)
        hidden = model.sequence_hidden_states(ids, torch.ones_like(ids)).double()
    assert calls == [{"chunk_size": 3, "kernel": "auto"}]
    q_all = torch.log_softmax(2.0 * (2.0 * hidden[0, :-1] @ weight.double().T).softmax(-1), -1)
    torch.testing.assert_close(out.q_values[0].double(), q_all.gather(-1, ids[0, 1:, None]).squeeze(-1))


def test_refusals_name_what_is_missing(tokenizer):
    from avalign.errors import ConfigError

    model = TQRModel(tiny_backbone("t5", tokenizer))
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ConfigError, match=r"^TQRModel\.forward needs completion_mask \(1 on response tokens\)$"):
        model(ids, torch.ones_like(ids))
    with pytest.raises(ConfigError, match="^padding-free batches need a causal LM; encoder-decoders take padded batches$"):
        model(ids, None, torch.ones_like(ids), position_ids=torch.arange(3)[None])


def test_reward_log_std_is_clamped_and_token_mask_defaults_to_all(tokenizer):
    model = TQRModel(tiny_backbone("gpt2", tokenizer), TQRConfig(log_std_min=-0.5, log_std_max=0.5))
    with torch.no_grad():
        model.reward_head.weight.zero_()
        model.reward_head.bias.copy_(torch.tensor([0.0, 3.0]))
    ids, completion = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[0, 1, 1, 1]])
    assert model(ids, None, completion).reward_log_std.tolist() == [[0.5] * 3]
    with torch.no_grad():
        model.reward_head.bias.copy_(torch.tensor([0.0, -3.0]))
    out, with_mask = model(ids, None, completion), model(ids, torch.ones_like(ids), completion)
    assert out.reward_log_std.tolist() == [[-0.5] * 3]
    assert out.mask.tolist() == [[True] * 3]
    torch.testing.assert_close(out.q_values, with_mask.q_values)


# -- configuration, wrappers and persistence (the mutation run's survivors outside the math) ------------------
@pytest.mark.parametrize("kwargs,message", [
    ({"log_std_min": 1.0, "log_std_max": 1.0}, r"^log_std_min \(1\.0\) must be below log_std_max \(1\.0\)$"),
    ({"alpha": 0.0}, r"^alpha must be positive, got 0\.0$"),
    ({"alpha": math.inf}, r"^alpha must be positive, got inf$"),
    ({"alpha": math.nan}, r"^alpha must be positive, got nan$"),
    ({"q_chunk_size": 0}, r"^q_chunk_size must be None or >= 1, got 0$"),
    ({"q_kernel": "cuda"}, r"^unknown q_kernel 'cuda'; expected one of \['auto', 'torch', 'triton'\]$"),
])
def test_config_refusals_name_the_field_and_value(kwargs, message):
    from avalign.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        TQRConfig(**kwargs)


def test_config_accepts_the_edges_of_each_range():
    TQRConfig(log_std_min=-1.0, log_std_max=-0.999, alpha=1e-6, q_chunk_size=1)
    for kernel in ("torch", "triton", "auto"):
        assert TQRConfig(q_kernel=kernel).q_kernel == kernel


def test_parameter_counts_count_by_hand_and_take_zero3_full_sizes():
    from avalign.modeling import parameter_counts

    frozen, trainable = torch.nn.Linear(2, 5), torch.nn.Linear(3, 4)  # 2*5+5 = 15 and 3*4+4 = 16 parameters
    frozen.requires_grad_(False)
    model = torch.nn.Sequential(frozen, trainable)
    assert parameter_counts(model) == {"trainable_params": 16, "total_params": 31}
    trainable.weight.ds_numel = 100  # ZeRO-3: an empty shard here, 100 values in full
    assert parameter_counts(model) == {"trainable_params": 104, "total_params": 119}


def test_zero3_gathered_gathers_only_the_shards_not_available(monkeypatch):
    import contextlib
    import sys
    import types

    from avalign.modeling import zero3_gathered

    calls = []
    fake = types.ModuleType("deepspeed")
    fake.zero = types.SimpleNamespace(GatheredParameters=lambda params, modifier_rank: calls.append(
        (params, modifier_rank)) or "gathered")
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    plain, available, shard = (torch.nn.Parameter(torch.zeros(1)) for _ in range(3))
    available.ds_status = types.SimpleNamespace(name="AVAILABLE")
    shard.ds_status = types.SimpleNamespace(name="NOT_AVAILABLE")
    assert isinstance(zero3_gathered([plain, available]), contextlib.nullcontext) and calls == []
    assert zero3_gathered([plain, available, shard]) == "gathered"
    assert len(calls) == 1 and calls[0][1] is None and [p is shard for p in calls[0][0]] == [True]


def test_run_as_forward_runs_the_hooks_and_restores_the_forward():
    from avalign.modeling import run_as_forward

    module, seen = torch.nn.Linear(2, 2), []
    module.register_forward_pre_hook(lambda m, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)
    assert run_as_forward(module, lambda x, scale: x * scale, 3, scale=2) == 6
    assert seen == [((3,), {"scale": 2})]
    assert "forward" not in module.__dict__  # the class's forward again
    own = module.forward = lambda x: -x  # an instance forward (as a wrapper sets) is put back
    assert run_as_forward(module, lambda x: x + 1, 1) == 2 and module.forward is own


def test_is_peft_model_needs_both_peft_names_and_unwrapped_takes_the_base():
    import types

    from avalign.modeling import is_peft_model, unwrapped

    base = torch.nn.Linear(1, 1)
    peft = types.SimpleNamespace(peft_config={}, get_base_model=lambda: base)
    assert is_peft_model(peft) and unwrapped(peft) is base
    for half in (types.SimpleNamespace(peft_config={}), types.SimpleNamespace(get_base_model=lambda: base)):
        assert not is_peft_model(half) and unwrapped(half) is half
    assert unwrapped(base) is base


def test_quantization_is_refused_without_cuda_only(monkeypatch):
    from avalign.errors import ConfigError
    from avalign.modeling import check_quantization

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_quantization(None)
    with pytest.raises(ConfigError, match=r"^load_in_4bit/load_in_8bit quantise with bitsandbytes, which needs a "
                                          r"CUDA GPU; none is available$"):
        check_quantization({"load_in_4bit": True})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_quantization({"load_in_4bit": True})


def test_padding_free_support_is_checked_on_the_backbone_and_leaves_its_mode(tokenizer):
    import types

    from transformers import AutoModelForCausalLM, OPTConfig

    from avalign.modeling import supports_padding_free

    llama = tiny_backbone("llama", tokenizer)
    for training in (True, False):
        llama.train(training)
        assert supports_padding_free(llama) and llama.training == training
    peft_like = types.SimpleNamespace(peft_config={}, get_base_model=lambda: llama)
    assert supports_padding_free(peft_like)
    assert not supports_padding_free(tiny_backbone("t5", tokenizer))
    torch.manual_seed(0)
    opt = AutoModelForCausalLM.from_config(OPTConfig(  # OPT derives positions from the attention mask: it leaks
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
        word_embed_proj_dim=32, pad_token_id=tokenizer.pad_token_id))
    opt.train()
    assert not supports_padding_free(opt) and opt.training

    class NoPositionIds(torch.nn.Module):  # a body whose forward takes no position_ids
        def forward(self, input_ids, use_cache=None):
            raise AssertionError("not reached")

    llama.model.forward = NoPositionIds().forward
    llama.train()
    assert not supports_padding_free(llama) and llama.training



def test_save_into_an_earlier_save_replaces_weights_and_keeps_other_files(tokenizer, tmp_path):
    import json
    import os
    from dataclasses import asdict

    target = tmp_path / "new" / "model"  # the parent does not exist yet
    first = TQRModel(tiny_backbone("llama", tokenizer, seed=1), TQRConfig(alpha=3.0))
    first.save_pretrained(str(target))
    for stale in ("model-00001-of-00002.safetensors", "pytorch_model.bin", "model.safetensors.index.json"):
        (target / stale).write_text("an earlier sharded save")
    (target / "tokenizer.json").write_text("kept")
    (target / "model_card.txt").write_text("kept")
    second = TQRModel(tiny_backbone("llama", tokenizer, seed=2), TQRConfig(alpha=2.0, scoring="sum"))
    torch.nn.init.normal_(second.reward_head.weight)
    second.save_pretrained(str(target))
    assert sorted(os.listdir(target)) == sorted(["config.json", "generation_config.json", "model.safetensors",
                                                 "tqr_config.json", "tqr_heads.safetensors", "tokenizer.json",
                                                 "model_card.txt"])
    assert (target / "tokenizer.json").read_text() == (target / "model_card.txt").read_text() == "kept"
    assert os.listdir(tmp_path / "new") == ["model"]  # no staging directory left
    assert json.loads((target / "tqr_config.json").read_text()) == asdict(second.tqr_config)
    loaded = TQRModel.from_pretrained(str(target))
    assert loaded.tqr_config == second.tqr_config
    expected = second.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_a_failed_save_leaves_the_earlier_one(tokenizer, tmp_path, monkeypatch):
    import os

    import avalign.modeling

    model = TQRModel(tiny_backbone("gpt2", tokenizer))
    model.save_pretrained(str(tmp_path / "model"))
    before = {name: (tmp_path / "model" / name).read_bytes() for name in os.listdir(tmp_path / "model")}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(avalign.modeling, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(str(tmp_path / "model"))
    assert {name: (tmp_path / "model" / name).read_bytes() for name in os.listdir(tmp_path / "model")} == before
    assert os.listdir(tmp_path) == ["model"]


def test_from_pretrained_wraps_a_plain_backbone_with_the_config_given(tokenizer, tmp_path):
    from transformers import T5ForConditionalGeneration

    tiny_backbone("t5", tokenizer).save_pretrained(tmp_path)
    model = TQRModel.from_pretrained(str(tmp_path), TQRConfig(use_reward_weights=False, pretrained_q=False),
                                     dtype=torch.float64)
    assert type(model.backbone) is T5ForConditionalGeneration and model.is_encoder_decoder
    assert model.reward_weights is None and model.q_head.out_features == len(tokenizer)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert (model.reward_head.weight == 0).all() and (model.reward_head.bias == 0).all()  # the prior N(0, 1)
    assert TQRModel.from_pretrained(str(tmp_path)).tqr_config == TQRConfig()


def test_heads_that_do_not_match_the_config_are_refused(tokenizer, tmp_path):
    from avalign.errors import ConfigError

    TQRModel(tiny_backbone("gpt2", tokenizer), TQRConfig(use_reward_weights=False)).save_pretrained(str(tmp_path))
    model = TQRModel(tiny_backbone("gpt2", tokenizer))
    with pytest.raises(ConfigError, match=(
            rf"^{tmp_path}: head weights do not match the config \(missing \['reward_weights.query.weight', "
            r"'reward_weights.query.bias', 'reward_weights.key.weight', 'reward_weights.key.bias'\], unexpected \[\]\)$")):
        model.load_heads(str(tmp_path))


def test_a_directory_without_a_model_is_refused_by_name(tmp_path):
    from avalign.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^cannot load a model from '{tmp_path}': "):
        TQRModel.from_pretrained(str(tmp_path))


def test_backbone_loading_hands_revision_and_remote_code_to_the_config(tokenizer, tmp_path, monkeypatch):
    import types

    from transformers import AutoConfig

    import avalign.modeling

    tiny_backbone("gpt2", tokenizer).save_pretrained(tmp_path)
    seen = []
    monkeypatch.setattr(avalign.modeling, "AutoConfig", types.SimpleNamespace(
        from_pretrained=lambda path, **kwargs: seen.append(kwargs) or AutoConfig.from_pretrained(path)))
    avalign.modeling._load_backbone(str(tmp_path), revision="main", trust_remote_code=False, dtype=torch.float32)
    assert seen == [{"revision": "main", "trust_remote_code": False}]


def test_adapter_wraps_once_records_an_absolute_base_and_merges_back(tokenizer, tmp_path, monkeypatch):
    import os

    from peft import LoraConfig

    from avalign.errors import ConfigError
    from avalign.modeling import is_peft_model

    built = TQRModel(tiny_backbone("llama", tokenizer))
    with pytest.raises(ConfigError, match=r"^peft_config needs a backbone loaded from a directory or hub id \(the "
                                          r"adapter records it as its base model\); save a backbone built from a "
                                          r"config first$"):
        built.add_adapter(LoraConfig(r=2, task_type="CAUSAL_LM"))
    assert built.merge_and_unload() is built and not is_peft_model(built.backbone)  # no adapter: a no-op
    tiny_backbone("llama", tokenizer).save_pretrained(tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    model = TQRModel.from_pretrained("base", TQRConfig(alpha=2.0, scoring="sum"))
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "completion_mask": torch.tensor([[0, 1, 1, 1]])}
    model.add_adapter(LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False, task_type="CAUSAL_LM"))
    assert is_peft_model(model.backbone)
    assert model.backbone.peft_config["default"].base_model_name_or_path == str(tmp_path / "base")
    assert model.backbone.get_base_model().config._name_or_path == str(tmp_path / "base")
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("backbone."))
    with pytest.raises(ConfigError, match=r"^the backbone already carries a PEFT adapter; merge it first "
                                          r"\(`avalign merge`\)$"):
        model.add_adapter(LoraConfig(r=2, task_type="CAUSAL_LM"))
    with torch.no_grad():
        adapted = model(**batch).q_values
    torch.nn.init.normal_(model.reward_head.weight)
    model.save_pretrained(tmp_path / "lora")
    reloaded = TQRModel.from_pretrained(str(tmp_path / "lora"))  # the base it names, the adapter, the heads
    assert is_peft_model(reloaded.backbone) and reloaded.tqr_config == model.tqr_config
    lora = {n for n, p in reloaded.named_parameters() if p.requires_grad and n.startswith("backbone.")}
    assert lora and all("lora_" in n for n in lora)  # the adapter trains on, the base stays frozen
    with torch.no_grad():
        for name in ("q_values", "reward_mean", "reward_weights"):
            torch.testing.assert_close(getattr(reloaded(**batch), name), getattr(model(**batch), name))
        assert model.merge_and_unload() is model and not is_peft_model(model.backbone)
        torch.testing.assert_close(model(**batch).q_values, adapted)
    assert os.path.isabs(model.backbone.name_or_path)


def test_activation_checkpointing_switches_reach_the_backbone(tokenizer):
    model = TQRModel(tiny_backbone("gpt2", tokenizer))
    assert not model.is_activation_checkpointing
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing and model.backbone.is_activation_checkpointing
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing and not model.backbone.is_activation_checkpointing


def test_an_adapter_loads_onto_the_base_and_revision_it_names(tokenizer, tmp_path, monkeypatch):
    import json

    from peft import LoraConfig

    import avalign.modeling
    from avalign.errors import ConfigError

    tiny_backbone("llama", tokenizer).save_pretrained(tmp_path / "base")
    model = TQRModel.from_pretrained(str(tmp_path / "base"))
    model.add_adapter(LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(tmp_path / "lora")
    adapter_config = tmp_path / "lora" / "adapter_config.json"
    written = json.loads(adapter_config.read_text())
    adapter_config.write_text(json.dumps({**written, "revision": "v2"}))
    loads, real = [], avalign.modeling._load_backbone
    monkeypatch.setattr(avalign.modeling, "_load_backbone",
                        lambda path, **kwargs: loads.append((path, kwargs)) or real(path))
    TQRModel.from_pretrained(str(tmp_path / "lora"), dtype=torch.float32)
    assert loads == [(str(tmp_path / "base"), {"revision": "v2", "dtype": torch.float32})]
    adapter_config.write_text(json.dumps({**written, "base_model_name_or_path": None}))
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/lora/adapter_config.json names no base model to load the "
                                          r"adapter onto$"):
        TQRModel.from_pretrained(str(tmp_path / "lora"))


def test_save_stages_beside_the_target_and_moves_the_config_last(tokenizer, tmp_path, monkeypatch):
    import json
    import os
    import tempfile
    from dataclasses import asdict

    import avalign.modeling

    target = tmp_path / "model"
    model = TQRModel(tiny_backbone("llama", tokenizer))
    model.save_pretrained(str(target))
    staged, moves, real_mkdtemp, real_replace = [], [], tempfile.mkdtemp, os.replace
    monkeypatch.setattr(avalign.modeling.tempfile, "mkdtemp",
                        lambda **kwargs: staged.append(real_mkdtemp(**kwargs)) or staged[-1])
    monkeypatch.setattr(avalign.modeling.os, "replace", lambda source, destination: moves.append(
        (os.path.basename(destination), (target / "tqr_config.json").exists())) or real_replace(source, destination))
    model.save_pretrained(str(target), max_shard_size="10KB")  # kwargs reach the backbone's save
    assert len(staged) == 1 and os.path.dirname(staged[0]) == str(tmp_path)
    assert os.path.basename(staged[0]).startswith(".model.saving-") and not os.path.exists(staged[0])
    names = [name for name, _ in moves]
    assert names[-1] == "tqr_config.json" and "model.safetensors.index.json" in names and len(names) > 5
    assert not any(config_there for _, config_there in moves)  # the old config went first, the new one comes last
    assert (target / "tqr_config.json").read_text() == json.dumps(asdict(model.tqr_config), indent=2)


def test_init_takes_zero3_full_vocabulary_and_the_backbone_blocks(tokenizer):
    backbone = tiny_backbone("llama", tokenizer)
    assert TQRModel(backbone)._no_split_modules == backbone._no_split_modules == {"LlamaDecoderLayer"}
    backbone.get_output_embeddings().weight.ds_shape = (7, 32)  # ZeRO-3: an empty shard here, [7, 32] in full
    assert TQRModel(backbone, TQRConfig(pretrained_q=False)).q_head.out_features == 7


def test_loading_a_quantised_backbone_is_refused_before_loading_without_cuda(tmp_path, monkeypatch):
    import avalign.modeling
    from avalign.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="^load_in_4bit/load_in_8bit quantise with bitsandbytes"):
        avalign.modeling._load_backbone(str(tmp_path), quantization_config={"load_in_4bit": True})
