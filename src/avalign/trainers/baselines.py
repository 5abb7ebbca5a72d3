"""Baselines through TRL, not reimplemented: Bradley-Terry reward models (RewardTrainer), DPO (DPOTrainer) and SFT
(SFTTrainer), configured from the same AVAConfig as AVA so that a comparison differs only in the objective."""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import Any

import torch
from datasets import Dataset
from transformers import IntervalStrategy, PreTrainedTokenizerBase, TrainingArguments
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

from ..backbones import check_fits
from ..data.tokenize import TokenizeReport, ensure_pad_token, load_chat_template, response_columns, tokenize_dataset
from ..errors import ConfigError, DataError
from ..modeling import check_quantization
from .ava_config import AVAConfig, TRL_OBJECTIVES, WithoutHubToken
from .callbacks import DivergenceGuard


class _RewardConfig(WithoutHubToken, RewardConfig):
    pass


class _DPOConfig(WithoutHubToken, DPOConfig):
    pass


class _SFTConfig(WithoutHubToken, SFTConfig):
    pass


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
        return _RewardConfig(**shared)
    if args.objective == "dpo":
        return _DPOConfig(**shared, beta=args.dpo_beta)
    return _SFTConfig(**shared)


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
                         processing_class=tokenizer, peft_config=peft_config, quantization_config=quantization_config,
                         callbacks=[DivergenceGuard()])


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
    if eval_dataset is None:  # nothing to evaluate: an eval_strategy set for the other objectives must not stop SFT
        config.eval_strategy = IntervalStrategy.NO
    ensure_pad_token(tokenizer)
    if args.chat_template_path is not None:  # on the tokenizer, for every baseline (DPOConfig has no such field)
        tokenizer.chat_template = load_chat_template(args.chat_template_path)
    columns = response_columns(train.column_names)
    if args.objective in ("bt", "dpo") and columns != ("chosen", "rejected"):
        raise DataError(f"objective {args.objective} needs preference rows (prompt/chosen/rejected); the train set "
                        f"has {train.column_names}", path="train_dataset", field="chosen/rejected")
    reports: dict[str, TokenizeReport] = {}
    if args.objective == "bt":
        def features(rows: Dataset | None, split: str) -> Dataset | None:
            if rows is None:
                return None
            tokenized, reports[split] = tokenize_dataset(rows, tokenizer, max_length=args.max_length,
                                                         too_long=args.too_long, source=split)
            return as_bt_features(tokenized)
        trainer = bradley_terry_trainer(backbone, tokenizer, features(train, "train"), features(eval_dataset, "eval"),
                                        config, peft_config, quantization_config)
    else:
        model = dict(model=backbone, peft_config=peft_config, quantization_config=quantization_config,
                     callbacks=[DivergenceGuard()])
        if args.objective == "dpo":
            trainer = DPOTrainer(**model, args=config, train_dataset=train, eval_dataset=eval_dataset,
                                 processing_class=tokenizer)
        else:
            as_sft = lambda rows: rows if rows is None or "completion" in rows.column_names else (
                rows.select_columns(["prompt", "chosen"]).rename_column("chosen", "completion"))
            trainer = SFTTrainer(**model, args=config, train_dataset=as_sft(train),
                                 eval_dataset=as_sft(eval_dataset), processing_class=tokenizer)
        for split, rows in (("train", train), ("eval", eval_dataset)):
            if rows is not None:
                reports[split] = trl_report(len(rows), getattr(trainer, f"{split}_dataset"), args.max_length)
    check_fits(trainer.model, tokenizer, args.max_length)
    for split, report in reports.items():
        print(f"[avalign] {split}: {report.summary()}")
    reports["train"].require_rows("train_dataset")
    trainer.tokenize_reports = reports  # as AVATrainer's: read by the CLI's summary
    return trainer


def trl_report(rows_in: int, prepared: Dataset, max_length: int | None) -> TokenizeReport:
    """What TRL's own preparation dropped and truncated, in avalign's report. DPO drops rows whose prompt fills
    max_length and cuts the end of the rest when collating; SFT cuts while preparing, so a row that reaches
    max_length counts as truncated (it may also have fitted exactly)."""
    report = TokenizeReport(rows_in=rows_in, rows_out=len(prepared), dropped_too_long=rows_in - len(prepared))
    if max_length is not None and "chosen_ids" in prepared.column_names:
        report.response_truncated = sum(
            len(prompt) + max(len(chosen), len(rejected)) > max_length
            for prompt, chosen, rejected in zip(prepared["prompt_ids"], prepared["chosen_ids"], prepared["rejected_ids"])
        )
    elif max_length is not None:
        report.response_truncated = sum(len(ids) >= max_length for ids in prepared["input_ids"])
    return report
