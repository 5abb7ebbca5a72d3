"""llama2.c -> Hugging Face conversion of Karpathy's stories260K, checked against independent re-implementations.

The reference forward pass and tokenizer below follow llama2.c's run.c directly (adjacent-pair RoPE from the
file's own freq_cis tables, greedy best-score pair merges), sharing no code with avalign.convert.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from avalign.cli import main as cli_main
from avalign.convert import convert_llama2c, read_llama2c_checkpoint, read_llama2c_tokenizer
from avalign.errors import DataError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyllamas-stories260K"
CHECKPOINT, TOKENIZER = DATA / "stories260K.bin", DATA / "tok512.bin"
needs_data = pytest.mark.skipif(
    not (CHECKPOINT.is_file() and TOKENIZER.is_file()),
    reason=f"stories260K.bin / tok512.bin not found in {DATA} (the shared data folder next to the repository)",
)
SAMPLE_START = "Once upon a time, there was a little girl named Lily"
SENTENCES = [
    "Once upon a time, there was a little girl named Lily.",
    'Tim said, "I want to play with the big red ball!"',
    "  Two leading spaces, a\ttab and a\nnewline.",
    "Unicode: café, naïve, “quotes”, 日本語, 🎉 and numbers 1234567890.",
    "x",
    "",
]


# --- independent references, written from llama2.c's run.c ---------------------------------------------------


def reference_weights(path: Path) -> tuple[tuple[int, ...], dict[str, np.ndarray]]:
    header = struct.unpack("<7i", path.read_bytes()[:28])
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = header
    kv_dim, half = dim * kv_heads // heads, dim // heads // 2
    floats = np.fromfile(path, dtype="<f4", offset=28).astype(np.float64)
    shapes = {
        "emb": (vocab, dim), "rms_att": (layers, dim), "wq": (layers, dim, dim), "wk": (layers, kv_dim, dim),
        "wv": (layers, kv_dim, dim), "wo": (layers, dim, dim), "rms_ffn": (layers, dim), "w1": (layers, hidden, dim),
        "w2": (layers, dim, hidden), "w3": (layers, hidden, dim), "rms_final": (dim,),
        "cos": (seq_len, half), "sin": (seq_len, half),
    }  # fmt: skip
    weights, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        weights[name] = floats[offset : offset + size].reshape(shape)
        offset += size
    assert offset == floats.size
    return header, weights


def reference_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """Float64 llama2.c forward over a whole sequence: logits [len(tokens), vocab]."""
    (dim, _, layers, heads, kv_heads, _, _), w = reference_weights(path)
    head_size, length = dim // heads, len(tokens)

    def rmsnorm(x, weight):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5) * weight

    def rope(x, n_heads):  # rotate adjacent pairs (2i, 2i+1) of every head
        pairs = x.reshape(length, n_heads, head_size // 2, 2)
        cos, sin = w["cos"][:length, None, :], w["sin"][:length, None, :]
        even, odd = pairs[..., 0], pairs[..., 1]
        return np.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1).reshape(length, n_heads, head_size)

    x = w["emb"][tokens]
    causal = np.tril(np.ones((length, length), dtype=bool))
    for layer in range(layers):
        xb = rmsnorm(x, w["rms_att"][layer])
        q = rope(xb @ w["wq"][layer].T, heads)
        k = rope(xb @ w["wk"][layer].T, kv_heads)
        v = (xb @ w["wv"][layer].T).reshape(length, kv_heads, head_size)
        out = np.empty((length, heads, head_size))
        for head in range(heads):
            kv = head // (heads // kv_heads)
            scores = np.where(causal, q[:, head] @ k[:, kv].T / np.sqrt(head_size), -np.inf)
            attention = np.exp(scores - scores.max(axis=-1, keepdims=True))
            out[:, head] = (attention / attention.sum(axis=-1, keepdims=True)) @ v[:, kv]
        x = x + out.reshape(length, dim) @ w["wo"][layer].T
        xb = rmsnorm(x, w["rms_ffn"][layer])
        gate = xb @ w["w1"][layer].T
        x = x + (gate / (1 + np.exp(-gate)) * (xb @ w["w3"][layer].T)) @ w["w2"][layer].T
    return rmsnorm(x, w["rms_final"]) @ w["emb"].T


def reference_encode(path: Path, text: str, vocab_size: int = 512) -> list[int]:
    """llama2.c's encode(text, bos=1, eos=0): dummy-prefix space, characters or bytes, greedy best-score merges."""
    data, offset, pieces, scores = path.read_bytes(), 4, [], []
    for _ in range(vocab_size):
        score, size = struct.unpack_from("<fi", data, offset)
        pieces.append(data[offset + 8 : offset + 8 + size])
        scores.append(score)
        offset += 8 + size
    lookup = {piece: token for token, piece in enumerate(pieces)}
    tokens = [1] + ([lookup[b" "]] if text else [])
    for char in text:
        raw = char.encode("utf-8")
        tokens += [lookup[raw]] if raw in lookup else [byte + 3 for byte in raw]
    while True:
        candidates = [
            (scores[merged], -i, merged)
            for i in range(len(tokens) - 1)
            if (merged := lookup.get(pieces[tokens[i]] + pieces[tokens[i + 1]])) is not None
        ]
        if not candidates:
            return tokens
        _, minus_i, merged = max(candidates)  # best score, leftmost on ties
        tokens[-minus_i : -minus_i + 2] = [merged]


# --- the converted model --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("stories260K-hf")
    argv = ["llama2c", "--checkpoint", str(CHECKPOINT), "--tokenizer", str(TOKENIZER), "--output_dir", str(output_dir)]
    assert cli_main(["convert", *argv]) == 0
    model = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    return model, AutoTokenizer.from_pretrained(output_dir)


@pytest.fixture(scope="module")
def greedy_ids(converted) -> list[int]:
    model, _ = converted
    with torch.no_grad():
        return model.generate(torch.tensor([[1]]), max_new_tokens=48, do_sample=False)[0].tolist()


@needs_data
def test_greedy_sample_from_bos_is_karpathys(converted, greedy_ids):
    _, tokenizer = converted
    assert tokenizer.decode(greedy_ids, skip_special_tokens=True).startswith(SAMPLE_START)


@needs_data
def test_logits_match_a_float64_llama2c_forward(converted, greedy_ids):
    model, _ = converted
    tokens = greedy_ids[:32]
    with torch.no_grad():
        hf_logits = model(torch.tensor([tokens])).logits[0].double().numpy()
    expected = reference_logits(CHECKPOINT, tokens)
    np.testing.assert_allclose(hf_logits, expected, rtol=0, atol=1e-4)
    assert greedy_ids[1 : len(tokens)] == expected.argmax(-1)[:-1].tolist()


@needs_data
@pytest.mark.parametrize("text", SENTENCES)
def test_tokenizer_encodes_like_llama2c(converted, text):
    _, tokenizer = converted
    ids = tokenizer(text).input_ids
    assert ids == reference_encode(TOKENIZER, text)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


@needs_data
def test_config_and_special_tokens(converted):
    model, tokenizer = converted
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 5, 8)
    assert (config.num_key_value_heads, config.intermediate_size, config.vocab_size) == (4, 172, 512)
    assert config.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert config.rope_parameters["rope_theta"] == 10000.0 and config.rms_norm_eps == 1e-5
    special_ids = (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert special_ids == (0, 1, 2, 0)
    assert len(tokenizer) == 512 and tokenizer.convert_ids_to_tokens([3, 258, 259]) == ["<0x00>", "<0xFF>", "▁t"]


# --- clear errors on bad files (synthetic, so they run without the shared data) ---------------------------------


def _tiny_checkpoint(path: Path, header=(8, 16, 1, 2, 1, 4, 3), extra_floats: int = 0) -> Path:
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = header
    kv_dim, half = dim * kv_heads // heads, dim // heads // 2
    count = vocab * dim + layers * (2 * dim + 2 * dim * dim + 2 * kv_dim * dim + 3 * hidden * dim) + dim
    angles = np.outer(np.arange(seq_len), 10000.0 ** (-np.arange(0, 2 * half, 2) / (2 * half)))
    floats = np.concatenate([np.zeros(count + extra_floats), np.cos(angles).ravel(), np.sin(angles).ravel()])
    path.write_bytes(struct.pack("<7i", *header) + floats.astype("<f4").tobytes())
    return path


def test_a_well_formed_tiny_checkpoint_reads(tmp_path):
    config, arrays = read_llama2c_checkpoint(_tiny_checkpoint(tmp_path / "ok.bin"))
    assert (config.kv_dim, config.shared_classifier, arrays["wk"].shape) == (4, True, (1, 4, 8))


def test_truncated_checkpoint_names_the_file(tmp_path):
    path = _tiny_checkpoint(tmp_path / "model.bin")
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(DataError, match=r"model\.bin.*does not match its header"):
        read_llama2c_checkpoint(path)


def test_header_mismatch_names_the_file(tmp_path):
    too_long = _tiny_checkpoint(tmp_path / "long.bin", extra_floats=8)
    with pytest.raises(DataError, match=r"long\.bin.*does not match its header"):
        read_llama2c_checkpoint(too_long)
    odd = tmp_path / "odd.bin"
    odd.write_bytes(struct.pack("<7i", 9, 16, 1, 2, 1, 4, 3) + bytes(64))
    with pytest.raises(DataError, match=r"odd\.bin.*implausible"):
        read_llama2c_checkpoint(odd)
    newer = tmp_path / "v1.bin"
    newer.write_bytes(struct.pack("<Ii", 0x616B3432, 1) + bytes(256))
    with pytest.raises(DataError, match=r"v1\.bin.*version-1 export"):
        read_llama2c_checkpoint(newer)


def test_bad_tokenizer_file_names_the_file(tmp_path):
    path = tmp_path / "tok.bin"
    path.write_bytes(struct.pack("<i", 7) + struct.pack("<fi", 0.0, 5) + b"<unk>" + struct.pack("<fi", 0.0, 20))
    with pytest.raises(DataError, match=r"tok\.bin.*only read 1 of 512"):
        read_llama2c_tokenizer(path, 512)
    with pytest.raises(DataError, match=r"tok\.bin.*unexpected bytes"):
        read_llama2c_tokenizer(path, 1)


def test_missing_file_names_it(tmp_path, capsys):
    missing = tmp_path / "nope.bin"
    with pytest.raises(DataError, match=r"nope\.bin: no such file"):
        convert_llama2c(str(missing), str(missing), str(tmp_path / "out"))
    argv = ["llama2c", "--checkpoint", str(missing), "--tokenizer", str(missing), "--output_dir", str(tmp_path)]
    assert cli_main(["convert", *argv]) == 2
    assert str(missing) in capsys.readouterr().err
