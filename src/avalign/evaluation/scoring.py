"""Scoring rows of responses with a reward model, streamed: each input row comes back as it was, plus its responses'
scores and per-token rewards (what `avalign score` writes, and what the HTML/PNG reports draw).

A demonstration row (prompt/completion) gets ``score``, ``tokens`` and ``token_rewards``; a preference row
(prompt/chosen/rejected, or chosen/rejected with the prompt inside) gets the same fields for each side, prefixed
``chosen_`` and ``rejected_``. AVA models add ``token_mean`` (mu_t), ``token_std`` (sigma_t) and ``token_weight``
(w_t); ``token_rewards`` is ``avalign.reward_model.token_rewards`` (kappa 0), the reward PPO optimises. Bradley-Terry
models give ``token_rewards`` only with ``prefix_rewards=True`` (``BTRewardModel.prefix_rewards``). Each response is
scored on its own: ``max_length`` truncates each side separately, not jointly as ``evaluate_pairs`` does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from tqdm.auto import tqdm

from ..data.families import parse_trl
from ..data.formats import RESPONSE_FIELDS, Record, row_format
from ..errors import ConfigError
from ..reward_model import AVARewardModel, BTRewardModel, ResponseRewards, SequenceReward


def output_prefix(column: str) -> str:
    """Where a response's fields go in a scored row: ``score`` for a completion, ``chosen_score`` for a side."""
    return "" if column == "completion" else f"{column}_"


def token_texts(tokenizer, token_ids: list[int], context: int = 4) -> list[str]:
    """The text each token adds, spaces included: decode(previous tokens + it) minus decode(previous tokens), over a
    few tokens of context (word-level decoders join words with spaces, byte-level ones merge bytes across tokens);
    the token decoded alone where the shorter text is no prefix of the longer one."""
    texts = []
    for i, token in enumerate(token_ids):
        before = tokenizer.decode(token_ids[max(0, i - context):i])
        after = tokenizer.decode(token_ids[max(0, i - context):i + 1])
        texts.append(after[len(before):] if after.startswith(before) else tokenizer.decode([token]))
    return texts


def _fields(result: ResponseRewards | SequenceReward, scoring: str, tokenizer) -> dict:
    fields = {"score": getattr(result, scoring), "tokens": token_texts(tokenizer, result.token_ids)}
    if result.token_rewards is not None:
        fields["token_rewards"] = result.token_rewards
    if isinstance(result, ResponseRewards):
        fields.update(token_mean=result.reward_mean, token_std=result.reward_std, token_weight=result.reward_weights)
    return fields


def scored_rows(
    scorer: AVARewardModel | BTRewardModel, records: Iterable[Record], *, scoring: str | None = None,
    prefix_rewards: bool = False, progress: bool = False,
) -> Iterator[dict]:
    """Yield each record's row with its responses' scores added, ``scorer.batch_size`` rows at a time (memory does
    not grow with the number of rows). Rows are TRL rows, checked as the loader checks them (DataError naming file,
    row and field); a chosen/rejected pair whose two prompts differ is refused."""
    scoring = scoring or scorer.scorings[0]
    if scoring not in scorer.scorings:
        raise ConfigError(f"the model offers scorings {list(scorer.scorings)}, not '{scoring}'")
    if prefix_rewards and not isinstance(scorer, BTRewardModel):
        raise ConfigError("prefix rewards are for Bradley-Terry models; AVA models give token rewards of their own")
    records = iter(records)
    with tqdm(desc="scoring", unit="rows", disable=not progress) as bar:
        while batch := list(itertools.islice(records, scorer.batch_size)):
            parsed = []
            for record in batch:
                rows = parse_trl([record]).rows
                if not rows:
                    raise record.error("chosen and rejected have different prompts (split at the last assistant turn)")
                parsed.append(rows[0].data)
            prompts, responses, where = [], [], []
            for index, row in enumerate(parsed):
                for column in RESPONSE_FIELDS[row_format(row).kind]:
                    prompts.append(row["prompt"])
                    responses.append(row[column])
                    where.append((index, column))
            options = {"prefix_rewards": True} if prefix_rewards else {}
            results = scorer.score(prompts, responses, **options)
            outputs = [dict(record.data) for record in batch]
            for (index, column), result in zip(where, results):
                prefix = output_prefix(column)
                outputs[index].update({prefix + k: v for k, v in _fields(result, scoring, scorer.tokenizer).items()})
            yield from outputs
            bar.update(len(batch))


class ScoreStatistics:
    """Running count, mean and std (Welford) of the scores of scored rows, and the pairwise accuracy of preference
    rows (ties wrong): what `avalign score` reports, and the reference statistics of reward normalisation."""

    def __init__(self):
        self.responses, self.mean, self._squares, self.pairs, self.correct = 0, 0.0, 0.0, 0, 0

    def add(self, row: dict) -> None:
        for key in ("score", "chosen_score", "rejected_score"):
            if key in row:
                self.responses += 1
                delta = row[key] - self.mean
                self.mean += delta / self.responses
                self._squares += delta * (row[key] - self.mean)
        if "chosen_score" in row:
            self.pairs += 1
            self.correct += row["chosen_score"] > row["rejected_score"]

    @property
    def std(self) -> float:
        return (self._squares / (self.responses - 1)) ** 0.5 if self.responses > 1 else float("nan")

    def summary(self) -> dict:
        summary = {"responses": self.responses, "score_mean": self.mean, "score_std": self.std}
        if self.pairs:
            summary.update(pairs=self.pairs, accuracy=self.correct / self.pairs)
        return summary
