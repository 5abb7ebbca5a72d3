"""AfD, Alignment from Demonstrations (Sun & van der Schaar 2024): preference pairs built from demonstrations,
the demonstration as chosen and a sample of the initial policy for the same prompt as rejected."""

from __future__ import annotations

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .cleaning import CleaningReport

EMPTY_SAMPLE = "empty policy sample"


@torch.no_grad()
def sample_responses(
    policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *, max_new_tokens: int,
    temperature: float = 1.0, seed: int = 0, batch_size: int = 32, max_prompt_tokens: int | None = None,
    progress: bool = False,
) -> list[str]:
    """One sampled response per prompt (left-padded batches; the text after the prompt, special tokens removed)."""
    torch.manual_seed(seed)
    policy.eval()
    # Left padding so every row's new tokens start at the same column; left truncation keeps a long prompt's end.
    sides = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = tokenizer.truncation_side = "left"
    responses = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="sampling", disable=not progress):
            batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False, truncation=max_prompt_tokens is not None,
                              max_length=max_prompt_tokens)
            output = policy.generate(**batch.to(policy.device), do_sample=True, temperature=temperature,
                                     max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
            responses += tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
    return responses


def afd_pairs(demonstrations: Dataset, samples: list[str], report: CleaningReport | None = None) -> Dataset:
    """prompt / chosen (the demonstration) / rejected (the policy's sample). ``demonstrations`` has prompt and
    completion (or chosen) columns. Samples that are empty after strip cannot be a response: dropped and counted."""
    column = "completion" if "completion" in demonstrations.column_names else "chosen"
    rows = [{"prompt": p, "chosen": c, "rejected": s if s.startswith(" ") else " " + s}
            for p, c, s in zip(demonstrations["prompt"], demonstrations[column], samples) if s.strip()]
    if report is not None:
        report.drop(EMPTY_SAMPLE, len(demonstrations) - len(rows))
    return Dataset.from_list(rows)
