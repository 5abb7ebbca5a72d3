"""Inference with trained reward models: AVA (TQR) models give per-token reward means, sigmas and weights and two
sequence scores; Bradley-Terry models (TRL's RewardTrainer) give one score. ``load_reward_model`` picks the class.

Both classes share one interface: ``scorings`` (the sequence scores the model offers), ``sequence_scores(prompts,
responses)`` (a list per scoring) and ``evaluate_pairs(dataset)``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from .backbones import check_fits, context_length
from .data.collator import TQRCollator, collate_sequences
from .data.formats import DEMONSTRATION, Record, RowFormat, validate_row
from .data.tokenize import ensure_pad_token, tokenize_dataset
from .evaluation.pairwise import bootstrap_interval, pairwise_correct
from .losses import sequence_rewards
from .errors import ConfigError, DataError
from .modeling import TQR_CONFIG_NAME, TQRModel, TQROutput, upcast
from .training_record import load_training_record


def token_rewards(output: TQROutput, kappa: float = 0.0) -> torch.Tensor:
    """The library's one definition of an AVA model's per-token reward, [B, T] (read where ``output.mask``):
    w_t mu_t - kappa sigma_t, the weighted reward mean of Eq. 19 lowered by kappa standard deviations of the
    reward posterior. Scoring, PPO's dense rewards, the GRPO/RLOO reward functions and the dense-reward benchmark
    all read this function. kappa = 0: the mean."""
    return output.reward_weights * output.reward_mean - kappa * output.reward_log_std.exp()


@dataclass
class ResponseRewards:
    """Rewards of one response. Per-token lists cover the response tokens (EOS included), in order;
    ``token_rewards`` is ``token_rewards(...)`` (kappa 0), the reading PPO optimises."""

    token_ids: list[int]
    reward_mean: list[float]
    reward_std: list[float]
    reward_weights: list[float]
    token_rewards: list[float]
    last: float  # weighted reward mean at the last response token
    sum: float  # Eq. 19: sum of weighted reward means over the response


def pair_metrics(chosen: dict[str, list[float]], rejected: dict[str, list[float]]) -> dict:
    """Per scoring: pairwise accuracy (ties wrong) with a 95% percentile-bootstrap interval over pairs; and ``n``."""
    metrics: dict = {"n": len(next(iter(chosen.values())))}
    for scoring in chosen:
        correct = pairwise_correct(chosen[scoring], rejected[scoring])
        metrics[f"accuracy_{scoring}"] = float(correct.mean()) if correct.size else float("nan")
        metrics[f"accuracy_{scoring}_ci95"] = bootstrap_interval(correct)
    return metrics


def _prompt_completion_rows(prompts: list, responses: list) -> Dataset:
    """(prompt, response) pairs as rows, after checking that they pair up and are text or messages."""
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise DataError(f"got {len(prompts)} prompts but {len(responses)} responses; pass one response per prompt")
    for row, (prompt, response) in enumerate(zip(prompts, responses), 1):
        validate_row(Record("scored rows", row, {"prompt": prompt, "completion": response}),
                     RowFormat(DEMONSTRATION, conversational=isinstance(prompt, list)))
    return Dataset.from_dict({"prompt": prompts, "completion": responses})


def _batches(tokenized: Dataset, batch_size: int, progress: bool):
    for start in tqdm(range(0, len(tokenized), batch_size), desc="scoring", disable=not progress):
        yield [tokenized[i] for i in range(start, min(start + batch_size, len(tokenized)))]


class _PairEvaluation:
    is_encoder_decoder = False

    def _fit_to(self, backbone, max_length: int | None) -> None:
        """Score within the model's context: max_length None means the whole context; beyond it is refused, as is a
        tokenizer with ids past the embedding matrix."""
        self.max_length = context_length(backbone.config) if max_length is None else max_length
        check_fits(backbone, self.tokenizer, self.max_length)

    @staticmethod
    def _trained_length(path: str, kwargs: dict) -> dict:
        """``kwargs`` with max_length, when not given, the truncation the model was trained with."""
        if kwargs.get("max_length") is None:
            kwargs = {**kwargs, "max_length": load_training_record(path).get("max_length")}
        return kwargs

    def _tokenized(self, rows: Dataset) -> Dataset:
        """Rows as token ids: tokenised and truncated as in training, unless the caller already did (prompt_ids)."""
        if "prompt_ids" in rows.column_names:
            return rows
        return tokenize_dataset(rows, self.tokenizer, max_length=self.max_length,
                                is_encoder_decoder=self.is_encoder_decoder, source="scored rows")[0]

    @staticmethod
    def _pairs(dataset: Dataset) -> Dataset:
        ids = ["prompt_ids", "chosen_ids", "rejected_ids"]
        return dataset.select_columns(ids if "prompt_ids" in dataset.column_names else ["prompt", "chosen", "rejected"])

    def pair_scores(self, dataset: Dataset, progress: bool = False) -> tuple[dict, dict]:
        """({scoring: chosen scores}, {scoring: rejected scores}) over pairs given as text or as token ids."""
        raise NotImplementedError

    def evaluate_pairs(self, dataset: Dataset, progress: bool = False) -> dict:
        """Pairwise accuracy (ties wrong) under each scoring over prompt/chosen/rejected rows, each with a 95%
        percentile-bootstrap interval over pairs; pairs are truncated jointly, exactly as in training."""
        return pair_metrics(*self.pair_scores(dataset, progress))


class AVARewardModel(_PairEvaluation):
    """Scores (prompt, response) pairs with a TQR model, in batches, without gradients."""

    scorings = ("last", "sum")

    def __init__(
        self, model: TQRModel, tokenizer: PreTrainedTokenizerBase, *, max_length: int | None = None,
        batch_size: int = 32, device: str | torch.device | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = ensure_pad_token(tokenizer)
        self.batch_size, self.is_encoder_decoder = batch_size, model.is_encoder_decoder
        self._fit_to(model.backbone, max_length)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.collator = TQRCollator(
            tokenizer.pad_token_id, model.is_encoder_decoder, getattr(model.backbone.config, "decoder_start_token_id", None)
        )

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "AVARewardModel":
        """Scores with the truncation the model was trained with unless ``max_length`` is given."""
        return cls(TQRModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), **cls._trained_length(path, kwargs))

    @torch.no_grad()
    def _forward(self, rows: Dataset, progress: bool):
        """Yield (tokenised features, TQROutput, sequence scores) per batch; pairs are truncated jointly, exactly as
        in training, and come back as 2B rows (chosen first)."""
        for features in _batches(self._tokenized(rows), self.batch_size, progress):
            out = self.forward_features(features)
            yield features, out, sequence_rewards(out.reward_mean, out.reward_weights, out.mask)

    @torch.no_grad()
    def forward_features(self, features: list[dict]) -> TQROutput:
        """The TQR heads (no Q) on tokenised rows (``prompt_ids`` and ``completion_ids``, or chosen/rejected ids)."""
        batch = self.collator(features)
        batch.pop("is_preference")
        return self.model(**{k: v.to(self.device) for k, v in batch.items()}, with_q=False)

    def score(self, prompts: list, responses: list, progress: bool = False) -> list[ResponseRewards]:
        """One ResponseRewards per (prompt, response); prompts/responses are strings or conversational messages."""
        rows = _prompt_completion_rows(prompts, responses)
        results = []
        for features, out, scores in self._forward(rows, progress):
            dense = token_rewards(out)
            for row, feature in enumerate(features):
                valid = out.mask[row]
                results.append(
                    ResponseRewards(
                        token_ids=list(feature["completion_ids"][: int(valid.sum())]),
                        reward_mean=out.reward_mean[row][valid].tolist(),
                        reward_std=out.reward_log_std[row][valid].exp().tolist(),
                        reward_weights=out.reward_weights[row][valid].tolist(),
                        token_rewards=dense[row][valid].tolist(),
                        last=float(scores["last"][row]),
                        sum=float(scores["sum"][row]),
                    )
                )
        return results

    def pair_scores(self, dataset: Dataset, progress: bool = False) -> tuple[dict, dict]:
        """({scoring: chosen scores}, {scoring: rejected scores}) over prompt/chosen/rejected rows."""
        chosen: dict[str, list[float]] = {"last": [], "sum": []}
        rejected: dict[str, list[float]] = {"last": [], "sum": []}
        for features, _, scores in self._forward(self._pairs(dataset), progress):
            half = len(features)
            for scoring in ("last", "sum"):
                chosen[scoring] += scores[scoring][:half].tolist()
                rejected[scoring] += scores[scoring][half:].tolist()
        return chosen, rejected

    def sequence_scores(self, prompts: list, responses: list, progress: bool = False) -> dict[str, list[float]]:
        scored = self.score(prompts, responses, progress)
        return {scoring: [getattr(r, scoring) for r in scored] for scoring in self.scorings}


class BTRewardModel(_PairEvaluation):
    """Scores (prompt, response) pairs with a sequence-classification reward model (e.g. one trained by TRL's
    RewardTrainer through ``avalign train --objective bt``). The sequence is prompt tokens + response tokens + EOS,
    tokenised and truncated exactly as for AVA models, and the model reads the last non-pad token."""

    scorings = ("last",)

    def __init__(
        self, model, tokenizer: PreTrainedTokenizerBase, *, max_length: int | None = None, batch_size: int = 32,
        device: str | torch.device | None = None,
    ):
        if model.config.is_encoder_decoder:
            raise ConfigError("Bradley-Terry scoring supports causal-LM sequence classifiers only")
        self.model = model.eval()
        self.tokenizer = ensure_pad_token(tokenizer)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size
        self._fit_to(model, max_length)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "BTRewardModel":
        """Refuses a model without a trained scalar head (a plain LM would get a random one); scores with the
        truncation the model was trained with unless ``max_length`` is given."""
        model, info = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, output_loading_info=True)
        if info["missing_keys"]:
            raise ConfigError(f"{path} is not a reward model: {sorted(info['missing_keys'])} "
                              "would be initialised at random (a directory written by `avalign train` holds a "
                              f"{TQR_CONFIG_NAME} or a trained classification head)")
        return cls(model, AutoTokenizer.from_pretrained(path), **cls._trained_length(path, kwargs))

    @torch.no_grad()
    def _scores(self, rows: Dataset, progress: bool) -> list[float]:
        tokenized = self._tokenized(rows)
        keys = ("chosen", "rejected") if "rejected_ids" in tokenized.column_names else ("completion",)
        scores: list[float] = []
        for features in _batches(tokenized, self.batch_size, progress):
            logits = self.forward_features(features, keys)
            scores += logits.reshape(len(keys), -1).T.reshape(-1).tolist()  # row-major: each row's responses together
        return scores

    @torch.no_grad()
    def forward_features(self, features: list[dict], keys: tuple[str, ...] = ("completion",)) -> torch.Tensor:
        """One score per sequence for tokenised rows: a block of rows per response key, in ``keys`` order."""
        batch = collate_sequences(features, keys, self.tokenizer.pad_token_id)
        return upcast(self.model(input_ids=batch["input_ids"].to(self.device),
                                 attention_mask=batch["attention_mask"].to(self.device)).logits[:, 0])

    def sequence_scores(self, prompts: list, responses: list, progress: bool = False) -> dict[str, list[float]]:
        rows = _prompt_completion_rows(prompts, responses)
        return {"last": self._scores(rows, progress)}

    def pair_scores(self, dataset: Dataset, progress: bool = False) -> tuple[dict, dict]:
        scores = self._scores(self._pairs(dataset), progress)
        return {"last": scores[0::2]}, {"last": scores[1::2]}


def load_reward_model(path: str, **kwargs) -> AVARewardModel | BTRewardModel:
    """An AVA reward model for a directory holding a TQR model (``tqr_config.json``), else a Bradley-Terry one."""
    if (Path(path) / TQR_CONFIG_NAME).exists():
        return AVARewardModel.from_pretrained(path, **kwargs)
    try:
        return BTRewardModel.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:  # not a model directory, an unknown hub id, no network, ...
        raise ConfigError(f"cannot load a reward model from '{path}': {exc}") from exc
