"""Small backbones built from configs, so that tests, the demo and CPU experiments need no downloads."""

from __future__ import annotations

from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    BartConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    Qwen2Config,
    T5Config,
)

from .errors import ConfigError


def build_backbone(
    arch: str, vocab_size: int, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
    max_positions: int = 256, pad_token_id: int = 0, bos_token_id: int = 1, eos_token_id: int = 2, seed: int = 0,
) -> PreTrainedModel:
    """A randomly initialised backbone of the given architecture ("gpt2", "llama", "qwen2", "bart", "t5")."""
    import torch

    special = dict(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads,
                            n_positions=max_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **special)
    elif arch in ("llama", "qwen2"):
        config_class = LlamaConfig if arch == "llama" else Qwen2Config
        config = config_class(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                              num_hidden_layers=num_layers, num_attention_heads=num_heads,
                              num_key_value_heads=max(1, num_heads // 2), max_position_embeddings=max_positions,
                              tie_word_embeddings=True, **special)
    elif arch == "bart":
        config = BartConfig(vocab_size=vocab_size, d_model=hidden_size, encoder_layers=num_layers,
                            decoder_layers=num_layers, encoder_attention_heads=num_heads,
                            decoder_attention_heads=num_heads, encoder_ffn_dim=2 * hidden_size,
                            decoder_ffn_dim=2 * hidden_size, max_position_embeddings=max_positions, dropout=0.0,
                            attention_dropout=0.0, activation_dropout=0.0, decoder_start_token_id=eos_token_id,
                            forced_eos_token_id=None, **special)
    elif arch == "t5":
        config = T5Config(vocab_size=vocab_size, d_model=hidden_size, d_kv=hidden_size // num_heads,
                          d_ff=2 * hidden_size, num_layers=num_layers, num_heads=num_heads, dropout_rate=0.0,
                          decoder_start_token_id=pad_token_id, pad_token_id=pad_token_id, eos_token_id=eos_token_id)
    else:
        raise ConfigError(f"unknown backbone architecture '{arch}'; expected gpt2, llama, qwen2, bart or t5")
    torch.manual_seed(seed)
    auto_class = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return auto_class.from_config(config)


def context_length(config) -> int | None:
    """The most positions a backbone embeds (per side for encoder-decoders); None where it has no such limit (T5's
    relative positions)."""
    value = getattr(config.get_text_config(), "max_position_embeddings", None)
    return value if isinstance(value, int) else None


def check_fits(backbone: PreTrainedModel, tokenizer, max_length: int | None) -> None:
    """A ConfigError, before any training or scoring, where the tokenizer's ids or max_length would index past the
    backbone's embedding matrices (otherwise an IndexError mid-run)."""
    rows = backbone.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens but the model's embedding matrix has {rows} rows: "
                          "use the model's own tokenizer (or resize the model's embeddings)")
    context = context_length(backbone.config)
    if context is not None and (max_length is None or max_length > context):
        raise ConfigError(f"max_length {max_length} exceeds the model's {context} positions "
                          f"(max_position_embeddings): pass --max_length {context} or less")
