"""Baselines through TRL, not reimplemented: Bradley-Terry reward models (RewardTrainer), DPO (DPOTrainer) and SFT
(SFTTrainer), configured from the same AVAConfig as AVA so that a comparison differs only in the objective."""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, TrainingArguments
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

from ..data.tokenize import ensure_pad_token, load_chat_template, response_columns, tokenize_dataset
from ..errors import ConfigError, DataError
from ..modeling import check_quantization
from .ava_config import AVAConfig, TRL_OBJECTIVES


def bt_config(**overrides: Any) -> RewardConfig:
    """RewardConfig with settings that TRL defaults differently from AVAConfig made equal: no bf16 on CPU,
    no gradient checkpointing, no reports."""
    values: dict[str, Any] = dict(bf16=torch.cuda.is_available(), activation_checkpointing=False, report_to="none")
    values.update(overrides)
    return RewardConfig(**values)


def trl_config(args: AVAConfig) -> RewardConfig | DPOConfig | SFTConfig:
    """The TRL config of ``args.objective`` carrying every TrainingArguments value of ``args`` (steps, batch size,
    learning rate, schedule, seed, precision, ...), plus max_length and, for DPO, ``dpo_beta``."""
    if args.objective not in TRL_OBJECTIVES:
        raise ConfigError(f"objective {args.objective} is not a TRL baseline {TRL_OBJECTIVES}")
    shared = {f.name: getattr(args, f.name) for f in fields(TrainingArguments) if f.init}
    shared.update(max_length=args.max_length, gradient_checkpointing=args.gradient_checkpointing,
                  model_init_kwargs=args.model_init_kwargs, trust_remote_code=args.trust_remote_code)
    if args.objective == "bt":
        return RewardConfig(**shared)
    if args.objective == "dpo":
        return DPOConfig(**shared, beta=args.dpo_beta)
    return SFTConfig(**shared)


def as_bt_features(tokenized: Dataset) -> Dataset:
    """Rows tokenised by avalign (prompt_ids, chosen_ids, rejected_ids; responses end with EOS) as the processed
    columns RewardTrainer accepts, so BT sees exactly the tokens, truncation included, that AVA sees."""
    return tokenized.map(
        lambda row: {"chosen_ids": row["prompt_ids"] + row["chosen_ids"],
                     "rejected_ids": row["prompt_ids"] + row["rejected_ids"]},
        remove_columns=["prompt_ids"],
    )


def bradley_terry_trainer(
    backbone: str, tokenizer: PreTrainedTokenizerBase, train: Dataset, eval_dataset: Dataset | None, args: RewardConfig,
    peft_config: "PeftConfig | None" = None, quantization_config: "BitsAndBytesConfig | None" = None,
) -> RewardTrainer:
    """TRL's RewardTrainer on ``backbone`` (a hub id or a directory saved by save_pretrained), which it loads with a
    fresh scalar head initialised under ``args.seed``. The pad token must differ from EOS: the classifier scores the
    last non-pad token, and TRL appends EOS. With ``peft_config`` the adapter's task is sequence classification, so
    that PEFT trains and saves the fresh head too."""
    if peft_config is not None and peft_config.task_type != "SEQ_CLS":
        peft_config = dataclasses.replace(peft_config, task_type="SEQ_CLS")
    return RewardTrainer(model=backbone, args=args, train_dataset=train, eval_dataset=eval_dataset,
                         processing_class=tokenizer, peft_config=peft_config, quantization_config=quantization_config)


def trl_trainer(
    backbone: str, tokenizer: PreTrainedTokenizerBase, train: Dataset, eval_dataset: Dataset | None, args: AVAConfig,
    peft_config: "PeftConfig | None" = None, quantization_config: "BitsAndBytesConfig | None" = None,
):
    """The TRL trainer of ``args.objective`` on ``backbone`` (a hub id or a saved backbone directory), with
    ``peft_config`` and ``quantization_config`` as TRL's own scripts pass them.

    bt: preference rows, tokenised and truncated by avalign exactly as for AVA (``as_bt_features``). dpo:
    preference rows, TRL's own tokenisation and truncation. sft: demonstrations (prompt/completion), or the chosen
    responses of preference rows, with TRL's completion-only loss."""
    check_quantization(quantization_config)
    config = trl_config(args)
    ensure_pad_token(tokenizer)
    if args.chat_template_path is not None:  # on the tokenizer, for every baseline (DPOConfig has no such field)
        tokenizer.chat_template = load_chat_template(args.chat_template_path)
    columns = response_columns(train.column_names)
    if args.objective in ("bt", "dpo") and columns != ("chosen", "rejected"):
        raise DataError(f"objective {args.objective} needs preference rows (prompt/chosen/rejected); the train set "
                        f"has {train.column_names}", path="train_dataset", field="chosen/rejected")
    if args.objective == "bt":
        def features(rows: Dataset | None, split: str) -> Dataset | None:
            if rows is None:
                return None
            tokenized, report = tokenize_dataset(rows, tokenizer, max_length=args.max_length, too_long=args.too_long,
                                                 source=split)
            print(f"[avalign] {split}: {report.summary()}")
            return as_bt_features(tokenized)
        return bradley_terry_trainer(backbone, tokenizer, features(train, "train"), features(eval_dataset, "eval"),
                                     config, peft_config, quantization_config)
    model = dict(model=backbone, peft_config=peft_config, quantization_config=quantization_config)
    if args.objective == "dpo":
        return DPOTrainer(**model, args=config, train_dataset=train, eval_dataset=eval_dataset,
                          processing_class=tokenizer)
    as_sft = lambda rows: rows if rows is None or "completion" in rows.column_names else (
        rows.select_columns(["prompt", "chosen"]).rename_column("chosen", "completion"))
    return SFTTrainer(**model, args=config, train_dataset=as_sft(train), eval_dataset=as_sft(eval_dataset),
                      processing_class=tokenizer)
