"""Policies and sampling: load a policy (a plain Hugging Face LM or a TQR checkpoint), generate completions, best-of-N.

A TQR model with the pretrained Q (Eq. 12 on the LM head) is trained as a language model, so its backbone is the
policy. With a fresh Q head ("w/o ptq") the LM head is untrained and the policy is the Boltzmann policy
pi(a | s) = softmax_a(beta * Q(s, a)). ``boltzmann_policy`` makes that an ordinary LM by swapping the LM head for one
that outputs beta * Q, so ``generate`` (KV cache, temperature, top-k, top-p, ...) and the model's logits in a forward
pass both are the policy, on every architecture, with no extra forward pass per step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .data.formats import RESPONSE_FIELDS, Record, check_text
from .data.loading import load_dataset, read_file
from .data.synthetic import SYNTHETIC, SyntheticTask, synthetic_datasets
from .data.tokenize import ensure_pad_token, prompt_ids
from .errors import ConfigError, DataError
from .modeling import TQRModel

Scorer = Callable[[list[str], list[str]], list[float]]  # (prompts, completions) -> one score per completion


def q_values_all_actions(logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 12 for every action: Q(s, .) = log softmax(alpha * softmax(logits)), in at least float32."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.log_softmax(alpha * logits.softmax(-1), -1)


class BoltzmannHead(nn.Module):
    """An LM head whose logits are beta * Q(s, .) from a fresh Q head, so softmax(logits) is the Boltzmann policy.

    ``input_scale`` undoes a scaling the backbone applies to the hidden state before its head (T5 with tied
    embeddings), ``logits_bias`` a bias it adds after it (BART's final_logits_bias): Q must come from the same hidden
    state as in ``TQRModel.forward``."""

    def __init__(self, q_head: nn.Linear, alpha: float, beta: float, input_scale: float = 1.0,
                 logits_bias: torch.Tensor | None = None):
        super().__init__()
        self.q_head, self.alpha, self.beta, self.input_scale = q_head, alpha, beta, input_scale
        self.register_buffer("logits_bias", None if logits_bias is None else logits_bias.detach().clone())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.beta * q_values_all_actions(self.q_head(hidden * self.input_scale), self.alpha)
        return logits if self.logits_bias is None else logits - self.logits_bias


def boltzmann_policy(model: TQRModel, beta: float = 1.0) -> PreTrainedModel:
    """The backbone of a fresh-Q-head TQR model with its LM head replaced by ``BoltzmannHead`` (in place).

    The TQR model's own outputs do not change: with a fresh Q head it never reads the LM head."""
    if model.q_head is None:
        raise ConfigError("this TQR model uses the pretrained Q (Eq. 12 on the LM head): its backbone is the policy")
    backbone, config = model.backbone, model.backbone.config
    rescaled = getattr(config, "logit_scale", None) not in (None, 1.0)  # Cohere
    if rescaled or getattr(config, "final_logit_softcapping", None) is not None:  # Gemma 2
        raise ConfigError("Boltzmann policies over backbones that rescale or cap their logits are not supported")
    input_scale = config.d_model**0.5 if getattr(config, "scale_decoder_outputs", False) else 1.0
    head = BoltzmannHead(model.q_head, model.tqr_config.alpha, beta, input_scale,
                         getattr(backbone, "final_logits_bias", None))
    backbone.set_output_embeddings(head)
    return backbone


def load_policy(path: str, *, beta: float = 1.0, device: str | torch.device | None = None):
    """(policy LM, tokenizer) from a plain Hugging Face causal-LM / seq2seq directory or a saved TQR model.

    A plain directory and a pretrained-Q TQR model give their backbone (with a LoRA adapter merged into it); a fresh-Q-head TQR model gives the
    Boltzmann policy softmax(beta * Q). ``device``: default CUDA when available."""
    # A plain LM directory gets pretrained-Q heads: its backbone is the LM. A LoRA adapter is merged for sampling.
    model = TQRModel.from_pretrained(path).merge_and_unload()
    if model.q_head is None and beta != 1.0:
        raise ConfigError(f"beta applies to TQR models with a fresh Q head; '{path}' samples its LM (use temperature)")
    policy = model.backbone if model.q_head is None else boltzmann_policy(model, beta)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a tokenizer from '{path}': {exc}") from exc
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return policy.to(device).eval(), ensure_pad_token(tokenizer)


def load_prompts(
    source: str, *, max_prompts: int | None = None, family: str | None = None, eval_fraction: float = 0.1,
    dataset_seed: int = 0, synthetic_eval_size: int = 500,
) -> tuple[list[str], SyntheticTask | None]:
    """Distinct prompts, in order of first appearance, and the synthetic task when they are its prompts.

    ``source``: "synthetic" (the synthetic task's eval prompts); a .jsonl/.json file of prompt rows (a ``prompt``
    string and no response field); or any dataset ``load_dataset`` reads, whose eval split's prompts are taken
    (split with the same ``eval_fraction`` and ``dataset_seed`` as ``avalign train``)."""
    if max_prompts is not None and max_prompts < 1:
        raise ConfigError(f"max_prompts must be at least 1, got {max_prompts}")
    task = None
    if source == SYNTHETIC:
        _, eval_set, task = synthetic_datasets("preference", 0, synthetic_eval_size)
        prompts = eval_set["prompt"]
    elif _is_prompt_file(source):
        prompts = [record_text(record, "prompt") for record in read_file(source)]
    else:
        loaded = load_dataset(source, family=family, eval_fraction=eval_fraction, seed=dataset_seed)
        if loaded.eval is None or any(not isinstance(p, str) for p in loaded.eval["prompt"]):
            raise DataError("expected an evaluation split of standard (string) prompts", path=source, field="prompt")
        prompts = loaded.eval["prompt"]
    distinct = list(dict.fromkeys(prompts))[:max_prompts]
    if not distinct:
        raise DataError("no prompts", path=source)
    return distinct, task


def record_text(record: Record, field: str) -> str:
    """A string field of a row read by ``read_file``; DataError naming the file, row and field otherwise."""
    if field not in record.data:
        raise record.error(f"missing (the row has fields {sorted(map(str, record.data))})", field)
    return check_text(record, field, record.data[field])


def _is_prompt_file(source: str) -> bool:
    """A local JSON(L) file whose first row has a prompt and no response (chosen/rejected/completion)."""
    path = Path(source)
    if not path.is_file() or not path.name.lower().removesuffix(".gz").endswith((".jsonl", ".json")):
        return False
    first = read_file(path, max_rows=1)[0].data
    return "prompt" in first and not any(f in first for fields in RESPONSE_FIELDS.values() for f in fields)


def _completion_text(tokens: list[int], tokenizer: PreTrainedTokenizerBase) -> str:
    """Decode generated tokens up to the first EOS, without special tokens."""
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    return tokenizer.decode(tokens, skip_special_tokens=True)


@torch.no_grad()
def generate_completions(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *, num_return_sequences: int = 1,
    max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, do_sample: bool = True,
    seed: int = 0, batch_size: int = 16, max_prompt_tokens: int | None = None, progress: bool = True,
    **generate_kwargs,
) -> list[dict]:
    """``{"prompt", "completion", "sample_index"}`` for each prompt and sample, in prompt order.

    Prompts are tokenised as in training and batched (left-padded for decoder-only models). The defaults sample
    from the policy itself (temperature 1, no top-k / top-p truncation). The same arguments and seed give the same
    outputs (the seed is set once, before the first batch; when sampling, another batch size draws differently).
    ``max_prompt_tokens`` keeps a longer prompt's last tokens, where the response continues.
    ``generate_kwargs`` go to ``model.generate`` as they are (e.g. ``repetition_penalty``, ``suppress_tokens``)."""
    if not do_sample and num_return_sequences > 1:
        raise ConfigError("greedy decoding gives one completion per prompt; use sampling for num_return_sequences > 1")
    if max_prompt_tokens is not None and max_prompt_tokens < 1:
        raise ConfigError(f"max_prompt_tokens must be at least 1, got {max_prompt_tokens}")
    is_encoder_decoder = bool(model.config.is_encoder_decoder)
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k) if do_sample else {}
    torch.manual_seed(seed)
    rows = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="generating", disable=not progress):
        batch = prompts[start : start + batch_size]
        inputs = tokenizer.pad(
            {"input_ids": [prompt_ids(tokenizer, prompt, is_encoder_decoder)[-(max_prompt_tokens or 0):]
                           for prompt in batch]},
            padding_side="right" if is_encoder_decoder else "left", return_tensors="pt",
        ).to(model.device)
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences,
            do_sample=do_sample, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **sampling,
            **generate_kwargs,
        )
        # Decoder-only outputs repeat the (padded) prompt; encoder-decoder outputs start with the decoder start token.
        generated = output[:, 1:] if is_encoder_decoder else output[:, inputs["input_ids"].shape[1] :]
        for index, tokens in enumerate(generated.tolist()):
            rows.append({"prompt": batch[index // num_return_sequences],
                         "completion": _completion_text(tokens, tokenizer), "sample_index": index % num_return_sequences})
    return rows


def best_of_n(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], scorer: Scorer, n: int,
    **generation,
) -> list[dict]:
    """Best-of-N: sample ``n`` completions per prompt (``generate_completions`` with ``generation``) and keep the one
    ``scorer`` rates highest (the first on ties; NaN, a scorer's answer for what it cannot score, ranks last).
    Each row: prompt, completion, ``best_index`` (which sample), ``proxy_score`` (its score), and all ``n``
    ``candidates`` with their ``candidate_scores`` in sample order (any first N' of them is a best-of-N' sample; one
    alone is a plain policy sample)."""
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    samples = generate_completions(model, tokenizer, prompts, num_return_sequences=n, **generation)
    scores = scorer([s["prompt"] for s in samples], [s["completion"] for s in samples])
    rows = []
    for start in range(0, len(samples), n):
        group = [float(score) for score in scores[start : start + n]]
        best = int(np.argmax(np.where(np.isnan(group), -np.inf, group)))
        rows.append({"prompt": samples[start]["prompt"], "completion": samples[start + best]["completion"],
                     "best_index": best, "proxy_score": group[best],
                     "candidates": [s["completion"] for s in samples[start : start + n]], "candidate_scores": group})
    return rows
