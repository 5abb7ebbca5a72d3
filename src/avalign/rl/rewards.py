"""Rewards for policy optimisation: one reward per response token, from an AVA reward model (dense, with its
uncertainty), a Bradley-Terry model or an ensemble (one number at the end) or the synthetic task's gold reward; and
any of these reward models' sequence scores as a reward function for TRL's GRPOTrainer and RLOOTrainer.

A token-reward source maps the policy's token ids, ``token_rewards(prompt_ids, response_ids)``, to one float tensor
per response, as long as the response. Responses are what the policy sampled: they end with EOS, or stop at the
length limit without one. Reward models score a response with EOS appended, as in training and in
``AVARewardModel.score``; when a sampled response has no EOS, the reward of the appended EOS is added to the last
sampled token, so a response's token rewards always sum to its sequence score.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase
from trl.data_utils import maybe_apply_chat_template

from ..data.tokenize import ensure_pad_token, prompt_ids as tokenize_prompt
from ..errors import ConfigError, DataError
from ..reward_model import AVARewardModel, BTRewardModel, DPOImplicitRewardModel, EnsembleRewardModel, load_reward_model

RewardModel = AVARewardModel | BTRewardModel | DPOImplicitRewardModel | EnsembleRewardModel

REWARDS = ("dense", "sum", "last")


def place_rewards(token_rewards: torch.Tensor, reward: str) -> torch.Tensor:
    """Where one response's rewards [n] go. dense: every token keeps its own; sum: their total on the last token;
    last: the last token's own reward, alone."""
    if reward == "dense":
        return token_rewards
    if reward not in REWARDS:
        raise ConfigError(f"unknown reward '{reward}'; expected one of {REWARDS}")
    placed = torch.zeros_like(token_rewards)
    placed[-1] = token_rewards.sum() if reward == "sum" else token_rewards[-1]
    return placed


def fold_appended_eos(rewards: torch.Tensor, response_length: int) -> torch.Tensor:
    """Rewards of the reward model's tokens -> rewards of the policy's: the EOS the reward model appended to a
    response sampled without one gives its reward to the last sampled token."""
    if len(rewards) == response_length:
        return rewards
    return torch.cat([rewards[: response_length - 1], (rewards[-2] + rewards[-1]).reshape(1)])


def _with_eos(response: list[int], eos_token_id: int) -> list[int]:
    return response if response[-1] == eos_token_id else response + [eos_token_id]


@torch.no_grad()
def reward_model_token_rewards(
    reward_model: RewardModel, prompt_ids: list[list[int]], response_ids: list[list[int]], *, reward: str,
) -> list[torch.Tensor]:
    """Token rewards of (prompt, response) token-id rows in the reward model's vocabulary, placed by ``reward``.

    Per token, each model's first ``token_readings``: an AVA model's ``token_reward`` (``token_rewards`` under its
    kappa), a Bradley-Terry model's prefix differences (RED: they sum to its score less the prompt's), DPO's implicit
    reward (RTO). A Bradley-Terry model under ``last`` and an ensemble give their score on the last token instead.
    Rows are scored whole (the reward model's ``max_length`` is not applied), in its batches."""
    eos = reward_model.tokenizer.eos_token_id
    rows = []
    for start in range(0, len(prompt_ids), reward_model.batch_size):
        features = [{"prompt_ids": p, "completion_ids": _with_eos(r, eos)}
                    for p, r in zip(prompt_ids[start:start + reward_model.batch_size],
                                    response_ids[start:start + reward_model.batch_size])]
        if not isinstance(reward_model, EnsembleRewardModel) and not (
                isinstance(reward_model, BTRewardModel) and reward == "last"):
            rows += next(iter(reward_model.token_readings(features).values()))
        else:
            for score, feature in zip(reward_model.forward_features(features).cpu(), features):
                row = torch.zeros(len(feature["completion_ids"]))
                row[-1] = score
                rows.append(row)
    return [fold_appended_eos(place_rewards(r, reward), len(response)) for r, response in zip(rows, response_ids)]


def check_reward_options(reward_model: RewardModel, reward: str) -> None:
    """Ensembles give one number per sequence: ``last`` only."""
    if reward not in REWARDS:
        raise ConfigError(f"unknown reward '{reward}'; expected one of {REWARDS}")
    if reward != "last" and isinstance(reward_model, EnsembleRewardModel):
        raise ConfigError(f"an ensemble gives one score per sequence: use reward 'last' (got '{reward}'); dense and "
                          "summed token rewards need one AVA, Bradley-Terry or DPO reward model")


def loaded_reward_model(reward_model: RewardModel | str, kappa: float | None, **kwargs) -> RewardModel:
    """``reward_model`` itself, or the one at a path loaded with ``kappa`` (None: 0). A loaded model scores under the
    kappa it was built with, so a kappa given beside it is refused rather than silently ignored."""
    if isinstance(reward_model, str):
        try:
            return load_reward_model(reward_model, kappa=kappa or 0.0, **kwargs)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load a reward model from '{reward_model}': {exc}") from exc
    if kappa is not None:
        raise ConfigError(f"kappa {kappa} beside a loaded reward model: build it with its kappa instead "
                          "(AVARewardModel(..., kappa=...) or load_reward_models(..., kappa=...))")
    return reward_model


class RewardModelRewards:
    """Token rewards from an AVA or Bradley-Terry reward model or an ensemble that shares the policy's tokenizer (the
    policy's token ids are scored as they are, so dense rewards land on the tokens that earned them). ``kappa`` (and
    ``device``) apply when ``reward_model`` is a path; a loaded AVA model carries its own."""

    def __init__(self, reward_model: RewardModel | str, policy_tokenizer: PreTrainedTokenizerBase,
                 *, reward: str = "dense", kappa: float | None = None, device: str | None = None):
        reward_model = loaded_reward_model(reward_model, kappa, device=device)
        check_reward_options(reward_model, reward)
        if reward_model.tokenizer.get_vocab() != policy_tokenizer.get_vocab():
            raise ConfigError("the reward model's tokenizer differs from the policy's: PPO scores the policy's token "
                              "ids directly, so both must share one vocabulary")
        self.reward_model, self.reward = reward_model, reward

    def token_rewards(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[torch.Tensor]:
        return reward_model_token_rewards(self.reward_model, prompt_ids, response_ids, reward=self.reward)


class GoldRewards:
    """A gold task's per-token rewards as token rewards (``dense``), or their sum on the last token (``sum``): the
    true objective, for tests and over-optimisation curves. The task is the synthetic task (rewards over words,
    ``r(previous word, word)``) or the stories260K gold task (``data.stories_gold``: over token ids).

    The final EOS earns 0. On the synthetic task a token that is not a task word (a special token sampled
    mid-response) is off task: it earns the lowest reward any word can earn and leaves the previous word unchanged."""

    def __init__(self, task, tokenizer: PreTrainedTokenizerBase, *, reward: str = "dense"):
        from ..data.stories_gold import StoriesGoldTask

        if reward not in ("dense", "sum"):
            raise ConfigError(f"gold rewards are 'dense' or 'sum' (the gold return on the last token), got '{reward}'")
        self.task, self.reward, self.eos_token_id = task, reward, tokenizer.eos_token_id
        if isinstance(task, StoriesGoldTask):  # the table is over the tokenizer's own ids
            if len(task.base_reward) != len(tokenizer):
                raise ConfigError(f"the stories gold table covers {len(task.base_reward)} tokens; the tokenizer has "
                                  f"{len(tokenizer)}")
            self.word_of = {token: token for token in range(len(tokenizer))}
        else:
            ids = tokenizer.convert_tokens_to_ids(task.words)
            if tokenizer.unk_token_id in ids or None in ids:
                raise ConfigError("gold rewards need the synthetic task's word-level tokenizer (one token per task word)")
            self.word_of = {token: word for word, token in enumerate(ids)}
        self.off_task_reward = float((task.base_reward[None, :] + task.interaction).min())

    def token_rewards(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[torch.Tensor]:
        rewards = []
        for prompt, response in zip(prompt_ids, response_ids):
            previous = self.word_of.get(prompt[-1])
            if previous is None:
                raise DataError("gold rewards need prompts of the gold task (the synthetic task's end with a task word)")
            row = []
            for position, token in enumerate(response):
                word = self.word_of.get(token)
                is_final_eos = token == self.eos_token_id and position == len(response) - 1
                if is_final_eos:
                    row.append(0.0)
                elif word is not None:
                    row += self.task.gold_rewards(previous, [word])
                    previous = word
                else:
                    row.append(self.off_task_reward)
            rewards.append(place_rewards(torch.tensor(row), self.reward))
        return rewards


class RewardModelFunction:
    """A reward model's sequence scores as a reward function for TRL's GRPOTrainer and RLOOTrainer
    (``reward_funcs=[RewardModelFunction(path)]``): an AVA model's ``last`` or ``sum`` (Eq. 19; default: the score
    the model was trained to rank by), optionally pessimistic (``kappa``, with a path; a loaded model carries its
    own), a Bradley-Terry model's score, or an ensemble's aggregate (pass ``load_reward_models(paths, ensemble)``).

    TRL calls it as ``f(prompts=..., completions=..., completion_ids=..., **dataset_columns)`` with text (or
    conversational messages) and names its logged column after ``__name__`` (``ava_sum``, ``ava_sum_kappa0.5``,
    ``bt_last``, ``ensemble_worst``). Texts are tokenised with the reward model's tokenizer exactly as for scoring,
    except that an empty completion is scored as EOS alone instead of being an error (a policy may stop at once)."""

    def __init__(self, reward_model: RewardModel | str, *, scoring: str | None = None, kappa: float | None = None):
        reward_model = loaded_reward_model(reward_model, kappa)
        scoring = scoring or reward_model.scorings[0]  # the score the model was trained to rank by
        if scoring not in reward_model.scorings:
            raise ConfigError(f"scoring '{scoring}' is not offered by this reward model; choose one of "
                              f"{reward_model.scorings}")
        # AVA scorings are placements of its token rewards; the others give their one score at the last token
        self.reward = scoring if isinstance(reward_model, AVARewardModel) else "last"
        check_reward_options(reward_model, self.reward)
        self.reward_model, self.scoring = reward_model, scoring
        if isinstance(reward_model, AVARewardModel):
            self.__name__ = f"ava_{scoring}" + (f"_kappa{reward_model.kappa:g}" if reward_model.kappa else "")
        else:
            self.__name__ = ("ensemble_" if isinstance(reward_model, EnsembleRewardModel) else "bt_") + scoring

    def _encode(self, prompt, completion) -> tuple[list[int], list[int]]:
        tokenizer = ensure_pad_token(self.reward_model.tokenizer)
        example = maybe_apply_chat_template({"prompt": prompt, "completion": completion}, tokenizer)
        completion_ids = tokenizer(example["completion"], add_special_tokens=False)["input_ids"]
        return (tokenize_prompt(tokenizer, example["prompt"], self.reward_model.is_encoder_decoder),
                completion_ids + [tokenizer.eos_token_id])

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        encoded_prompts, encoded_completions = zip(*(self._encode(p, c) for p, c in zip(prompts, completions)))
        rewards = reward_model_token_rewards(self.reward_model, list(encoded_prompts), list(encoded_completions),
                                             reward=self.reward)
        return [float(r.sum()) for r in rewards]


AVARewardFunction = RewardModelFunction  # the name it had while it served AVA models only
