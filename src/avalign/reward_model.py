"""Inference with a trained TQR model: per-token reward means, sigmas and weights, and sequence scores."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .data.collator import TQRCollator
from .data.tokenize import ensure_pad_token, tokenize_dataset
from .evaluation.pairwise import bootstrap_interval, pairwise_correct
from .losses import sequence_rewards
from .modeling import TQRModel


@dataclass
class ResponseRewards:
    """Rewards of one response. Per-token lists cover the response tokens (EOS included), in order."""

    token_ids: list[int]
    reward_mean: list[float]
    reward_std: list[float]
    reward_weights: list[float]
    last: float  # weighted reward mean at the last response token
    sum: float  # Eq. 19: sum of weighted reward means over the response


class AVARewardModel:
    """Scores (prompt, response) pairs with a TQR model, in batches, without gradients."""

    def __init__(
        self, model: TQRModel, tokenizer: PreTrainedTokenizerBase, *, max_length: int | None = None,
        batch_size: int = 32, device: str | torch.device | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = ensure_pad_token(tokenizer)
        self.max_length, self.batch_size = max_length, batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.collator = TQRCollator(
            tokenizer.pad_token_id, model.is_encoder_decoder, getattr(model.backbone.config, "decoder_start_token_id", None)
        )

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "AVARewardModel":
        return cls(TQRModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), **kwargs)

    @torch.no_grad()
    def _forward(self, rows: Dataset, progress: bool):
        """Yield (tokenised features, TQROutput, sequence scores) per batch; pairs are truncated jointly, exactly as
        in training, and come back as 2B rows (chosen first)."""
        tokenized, _ = tokenize_dataset(
            rows, self.tokenizer, max_length=self.max_length, is_encoder_decoder=self.model.is_encoder_decoder,
            source="scored rows",
        )
        for start in tqdm(range(0, len(tokenized), self.batch_size), desc="scoring", disable=not progress):
            features = [tokenized[i] for i in range(start, min(start + self.batch_size, len(tokenized)))]
            batch = self.collator(features)
            batch.pop("is_preference")
            out = self.model(**{k: v.to(self.device) for k, v in batch.items()}, with_q=False)
            yield features, out, sequence_rewards(out.reward_mean, out.reward_weights, out.mask)

    def score(self, prompts: list, responses: list, progress: bool = False) -> list[ResponseRewards]:
        """One ResponseRewards per (prompt, response); prompts/responses are strings or conversational messages."""
        rows = Dataset.from_dict({"prompt": list(prompts), "completion": list(responses)})
        results = []
        for features, out, scores in self._forward(rows, progress):
            for row, feature in enumerate(features):
                valid = out.mask[row]
                results.append(
                    ResponseRewards(
                        token_ids=list(feature["completion_ids"][: int(valid.sum())]),
                        reward_mean=out.reward_mean[row][valid].tolist(),
                        reward_std=out.reward_log_std[row][valid].exp().tolist(),
                        reward_weights=out.reward_weights[row][valid].tolist(),
                        last=float(scores["last"][row]),
                        sum=float(scores["sum"][row]),
                    )
                )
        return results

    def evaluate_pairs(self, dataset: Dataset, progress: bool = False) -> dict[str, float]:
        """Pairwise accuracy (ties wrong) under both scorings over prompt/chosen/rejected rows, each with a 95%
        percentile-bootstrap interval over pairs."""
        chosen: dict[str, list[float]] = {"last": [], "sum": []}
        rejected: dict[str, list[float]] = {"last": [], "sum": []}
        for features, _, scores in self._forward(dataset.select_columns(["prompt", "chosen", "rejected"]), progress):
            half = len(features)
            for scoring in ("last", "sum"):
                chosen[scoring] += scores[scoring][:half].tolist()
                rejected[scoring] += scores[scoring][half:].tolist()
        metrics: dict = {"n": len(chosen["last"])}
        for scoring in ("last", "sum"):
            correct = pairwise_correct(chosen[scoring], rejected[scoring])
            metrics[f"accuracy_{scoring}"] = float(correct.mean()) if correct.size else float("nan")
            metrics[f"accuracy_{scoring}_ci95"] = bootstrap_interval(correct)
        return metrics
