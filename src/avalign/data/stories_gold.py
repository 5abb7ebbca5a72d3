"""A gold-reward preference task on a real pretrained LM: stories260K writes the texts, a known table scores them.

The embedded synthetic task (``data/synthetic.py``) needs a from-scratch backbone; here the backbone is a real
pretrained causal LM, so AVA's pretrained Q means what the paper means.

- Prompts: story openings sampled from the model itself (from BOS, cut at a random token count).
- Responses: two continuations per prompt sampled from the model (temperature 1, no truncation of the
  distribution), as the tokenizer then encodes them (``data.tokenize``), so every response token has a gold reward.
- Gold reward: a fixed table over the model's vocabulary, r(previous token, token) = base[token] +
  interaction[previous, token], sparse (most entries 0) and heavy-tailed (Student-t), like the synthetic task's
  bigram table but over sub-word tokens.
- Preferences: chosen with probability sigmoid(G(y1) - G(y2)), Bradley-Terry on gold returns G.

Everything is a deterministic function of the model, ``StoriesGoldConfig`` (its ``seed`` draws the table: one
instance per seed) and the row seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .synthetic import table_rewards


@dataclass(frozen=True)
class StoriesGoldConfig:
    seed: int = 0  # draws the gold table (one task instance per seed)
    prompt_tokens: tuple[int, int] = (6, 16)  # inclusive range of opening tokens after BOS
    max_new_tokens: int = 24
    base_density: float = 0.15  # share of tokens with a reward of their own
    interaction_density: float = 0.02  # share of (previous, token) pairs that change it
    interaction_scale: float = 1.5
    tail_df: float = 3.0  # Student-t degrees of freedom: heavy tails
    clip: float = 8.0


class StoriesGoldTask:
    """The gold table of one instance over a vocabulary of ``vocab_size`` tokens."""

    def __init__(self, vocab_size: int, config: StoriesGoldConfig | None = None):
        self.config = config or StoriesGoldConfig()
        c = self.config
        rng = np.random.default_rng([c.seed, vocab_size])

        def sparse(shape, density, scale):
            values = np.clip(rng.standard_t(c.tail_df, size=shape) * scale, -c.clip, c.clip)
            return np.where(rng.random(shape) < density, values, 0.0)

        self.base_reward = sparse(vocab_size, c.base_density, 1.0)
        self.interaction = sparse((vocab_size, vocab_size), c.interaction_density, c.interaction_scale)

    def gold_rewards(self, previous: int, tokens: list[int]) -> list[float]:
        """Gold per-token rewards of ``tokens`` following the token ``previous``."""
        return table_rewards(self.base_reward, self.interaction, previous, tokens)


def stories_gold_rows(model, tokenizer, task: StoriesGoldTask, num_rows: int, seed: int,
                      batch_size: int = 64) -> tuple[list[dict], dict]:
    """Preference rows (TRL's prompt/chosen/rejected plus ``chosen_gold_rewards``/``rejected_gold_rewards``, one per
    response token without EOS) and a report of what was left out: pairs with an empty response or two identical
    responses, which carry no preference."""
    from .tokenize import prompt_ids
    from ..generation import generate_completions

    c = task.config
    rng = np.random.default_rng([c.seed, seed])
    openings = generate_completions(model, tokenizer, [""] * num_rows, max_new_tokens=c.prompt_tokens[1],
                                    seed=int(rng.integers(2**31)), batch_size=batch_size, progress=False)
    prompts = []
    for row in openings:
        ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        cut = int(rng.integers(c.prompt_tokens[0], c.prompt_tokens[1], endpoint=True))
        prompts.append(tokenizer.decode(ids[:cut]))
    samples = generate_completions(model, tokenizer, prompts, num_return_sequences=2, max_new_tokens=c.max_new_tokens,
                                   seed=int(rng.integers(2**31)), batch_size=batch_size, progress=False)
    rows, report = [], {"pairs_sampled": num_rows, "empty_response": 0, "identical_responses": 0, "empty_prompt": 0}
    for index, prompt in enumerate(prompts):
        first, second = samples[2 * index]["completion"], samples[2 * index + 1]["completion"]
        prompt_tokens = prompt_ids(tokenizer, prompt)
        if not prompt.strip():
            report["empty_prompt"] += 1
            continue
        responses = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (first, second)]
        if not responses[0] or not responses[1]:
            report["empty_response"] += 1
            continue
        if responses[0] == responses[1]:
            report["identical_responses"] += 1
            continue
        gold = [task.gold_rewards(prompt_tokens[-1], ids) for ids in responses]
        first_wins = rng.random() < 1.0 / (1.0 + np.exp(sum(gold[1]) - sum(gold[0])))
        order = (0, 1) if first_wins else (1, 0)
        texts = (first, second)
        rows.append({"prompt": prompt, "chosen": texts[order[0]], "rejected": texts[order[1]],
                     "chosen_gold_rewards": gold[order[0]], "rejected_gold_rewards": gold[order[1]]})
    if not rows:
        raise DataError("the stories gold task produced no usable pairs", path="stories260K")
    report["pairs"] = len(rows)
    return rows, report
