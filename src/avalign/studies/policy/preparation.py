"""Preparation, cached on disk: one per (dataset, seed) unit (split, tokenizer, backbone, SFT policy, AfD pairs,
evaluation prompts), and one held-out judge per real dataset."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..reward_modeling import _load_split, prepare_backbone, sample_afd_pairs, training_args, unit_relative
from .config import PolicyDatasetSpec, PolicyStudyConfig


def _clip_prompts(prompts: list[str], tokenizer, budget: int) -> tuple[list[str], int]:
    """Prompts longer than ``budget`` tokens keep their last ``budget`` tokens (as text), so every system, TRL's
    trainers included, sees the same prompt and the response fits after it. Returns (prompts, how many were cut)."""
    from ...data.tokenize import prompt_ids

    clipped = []
    for prompt in prompts:
        ids = prompt_ids(tokenizer, prompt)
        clipped.append(prompt if len(ids) <= budget else tokenizer.decode(ids[-budget:], skip_special_tokens=True))
    return clipped, sum(a != b for a, b in zip(prompts, clipped))


def _split(spec: PolicyDatasetSpec):
    """(train pairs, eval pairs, synthetic task or None, data summary): one split for every seed and the judge."""
    train, evaluation, task, summary = _load_split(spec, 0)
    columns = ["prompt", "chosen", "rejected"]
    return train.select_columns(columns), evaluation.select_columns(columns), task, summary


def prepare_unit(config: PolicyStudyConfig, spec: PolicyDatasetSpec, seed: int, directory: str) -> dict:
    """Data, tokenizer, pretrained LM, SFT policy, AfD pairs and evaluation prompts of one (dataset, seed) unit."""
    from ...data.splits import group_key
    from ...trainers.baselines import trl_trainer

    out, began = Path(directory), time.perf_counter()
    train, evaluation, task, summary = _split(spec)
    report: dict[str, Any] = {"train_pairs": len(train), "eval_pairs": len(evaluation), "data": summary}
    tokenizer, base_path = prepare_backbone(config.backbone, task, train, out, config.training.max_length, seed, report)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    seen = {group_key(p) for p in train["prompt"]}
    prompts, report["train_prompts_clipped"] = _clip_prompts(train["prompt"], tokenizer, config.prompt_budget)
    train = train.remove_columns("prompt").add_column("prompt", prompts)
    unseen = [p for p in dict.fromkeys(evaluation["prompt"]) if group_key(p) not in seen]
    prompts, report["eval_prompts_clipped"] = _clip_prompts(unseen[: spec.eval_prompts], tokenizer,
                                                            config.prompt_budget)
    report["eval_prompts"] = len(prompts)
    (out / "prompts.json").write_text(json.dumps(prompts))

    settings = config.sft_settings
    args = training_args(settings, "sft", seed, str(out / "sft-work"))
    trainer = trl_trainer(base_path, tokenizer, train, None, args)
    trainer.train()
    trainer.save_model(str(out / "sft"))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    report["sft"] = {"first_loss": losses[0], "last_loss": losses[-1], "steps": settings.max_steps}
    afd = sample_afd_pairs(str(out / "sft"), tokenizer, train, asdict(config.generation), config.training.max_length,
                           seed, report)
    train.save_to_disk(str(out / "train_pairs"))
    afd.save_to_disk(str(out / "train_afd"))
    evaluation.save_to_disk(str(out / "eval_pairs"))
    report.update(base_path=unit_relative(base_path, out), sft_path="sft", seconds=round(time.perf_counter() - began, 1))
    (out / "prep.json").write_text(json.dumps(report, indent=1))
    return report


def prepare_judge(spec: PolicyDatasetSpec, directory: str) -> dict:
    """Train the dataset's held-out Bradley-Terry judge and measure its pairwise accuracy on the evaluation pairs."""
    from datasets import concatenate_datasets

    from ...data import load_dataset
    from ...data.splits import group_key
    from ...reward_model import BTRewardModel
    from ...trainers.baselines import trl_trainer

    out, judge, began = Path(directory), spec.judge, time.perf_counter()
    train, evaluation, _, _ = _split(spec)
    held_out = {group_key(p) for p in evaluation["prompt"]}
    parts, report = [train], {"sources": {spec.path: len(train)}, "dropped_eval_prompts": 0}
    for path in judge.paths:
        rows = load_dataset(path, family=spec.family, eval_fraction=0.0, max_rows=spec.max_rows).train
        kept = rows.filter(lambda row: group_key(row["prompt"]) not in held_out)
        report["dropped_eval_prompts"] += len(rows) - len(kept)
        report["sources"][path] = len(kept)
        parts.append(kept.select_columns(["prompt", "chosen", "rejected"]))
    rows = concatenate_datasets(parts)
    settings = judge.training
    tokenizer, backbone_path = prepare_backbone(judge.backbone, None, rows, out, settings.max_length, judge.seed,
                                                report)
    args = training_args(settings, "bt", judge.seed, str(out / "work"))
    trainer = trl_trainer(backbone_path, tokenizer, rows, None, args)
    trainer.train()
    trainer.save_model(str(out / "judge"))
    scorer = BTRewardModel(trainer.model, tokenizer, max_length=settings.max_length,
                           batch_size=settings.eval_batch_size)
    metrics = scorer.evaluate_pairs(evaluation)
    report.update(train_pairs=len(rows), eval_pairs=metrics["n"], accuracy=metrics["accuracy_last"],
                  accuracy_ci95=list(metrics["accuracy_last_ci95"]), seconds=round(time.perf_counter() - began, 1))
    (out / "judge.json").write_text(json.dumps(report, indent=1))
    return report
