"""Does a reward model score the empty response (EOS alone) above real ones? The diagnosis of the HH PPO collapse
(docs/results/uncertainty.md, "The PPO collapse").

Scores the SFT policy's samples of a policy-study unit's evaluation prompts, and the empty response to each prompt,
with the unit's reward models, as PPO scores them (EOS appended). For AVA models it also prints the pieces of the
score at EOS: the reward mean and the (rescaled) reward weight there. And which training responses truncation cuts.

    python experiments/empty_response.py outputs/experiments/hh-ppo-collapse/cache/hh-helpful-seed0-<hash> ava-p bt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from datasets import load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer

from avalign.data.tokenize import prompt_ids
from avalign.generation import generate_completions
from avalign.losses import response_scores
from avalign.reward_model import AVARewardModel, load_reward_model


def rows(unit: Path, prompts: int, max_new_tokens: int, max_prompt_tokens: int) -> tuple[list[dict], list[dict]]:
    """(sampled, empty): tokenised rows of the SFT policy's samples and of EOS alone, one per prompt."""
    tokenizer = AutoTokenizer.from_pretrained(str(unit / "tokenizer"))
    texts = list(dict.fromkeys(load_from_disk(str(unit / "eval_pairs"))["prompt"]))[:prompts]
    policy = AutoModelForCausalLM.from_pretrained(str(unit / "sft"))
    samples = generate_completions(policy, tokenizer, texts, max_new_tokens=max_new_tokens, seed=0, batch_size=50,
                                   progress=False, max_prompt_tokens=max_prompt_tokens)
    eos = tokenizer.eos_token_id
    sampled, empty = [], []
    for sample in samples:
        prompt = prompt_ids(tokenizer, sample["prompt"])[-max_prompt_tokens:]
        response = tokenizer(sample["completion"], add_special_tokens=False)["input_ids"][:max_new_tokens]
        sampled.append({"prompt_ids": prompt, "completion_ids": response + [eos]})
        empty.append({"prompt_ids": prompt, "completion_ids": [eos]})
    return sampled, empty


def describe(reward_model, features: list[dict]) -> dict:
    """Scores as PPO sums them; for an AVA model also the length, the reward mean and weight at EOS (each row's
    last response position)."""
    if not isinstance(reward_model, AVARewardModel):
        return {"scores": reward_model.forward_features(features).numpy()}
    out = reward_model.forward_features(features)
    return {"scores": reward_model.output_scores(out)["sum"].numpy(), "length": out.mask.sum(-1).float().numpy(),
            "mu_eos": response_scores(out.reward_mean, out.mask)["last"].numpy(),
            "w_eos": response_scores(out.reward_weights, out.mask)["last"].numpy()}


def cut_pairs(unit: Path, max_length: int) -> dict:
    """Which training responses truncation cuts at ``max_length`` (the old rule dropped their EOS, so a final EOS
    marked the uncut side): the share of pairs where only the chosen, or only the rejected, response is cut, and
    where the chosen text is the longer."""
    from avalign.data.tokenize import tokenize_dataset

    tokenizer = AutoTokenizer.from_pretrained(str(unit / "tokenizer"))
    pairs = load_from_disk(str(unit / "train_pairs"))
    tokenized, _ = tokenize_dataset(pairs, tokenizer, max_length=max_length, source="train_pairs")
    cut = {key: np.array([len(ids) < len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
                          for ids, text in zip(tokenized[f"{key}_ids"], pairs[key])]) for key in ("chosen", "rejected")}
    longer = np.array([len(c) > len(r) for c, r in zip(pairs["chosen"], pairs["rejected"])])
    return {"pairs": len(pairs), "only_chosen_cut": float(np.mean(cut["chosen"] & ~cut["rejected"])),
            "only_rejected_cut": float(np.mean(cut["rejected"] & ~cut["chosen"])),
            "chosen_longer_in_characters": float(longer.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("unit", help="a policy-study unit directory (cache/<dataset>-seed<k>-<hash>)")
    parser.add_argument("models", nargs="+", help="reward models under <unit>/models")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--max_new_tokens", type=int, default=24)
    parser.add_argument("--max_prompt_tokens", type=int, default=64)
    parser.add_argument("--max_length", type=int, default=128, help="the reward models' training truncation")
    args = parser.parse_args()
    unit = Path(args.unit)
    sampled, empty = rows(unit, args.prompts, args.max_new_tokens, args.max_prompt_tokens)
    report = {"truncation": cut_pairs(unit, args.max_length)}
    with torch.no_grad():
        for name in args.models:
            reward_model = load_reward_model(str(unit / "models" / name))
            real, nothing = describe(reward_model, sampled), describe(reward_model, empty)
            report[name] = {"empty_above_sampled": float(np.mean(nothing["scores"] > real["scores"])),
                            **{f"{key}_sampled": float(np.mean(value)) for key, value in real.items()},
                            **{f"{key}_empty": float(np.mean(value)) for key, value in nothing.items()}}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
