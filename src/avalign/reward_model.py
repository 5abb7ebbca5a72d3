"""Inference with trained reward models: AVA (TQR) models give per-token reward means, sigmas and weights and two
sequence scores, optionally pessimistic (kappa); Bradley-Terry models (TRL's RewardTrainer) give one score; an
ensemble of either gives one aggregated score. ``load_reward_model`` picks the class, ``load_reward_models`` builds
an ensemble from several paths.

All share one interface: ``scorings`` (the sequence scores the model offers), ``sequence_scores(prompts,
responses)`` (a list per scoring) and ``evaluate_pairs(dataset)``."""

from __future__ import annotations

import json
import math
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
from .losses import response_scores
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
    ``token_rewards`` is ``token_rewards(output, kappa)`` under the model's kappa, the reading PPO optimises, and
    ``last`` and ``sum`` are read from it."""

    token_ids: list[int]
    reward_mean: list[float]
    reward_std: list[float]
    reward_weights: list[float]
    token_rewards: list[float]
    last: float  # token reward at the last response token (kappa 0: the weighted reward mean)
    sum: float  # sum of token rewards over the response (kappa 0: Eq. 19)


@dataclass
class SequenceReward:
    """A Bradley-Terry model's reward of one response: its score and, on request, the prefix differences
    (``BTRewardModel.prefix_rewards``) over the response tokens (EOS included)."""

    token_ids: list[int]
    last: float
    token_rewards: list[float] | None = None


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

    def token_readings(self, features: list[dict]) -> dict[str, list[torch.Tensor]]:
        """Per-token rewards of tokenised rows (``prompt_ids``, ``completion_ids``; responses end with EOS), one
        tensor per row as long as its response, under each reading this model offers (``{reading: rows}``)."""
        raise NotImplementedError

    def evaluate_pairs(self, dataset: Dataset, progress: bool = False) -> dict:
        """Pairwise accuracy (ties wrong) under each scoring over prompt/chosen/rejected rows, each with a 95%
        percentile-bootstrap interval over pairs; pairs are truncated jointly, exactly as in training."""
        return pair_metrics(*self.pair_scores(dataset, progress))


class AVARewardModel(_PairEvaluation):
    """Scores (prompt, response) pairs with a TQR model, in batches, without gradients. Every score it gives (token
    rewards, ``last``, ``sum``) is read from ``token_rewards(output, kappa)``: kappa > 0 scores pessimistically,
    kappa standard deviations of the reward posterior below the mean."""

    scorings = ("last", "sum")  # the model's own score (TQRConfig.scoring) comes first on an instance

    def __init__(
        self, model: TQRModel, tokenizer: PreTrainedTokenizerBase, *, max_length: int | None = None,
        batch_size: int = 32, device: str | torch.device | None = None, kappa: float = 0.0,
    ):
        if not kappa >= 0:
            raise ConfigError(f"kappa must be >= 0 (a pessimistic lower bound), got {kappa}")
        self.kappa = kappa
        native = model.tqr_config.scoring
        self.scorings = (native, *[s for s in AVARewardModel.scorings if s != native])
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
            yield features, out, self.output_scores(out)

    def output_scores(self, output: TQROutput) -> dict[str, torch.Tensor]:
        """{"last": [B], "sum": [B]} of a forward's token rewards under the model's kappa."""
        return response_scores(token_rewards(output, self.kappa), output.mask)

    @torch.no_grad()
    def forward_features(self, features: list[dict]) -> TQROutput:
        """The TQR heads (no Q) on tokenised rows (``prompt_ids`` and ``completion_ids``, or chosen/rejected ids)."""
        batch = self.collator(features)
        batch.pop("is_preference")
        return self.model(**{k: v.to(self.device) for k, v in batch.items()}, with_q=False)

    @torch.no_grad()
    def token_readings(self, features: list[dict]) -> dict[str, list[torch.Tensor]]:
        """``token_reward`` (the library's definition, ``token_rewards``, under the model's kappa) and ``mu`` (the
        unweighted reward mean)."""
        out = self.forward_features(features)
        readings = {"token_reward": token_rewards(out, self.kappa), "mu": out.reward_mean}
        return {name: [row[valid].float().cpu() for row, valid in zip(values, out.mask)] for name, values in readings.items()}

    def score(self, prompts: list, responses: list, progress: bool = False) -> list[ResponseRewards]:
        """One ResponseRewards per (prompt, response); prompts/responses are strings or conversational messages."""
        rows = _prompt_completion_rows(prompts, responses)
        results = []
        for features, out, scores in self._forward(rows, progress):
            dense = token_rewards(out, self.kappa)
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

    @torch.no_grad()
    def prefix_scores(self, features: list[dict]) -> list[torch.Tensor]:
        """Per row, the score of the prompt alone and of every response prefix, r(x), r(x, y_1), ..., r(x, y): one
        more value than the response has tokens, the last the response's score. For a causal backbone the score
        of a prefix is the score head on its last hidden state, so one forward gives every prefix."""
        head = getattr(self.model, "score", None)
        if head is None:
            raise ConfigError(f"{type(self.model).__name__} has no `score` head to read at every prefix")
        batch = collate_sequences(features, ("completion",), self.tokenizer.pad_token_id)
        hidden = self.model.base_model(input_ids=batch["input_ids"].to(self.device),
                                       attention_mask=batch["attention_mask"].to(self.device)).last_hidden_state
        scores = upcast(head(hidden)[..., 0]).cpu()
        rows = []
        for values, feature in zip(scores, features):
            start, length = len(feature["prompt_ids"]), len(feature["completion_ids"])
            if start == 0:
                raise ConfigError("prefix rewards need a prompt of at least one token (the first token's baseline)")
            rows.append(values[start - 1:start + length])
        return rows

    def prefix_rewards(self, features: list[dict]) -> list[torch.Tensor]:
        """Reward redistribution of the sequence score ("RED", Li et al. 2024): r(x, y_1..t) - r(x, y_1..t-1) per
        response token (``prefix_scores``' differences), the first against the prompt alone, so a row sums to
        r(x, y) - r(x)."""
        return [scores.diff() for scores in self.prefix_scores(features)]

    def token_readings(self, features: list[dict]) -> dict[str, list[torch.Tensor]]:
        return {"prefix_difference": self.prefix_rewards(features)}

    def score(self, prompts: list, responses: list, progress: bool = False,
              prefix_rewards: bool = False) -> list[SequenceReward]:
        """One SequenceReward per (prompt, response), with prefix-difference token rewards when asked."""
        rows = _prompt_completion_rows(prompts, responses)
        results = []
        for features in _batches(self._tokenized(rows), self.batch_size, progress):
            if prefix_rewards:  # one forward gives the score (the whole response's prefix) and the differences
                prefixes = self.prefix_scores(features)
                results += [SequenceReward(list(f["completion_ids"]), float(p[-1]), p.diff().tolist())
                            for f, p in zip(features, prefixes)]
            else:
                results += [SequenceReward(list(f["completion_ids"]), s)
                            for f, s in zip(features, self.forward_features(features).tolist())]
        return results

    def sequence_scores(self, prompts: list, responses: list, progress: bool = False) -> dict[str, list[float]]:
        rows = _prompt_completion_rows(prompts, responses)
        return {"last": self._scores(rows, progress)}

    def pair_scores(self, dataset: Dataset, progress: bool = False) -> tuple[dict, dict]:
        scores = self._scores(self._pairs(dataset), progress)
        return {"last": scores[0::2]}, {"last": scores[1::2]}


class DPOImplicitRewardModel(_PairEvaluation):
    """DPO's implicit reward as a reward model: per response token beta * (log pi(y_t | x, y_<t) - log
    pi_ref(y_t | x, y_<t)) (the dense reward RTO, Zhong et al. 2024, gives PPO), summed for the sequence score
    (``sum``, DPO's own margin). ``policy`` and ``reference`` are causal LMs sharing ``tokenizer``."""

    scorings = ("sum",)

    def __init__(self, policy, reference, tokenizer: PreTrainedTokenizerBase, *, beta: float,
                 max_length: int | None = None, batch_size: int = 32, device: str | torch.device | None = None):
        self.policy, self.reference = policy.eval(), reference.eval()
        self.tokenizer, self.beta = ensure_pad_token(tokenizer), beta
        self.batch_size = batch_size
        self._fit_to(policy, max_length)
        self.device = torch.device(device) if device is not None else next(policy.parameters()).device
        self.policy.to(self.device)
        self.reference.to(self.device)

    @torch.no_grad()
    def _response_log_probs(self, model, batch: dict, features: list[dict]) -> list[torch.Tensor]:
        logits = model(input_ids=batch["input_ids"].to(self.device),
                       attention_mask=batch["attention_mask"].to(self.device)).logits.float()
        log_probs = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None].to(self.device))[..., 0]
        rows = []
        for values, feature in zip(log_probs.cpu(), features):
            start, length = len(feature["prompt_ids"]), len(feature["completion_ids"])
            if start == 0:
                raise ConfigError("implicit rewards need a prompt of at least one token (it predicts the first)")
            rows.append(values[start - 1:start - 1 + length])  # position j predicts token j + 1
        return rows

    def token_readings(self, features: list[dict]) -> dict[str, list[torch.Tensor]]:
        batch = collate_sequences(features, ("completion",), self.tokenizer.pad_token_id)
        policy = self._response_log_probs(self.policy, batch, features)
        reference = self._response_log_probs(self.reference, batch, features)
        return {"implicit": [self.beta * (p - r) for p, r in zip(policy, reference)]}

    def pair_scores(self, dataset: Dataset, progress: bool = False) -> tuple[dict, dict]:
        chosen, rejected = [], []
        for features in _batches(self._tokenized(self._pairs(dataset)), self.batch_size, progress):
            for key, scores in (("chosen", chosen), ("rejected", rejected)):
                rows = [{"prompt_ids": f["prompt_ids"], "completion_ids": f[f"{key}_ids"]} for f in features]
                scores += [float(r.sum()) for r in self.token_readings(rows)["implicit"]]
        return {"sum": chosen}, {"sum": rejected}


ENSEMBLES = ("mean", "worst", "lcb")


def _check_ensemble(ensemble: str, k: float) -> None:
    if ensemble not in ENSEMBLES:
        raise ConfigError(f"unknown ensemble '{ensemble}'; expected one of {ENSEMBLES}")
    if not k >= 0:
        raise ConfigError(f"the ensemble's k must be >= 0 (mean - k std), got {k}")


def aggregate_scores(scores: torch.Tensor, ensemble: str, k: float = 1.0) -> torch.Tensor:
    """One score per response from an ensemble's scores [members, n] (Coste et al. 2023, "Reward Model Ensembles
    Help Mitigate Overoptimization"): ``mean``, ``worst`` (the minimum over members) or ``lcb`` (mean - k std over
    members, the population std)."""
    _check_ensemble(ensemble, k)
    if ensemble == "mean":
        return scores.mean(0)
    if ensemble == "worst":
        return scores.amin(0)
    return scores.mean(0) - k * scores.std(0, correction=0)


class EnsembleRewardModel(_PairEvaluation):
    """Several reward models (AVA, Bradley-Terry, or a mix) sharing one tokenizer vocabulary, scored together: each
    member gives its own first scoring (the score it was trained to rank by; an AVA member under its kappa) and
    ``aggregate_scores`` combines them into the one scoring this model offers, named after ``ensemble``.
    ``names`` (e.g. the members' paths) name the members in errors."""

    def __init__(self, members: list, ensemble: str, k: float = 1.0, *, names: list[str] | None = None):
        _check_ensemble(ensemble, k)
        names = list(names) if names is not None else [f"member {i}" for i in range(len(members))]
        if len(members) < 2 or len(names) != len(members):
            raise ConfigError(f"an ensemble needs at least two reward models (and one name each), got "
                              f"{len(members)} models and {len(names)} names")
        for name, member in zip(names, members):
            if not hasattr(member, "sequence_scores"):
                raise ConfigError(f"ensemble member {name} ({type(member).__name__}) gives no sequence scores")
            if member.tokenizer.get_vocab() != members[0].tokenizer.get_vocab():
                raise ConfigError(f"ensemble members must share one tokenizer vocabulary: {name}'s differs from "
                                  f"{names[0]}'s")
            if member.is_encoder_decoder != members[0].is_encoder_decoder:
                raise ConfigError(f"ensemble members must all be causal or all encoder-decoder: {name} differs from "
                                  f"{names[0]}")
        self.members, self.ensemble, self.k = list(members), ensemble, k
        self.scorings = (ensemble,)
        self.tokenizer, self.is_encoder_decoder = members[0].tokenizer, members[0].is_encoder_decoder
        self.batch_size = min(member.batch_size for member in members)
        self.max_length = min(member.max_length for member in members)

    def _aggregate(self, member_scores: list[list[float]]) -> list[float]:
        return aggregate_scores(torch.tensor(member_scores, dtype=torch.float64), self.ensemble, self.k).tolist()

    def member_scores(self, prompts: list, responses: list, progress: bool = False) -> torch.Tensor:
        """Each member's own score of each (prompt, response), [members, n] (float64); their spread is the
        ensemble's uncertainty."""
        return torch.tensor([member.sequence_scores(prompts, responses, progress)[member.scorings[0]]
                             for member in self.members], dtype=torch.float64)

    def sequence_scores(self, prompts: list, responses: list, progress: bool = False) -> dict[str, list[float]]:
        member_scores = self.member_scores(prompts, responses, progress)
        return {self.ensemble: aggregate_scores(member_scores, self.ensemble, self.k).tolist()}

    def pair_scores(self, dataset: Dataset, progress: bool = False) -> tuple[dict, dict]:
        chosen, rejected = [], []
        for member in self.members:  # each truncates the pairs as it was trained to
            member_chosen, member_rejected = member.pair_scores(dataset, progress)
            chosen.append(member_chosen[member.scorings[0]])
            rejected.append(member_rejected[member.scorings[0]])
        return {self.ensemble: self._aggregate(chosen)}, {self.ensemble: self._aggregate(rejected)}

    @torch.no_grad()
    def forward_features(self, features: list[dict]) -> torch.Tensor:
        """One aggregated score per tokenised row (``prompt_ids``, ``completion_ids``), as
        ``BTRewardModel.forward_features`` gives one score per row."""
        scores = []
        for member in self.members:
            if isinstance(member, AVARewardModel):
                scores.append(member.output_scores(member.forward_features(features))[member.scorings[0]])
            else:
                scores.append(member.forward_features(features))
        return aggregate_scores(torch.stack([s.double().cpu() for s in scores]), self.ensemble, self.k)


NORMALIZATION_NAME = "reward_normalization.json"


def save_normalization(directory: str, scoring: str, mean: float, std: float, responses: int) -> str:
    """Store the mean and std of a reward model's ``scoring`` scores on a reference set beside its weights; returns
    the file's path. ``(score - mean) / std`` is the normalised reward (OpenRLHF's normalize_reward)."""
    if not (std > 0 and math.isfinite(std) and math.isfinite(mean)):
        raise ConfigError(f"cannot normalise with mean {mean}, std {std} (measured on {responses} responses): "
                          "score at least two responses with different scores")
    path = Path(directory) / NORMALIZATION_NAME
    record = {"scoring": scoring, "mean": mean, "std": std, "responses": responses}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return str(path)


def normalize_on_pairs(scorer: "AVARewardModel | BTRewardModel", pairs: Dataset) -> dict:
    """The normalisation measured on both sides of reference pairs (the evaluation pairs at the end of `avalign
    train`) under the model's first scoring: ``{"scoring", "mean", "std", "responses"}`` for ``save_normalization``."""
    import statistics

    scoring = scorer.scorings[0]
    chosen, rejected = scorer.pair_scores(pairs)
    scores = chosen[scoring] + rejected[scoring]
    std = statistics.stdev(scores) if len(scores) > 1 else float("nan")
    return {"scoring": scoring, "mean": statistics.fmean(scores), "std": std, "responses": len(scores)}


def load_normalization(directory: str) -> dict | None:
    """The stored ``{"scoring", "mean", "std", "responses"}`` of a reward model, or None when it has none."""
    path = Path(directory) / NORMALIZATION_NAME
    return json.loads(path.read_text()) if path.exists() else None


def _is_ava(path: str) -> bool:
    return (Path(path) / TQR_CONFIG_NAME).exists()


def load_reward_model(path: str, kappa: float = 0.0, **kwargs) -> AVARewardModel | BTRewardModel:
    """An AVA reward model for a directory holding a TQR model (``tqr_config.json``), scoring under ``kappa``, else a
    Bradley-Terry one (which has no sigma, so kappa must be 0)."""
    if _is_ava(path):
        return AVARewardModel.from_pretrained(path, kappa=kappa, **kwargs)
    if kappa:
        raise ConfigError(f"kappa {kappa} needs an AVA reward model, and '{path}' is not one (a Bradley-Terry model "
                          "gives one score and no sigma)")
    try:
        return BTRewardModel.from_pretrained(path, **kwargs)
    except ConfigError:  # says what is wrong already
        raise
    except (OSError, ValueError) as exc:  # not a model directory, an unknown hub id, no network, ...
        raise ConfigError(f"cannot load a reward model from '{path}': {exc}") from exc


def load_reward_models(paths: str | list[str], ensemble: str | None = None, k: float = 1.0, kappa: float = 0.0,
                       **kwargs) -> AVARewardModel | BTRewardModel | EnsembleRewardModel:
    """One reward model (``load_reward_model``) for one path without ``ensemble``; an ``EnsembleRewardModel`` of
    several, aggregated by ``ensemble`` (with ``k`` for ``lcb``). ``kappa`` applies to the AVA members; at least one
    must be AVA when it is not 0. ``kwargs`` go to every member (max_length, batch_size, device)."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    if ensemble is None:
        if len(paths) != 1:
            raise ConfigError(f"{len(paths)} reward models need an ensemble to combine their scores: one of {ENSEMBLES}")
        return load_reward_model(paths[0], kappa=kappa, **kwargs)
    _check_ensemble(ensemble, k)
    if len(paths) < 2:
        raise ConfigError(f"ensemble '{ensemble}' needs at least two reward models, got {len(paths)}: {paths}")
    is_ava = [_is_ava(path) for path in paths]
    if kappa and not any(is_ava):
        raise ConfigError(f"kappa {kappa} needs an AVA reward model, and none of {paths} is one (Bradley-Terry "
                          "models give one score and no sigma)")
    members = [load_reward_model(path, kappa=kappa if ava else 0.0, **kwargs) for path, ava in zip(paths, is_ava)]
    return EnsembleRewardModel(members, ensemble, k, names=paths)
