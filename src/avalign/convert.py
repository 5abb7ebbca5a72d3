"""Convert a llama2.c checkpoint (legacy "version 0" export) and its tokenizer.bin to a Hugging Face Llama model.

The result is an ordinary `LlamaForCausalLM` directory (config.json, model.safetensors, tokenizer.json, ...), so
Karpathy's tiny pretrained TinyStories models (stories260K, ...) can serve as real policy / reference models offline.
File layouts are described in docs/tiny-models.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, normalizers
from tokenizers.models import BPE
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from avalign.errors import DataError

# Newer llama2.c exports (version 1, 2) start with this magic; version 0 starts directly with the header.
_LLAMA2C_MAGIC = 0x616B3432
_ROPE_THETA = 10000.0
_SPECIAL_PIECES = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2; tokenizer.bin spells BOS/EOS "\n<s>\n", "\n</s>\n"
_N_SPECIAL = len(_SPECIAL_PIECES)
_FIRST_MERGED_ID = _N_SPECIAL + 256  # ids 3..258 are the byte-fallback pieces <0x00>..<0xFF>


@dataclass(frozen=True)
class Llama2cConfig:
    """The 7-int header of a llama2.c checkpoint; a negative vocab_size in the file means an unshared classifier."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_size

    def array_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """The float32 arrays that follow the header, in file order."""
        layers, dim, hidden = self.n_layers, self.dim, self.hidden_dim
        shapes = [
            ("token_embedding", (self.vocab_size, dim)),
            ("rms_att_weight", (layers, dim)),
            ("wq", (layers, dim, dim)),
            ("wk", (layers, self.kv_dim, dim)),
            ("wv", (layers, self.kv_dim, dim)),
            ("wo", (layers, dim, dim)),
            ("rms_ffn_weight", (layers, dim)),
            ("w1", (layers, hidden, dim)),
            ("w2", (layers, dim, hidden)),
            ("w3", (layers, hidden, dim)),
            ("rms_final_weight", (dim,)),
            ("freq_cis_real", (self.seq_len, self.head_size // 2)),
            ("freq_cis_imag", (self.seq_len, self.head_size // 2)),
        ]
        if not self.shared_classifier:
            shapes.append(("wcls", (self.vocab_size, dim)))
        return shapes


def read_llama2c_checkpoint(path: str | Path) -> tuple[Llama2cConfig, dict[str, np.ndarray]]:
    """Read a legacy (version 0) llama2.c checkpoint: 7 little-endian int32, then float32 arrays.

    Raises DataError naming the file when the header is implausible or the size does not match it.
    """
    path = str(path)
    data = _read_bytes(path)
    if len(data) < 28:
        raise DataError(f"too short for a llama2.c header ({len(data)} bytes, need 28)", path=path)
    header = struct.unpack_from("<7i", data)
    if struct.unpack_from("<I", data)[0] == _LLAMA2C_MAGIC:
        raise DataError(
            f"this is a llama2.c version-{header[1]} export; only the legacy version-0 export is supported "
            "(re-export with llama2.c's export.py --version 0)",
            path=path,
        )
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = header
    if min(dim, hidden_dim, n_layers, n_heads, n_kv_heads, abs(vocab_size), seq_len) <= 0 or (
        dim % n_heads or n_heads % n_kv_heads or (dim // n_heads) % 2
    ):
        raise DataError(f"implausible llama2.c header {header}; is this a version-0 llama2.c checkpoint?", path=path)
    config = Llama2cConfig(dim, hidden_dim, n_layers, n_heads, n_kv_heads, abs(vocab_size), seq_len, vocab_size > 0)

    shapes = config.array_shapes()
    expected = 28 + 4 * sum(int(np.prod(shape)) for _, shape in shapes)
    if len(data) != expected:
        raise DataError(
            f"size {len(data)} bytes does not match its header {header}, which implies {expected} bytes "
            "(truncated file, or not a version-0 llama2.c checkpoint)",
            path=path,
        )
    arrays, offset = {}, 28
    for name, shape in shapes:
        count = int(np.prod(shape))
        arrays[name] = np.frombuffer(data, dtype="<f4", count=count, offset=offset).reshape(shape)
        offset += 4 * count
    _check_rope(config, arrays, path)
    return config, arrays


def _check_rope(config: Llama2cConfig, arrays: dict[str, np.ndarray], path: str) -> None:
    """The stored RoPE tables are the only record of the rotary base; refuse to convert if it is not 10000."""
    inv_freq = _ROPE_THETA ** (-np.arange(0, config.head_size, 2) / config.head_size)
    angles = np.outer(np.arange(config.seq_len), inv_freq)
    if not (
        np.allclose(arrays["freq_cis_real"], np.cos(angles), atol=1e-3)
        and np.allclose(arrays["freq_cis_imag"], np.sin(angles), atol=1e-3)
    ):
        raise DataError(f"the stored RoPE tables do not match rope_theta={_ROPE_THETA:g}", path=path)


def read_llama2c_tokenizer(path: str | Path, vocab_size: int) -> list[tuple[bytes, float]]:
    """Read llama2.c's tokenizer.bin: int32 max_token_length, then per token float32 score, int32 length, bytes.

    The file does not store the vocabulary size (llama2.c takes it from the model), hence the argument.
    """
    path = str(path)
    data = _read_bytes(path)
    pieces, offset = [], 4
    try:
        for _ in range(vocab_size):
            score, length = struct.unpack_from("<fi", data, offset)
            if length < 0 or offset + 8 + length > len(data):
                raise struct.error
            pieces.append((data[offset + 8 : offset + 8 + length], score))
            offset += 8 + length
    except struct.error:
        message = f"truncated or corrupt tokenizer: could only read {len(pieces)} of {vocab_size} tokens"
        raise DataError(message, path=path) from None
    if offset != len(data):
        message = f"{len(data) - offset} unexpected bytes after the {vocab_size} tokens the model expects"
        raise DataError(message, path=path)
    return pieces


def llama2c_tokenizer(
    pieces: list[tuple[bytes, float]], model_max_length: int, path: str = "<tokenizer>"
) -> PreTrainedTokenizerFast:
    """A fast tokenizer that encodes like llama2.c's `encode` (SentencePiece BPE with byte fallback).

    llama2.c prepends a space, looks up each UTF-8 character (falling back to its bytes) and then repeatedly merges
    the adjacent pair whose concatenation is the highest-scoring piece. A `tokenizers` BPE model does the same when
    its merge ranks follow the pieces' scores, so every split of a piece into two existing pieces becomes a merge.
    One difference, as in every HF Llama tokenizer: the literal strings "<unk>", "<s>", "</s>" in text encode as
    the special tokens, where llama2.c spells them out character by character.
    BOS is added by default (as llama2.c's generation does), EOS is not. `pad_token` is `<unk>` (id 0, which
    ordinary text never produces) because the vocabulary has no pad piece and padding with EOS would mask real EOS
    labels. path only names the source file in errors.
    """
    vocab, scores = _llama2c_vocab(pieces, path)
    merges = []
    for piece, piece_id in vocab.items():
        if piece_id < _FIRST_MERGED_ID:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if vocab.get(left, -1) >= _FIRST_MERGED_ID and vocab.get(right, -1) >= _FIRST_MERGED_ID:
                merges.append((left, right))
    # Highest score first; ties (several splits of one piece) keep the leftmost cut first.
    merges.sort(key=lambda pair: -scores[vocab[pair[0] + pair[1]]])

    backend = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def _llama2c_vocab(pieces: list[tuple[bytes, float]], path: str) -> tuple[dict[str, int], list[float]]:
    """Map llama2.c pieces to SentencePiece spellings (space -> "▁"), checking the fixed special/byte layout."""
    if len(pieces) < _FIRST_MERGED_ID:
        message = f"expected at least {_FIRST_MERGED_ID} tokens (3 special + 256 bytes), got {len(pieces)}"
        raise DataError(message, path=path)
    expected = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{byte:02X}>".encode() for byte in range(256)]
    for token_id, want in enumerate(expected):
        if pieces[token_id][0] != want:
            message = f"token {token_id} is {pieces[token_id][0]!r}, expected {want!r} (llama2.c layout)"
            raise DataError(message, path=path)

    vocab = {piece: token_id for token_id, piece in enumerate(_SPECIAL_PIECES)}
    for token_id, (raw, _) in enumerate(pieces[_N_SPECIAL:], start=_N_SPECIAL):
        try:
            piece = raw.decode("utf-8").replace(" ", "▁")
        except UnicodeDecodeError:
            raise DataError(f"token {token_id} ({raw!r}) is not valid UTF-8", path=path) from None
        if piece in vocab:
            raise DataError(f"token {token_id} ({raw!r}) appears twice", path=path)
        vocab[piece] = token_id
    return vocab, [score for _, score in pieces]


def llama2c_to_hf_state_dict(config: Llama2cConfig, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Rename llama2.c arrays to `LlamaForCausalLM` parameter names.

    llama2.c rotates adjacent pairs (2i, 2i+1) of each head, HF Llama rotates (i, i + head_size/2) ("rotate_half").
    Reordering the rows of wq and wk per head (evens first, then odds) maps one onto the other; the same
    reordering of q and k leaves every attention score unchanged, so wv and wo stay as they are.
    """

    def permute(weight: np.ndarray, n_heads: int) -> torch.Tensor:
        rows, cols = weight.shape
        # The permutation of HF's convert_llama_weights_to_hf.py.
        heads = torch.from_numpy(weight.copy()).view(n_heads, rows // n_heads // 2, 2, cols)
        return heads.transpose(1, 2).reshape(rows, cols)

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array.copy())

    state = {
        "model.embed_tokens.weight": tensor(arrays["token_embedding"]),
        "model.norm.weight": tensor(arrays["rms_final_weight"]),
        "lm_head.weight": tensor(arrays["token_embedding" if config.shared_classifier else "wcls"]),
    }
    for layer in range(config.n_layers):
        prefix = f"model.layers.{layer}."
        state |= {
            prefix + "input_layernorm.weight": tensor(arrays["rms_att_weight"][layer]),
            prefix + "self_attn.q_proj.weight": permute(arrays["wq"][layer], config.n_heads),
            prefix + "self_attn.k_proj.weight": permute(arrays["wk"][layer], config.n_kv_heads),
            prefix + "self_attn.v_proj.weight": tensor(arrays["wv"][layer]),
            prefix + "self_attn.o_proj.weight": tensor(arrays["wo"][layer]),
            prefix + "post_attention_layernorm.weight": tensor(arrays["rms_ffn_weight"][layer]),
            prefix + "mlp.gate_proj.weight": tensor(arrays["w1"][layer]),
            prefix + "mlp.down_proj.weight": tensor(arrays["w2"][layer]),
            prefix + "mlp.up_proj.weight": tensor(arrays["w3"][layer]),
        }
    return state


def hf_llama_config(config: Llama2cConfig) -> LlamaConfig:
    """The `LlamaConfig` equivalent to a llama2.c model (RMSNorm eps 1e-5, SwiGLU, no biases, RoPE base 10000)."""
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.dim,
        intermediate_size=config.hidden_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_size,
        hidden_act="silu",
        max_position_embeddings=config.seq_len,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": _ROPE_THETA},
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=config.shared_classifier,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def convert_llama2c(checkpoint: str, tokenizer: str, output_dir: str) -> None:
    """Write a `LlamaForCausalLM` (config + safetensors) and its fast tokenizer to output_dir.

    Both load with `AutoModelForCausalLM.from_pretrained(output_dir)` / `AutoTokenizer.from_pretrained(output_dir)`.
    """
    config, arrays = read_llama2c_checkpoint(checkpoint)
    pieces = read_llama2c_tokenizer(tokenizer, config.vocab_size)
    hf_tokenizer = llama2c_tokenizer(pieces, config.seq_len, path=tokenizer)
    model = LlamaForCausalLM(hf_llama_config(config))
    model.load_state_dict(llama2c_to_hf_state_dict(config, arrays), strict=True)
    model.save_pretrained(output_dir)
    hf_tokenizer.save_pretrained(output_dir)


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError("no such file", path=path) from None
