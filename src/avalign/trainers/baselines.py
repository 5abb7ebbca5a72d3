"""Baselines through TRL, not reimplemented: Bradley-Terry reward models with trl.RewardTrainer."""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase
from trl import RewardConfig, RewardTrainer

from ..evaluation.pairwise import pairwise_accuracy


def bt_config(**overrides: Any) -> RewardConfig:
    """RewardConfig with settings that TRL defaults differently from AVAConfig made equal: no bf16 on CPU,
    no gradient checkpointing, no reports."""
    values: dict[str, Any] = dict(bf16=torch.cuda.is_available(), gradient_checkpointing=False, report_to="none")
    values.update(overrides)
    return RewardConfig(**values)


def bradley_terry_trainer(
    backbone: str, tokenizer: PreTrainedTokenizerBase, train: Dataset, eval_dataset: Dataset | None, args: RewardConfig
) -> RewardTrainer:
    """TRL's RewardTrainer on ``backbone`` (a hub id or a directory saved by save_pretrained) with a fresh scalar
    head. The pad token must differ from EOS: the classifier scores the last non-pad token, and TRL appends EOS."""
    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    return RewardTrainer(model=model, args=args, train_dataset=train, eval_dataset=eval_dataset, processing_class=tokenizer)


@torch.no_grad()
def bt_pairwise_accuracy(trainer: RewardTrainer) -> float:
    """Pairwise accuracy (ties wrong) over every pair of the trainer's eval set, tokenised by TRL."""
    model = trainer.model.eval()
    chosen, rejected = [], []
    for batch in trainer.get_eval_dataloader():
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        c, r = torch.chunk(rewards, 2)
        chosen += c.tolist()
        rejected += r.tolist()
    return pairwise_accuracy(chosen, rejected)
