"""The embedded synthetic preference task: known per-token gold rewards, generated at run time, no network.

- Vocabulary: pseudo-words (consonant-vowel-consonant), one token each under the task's word-level tokenizer,
  so every response token has a gold reward.
- Gold reward: a fixed context-dependent table r(previous word, word) = base[word] + interaction[previous, word].
- Texts: prompts and responses are sampled from a random Markov chain (the "initial policy"), so a language
  model has structure to learn.
- Preferences: two responses per prompt, chosen with probability sigmoid(G(y1) - G(y2)) (Bradley-Terry on gold
  returns G = sum of gold rewards). Demonstrations: the best of k sampled responses under G.

Everything is a deterministic function of ``SyntheticTaskConfig`` (including its seed).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}


def table_rewards(base: np.ndarray, interaction: np.ndarray, previous: int, items: list[int]) -> list[float]:
    """r(previous item, item) = base[item] + interaction[previous, item] along ``items``, starting after ``previous``:
    the gold reward of the synthetic task (over words) and of the stories260K task (over tokens)."""
    rewards, prev = [], previous
    for item in items:
        rewards.append(float(base[item] + interaction[prev, item]))
        prev = item
    return rewards


SYNTHETIC = "synthetic"  # the name that selects this task wherever a dataset or prompt source is named


@dataclass(frozen=True)
class SyntheticTaskConfig:
    num_words: int = 48
    prompt_length: tuple[int, int] = (3, 6)  # inclusive range of words
    response_length: tuple[int, int] = (4, 10)
    interaction_scale: float = 0.7  # how much the previous word changes a word's reward
    chain_temperature: float = 1.0  # higher: flatter Markov chain for the initial policy
    best_of: int = 4  # demonstrations are best-of-k under the gold reward
    seed: int = 0


class SyntheticTask:
    """Words, gold reward table and initial policy of one task instance."""

    def __init__(self, config: SyntheticTaskConfig | None = None):
        self.config = config or SyntheticTaskConfig()
        rng = np.random.default_rng(self.config.seed)
        consonants, vowels = "bdfgklmnprstvz", "aeiou"
        all_words = ["".join(p) for p in itertools.product(consonants, vowels, consonants)]
        chosen = rng.choice(len(all_words), size=self.config.num_words, replace=False)
        self.words = [all_words[i] for i in sorted(chosen)]
        n = len(self.words)
        self.base_reward = rng.normal(0.0, 1.0, size=n)
        self.interaction = rng.normal(0.0, self.config.interaction_scale, size=(n, n))
        logits = rng.normal(0.0, 1.5, size=(n, n)) / self.config.chain_temperature
        self.transition = np.exp(logits - logits.max(1, keepdims=True))
        self.transition /= self.transition.sum(1, keepdims=True)

    def gold_rewards(self, previous: int, response: list[int]) -> list[float]:
        """Gold per-token rewards of ``response`` (word indices) following the word ``previous``."""
        return table_rewards(self.base_reward, self.interaction, previous, response)

    def _walk(self, rng: np.random.Generator, start: int, length: int) -> list[int]:
        words, prev = [], start
        for _ in range(length):
            prev = int(rng.choice(len(self.words), p=self.transition[prev]))
            words.append(prev)
        return words

    def _sample_prompt(self, rng: np.random.Generator) -> list[int]:
        first = int(rng.integers(len(self.words)))
        return [first] + self._walk(rng, first, int(rng.integers(*self.config.prompt_length, endpoint=True)) - 1)

    def _sample_response(self, rng: np.random.Generator, prompt: list[int]) -> list[int]:
        return self._walk(rng, prompt[-1], int(rng.integers(*self.config.response_length, endpoint=True)))

    def text(self, words: list[int]) -> str:
        return " ".join(self.words[w] for w in words)

    def preference_rows(self, num_rows: int, seed: int) -> list[dict]:
        """Rows in TRL's preference format plus the gold per-token rewards of each response."""
        rng = np.random.default_rng([self.config.seed, seed])
        rows = []
        for _ in range(num_rows):
            prompt = self._sample_prompt(rng)
            first, second = self._sample_response(rng, prompt), self._sample_response(rng, prompt)
            gold_first, gold_second = self.gold_rewards(prompt[-1], first), self.gold_rewards(prompt[-1], second)
            first_wins = rng.random() < 1.0 / (1.0 + np.exp(sum(gold_second) - sum(gold_first)))
            (chosen, gold_c), (rejected, gold_r) = (
                ((first, gold_first), (second, gold_second)) if first_wins else ((second, gold_second), (first, gold_first))
            )
            rows.append(
                {
                    "prompt": self.text(prompt),
                    "chosen": " " + self.text(chosen),
                    "rejected": " " + self.text(rejected),
                    "chosen_gold_rewards": gold_c,
                    "rejected_gold_rewards": gold_r,
                }
            )
        return rows

    def demonstration_rows(self, num_rows: int, seed: int) -> list[dict]:
        """Rows in TRL's prompt/completion format: the best of k sampled responses under the gold return."""
        rng = np.random.default_rng([self.config.seed, seed, 1])
        rows = []
        for _ in range(num_rows):
            prompt = self._sample_prompt(rng)
            candidates = [self._sample_response(rng, prompt) for _ in range(self.config.best_of)]
            golds = [self.gold_rewards(prompt[-1], c) for c in candidates]
            best = int(np.argmax([sum(g) for g in golds]))
            rows.append(
                {"prompt": self.text(prompt), "completion": " " + self.text(candidates[best]), "completion_gold_rewards": golds[best]}
            )
        return rows

    def tokenizer(self) -> PreTrainedTokenizerFast:
        """A real Hugging Face tokenizer over the task's words: one token per word, whitespace-separated."""
        vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS.values())}
        vocab.update({word: len(vocab) + i for i, word in enumerate(self.words)})
        backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(
            tokenizer_object=backend,
            pad_token=SPECIAL_TOKENS["pad"],
            bos_token=SPECIAL_TOKENS["bos"],
            eos_token=SPECIAL_TOKENS["eos"],
            unk_token=SPECIAL_TOKENS["unk"],
        )


def synthetic_datasets(
    kind: str = "preference", num_train: int = 4000, num_eval: int = 500, config: SyntheticTaskConfig | None = None
) -> tuple[Dataset, Dataset, SyntheticTask]:
    """Train rows of ``kind`` ("preference" or "demonstration") and eval *pairs* (what accuracy and the gold metrics
    need, whatever the training data). Prompts are sampled independently per split (seeds 1 and 2)."""
    task = SyntheticTask(config)
    make = task.preference_rows if kind == "preference" else task.demonstration_rows
    return Dataset.from_list(make(num_train, seed=1)), Dataset.from_list(task.preference_rows(num_eval, seed=2)), task
