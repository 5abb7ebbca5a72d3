"""The policy study (the paper's Tables 2-5): AVA against its baselines as policies, in win / tie / lose rates.

One preparation per (dataset, seed) unit, cached on disk: the data split (fixed, shared by every seed and the judge),
the tokenizer, a from-scratch backbone LM-pretrained on the training texts, SFT of it on the chosen responses (the
initial policy), AfD pairs (chosen against a sample of the SFT policy) and the evaluation prompts. Then two rounds of
cells, each kept in results.json as it finishes (a rerun resumes):

1. ``sft``: one sample of the SFT policy per evaluation prompt, drawn as every other policy's is, and N candidates,
   all judged; any first N' candidates hold a best-of-N' sample (the first alone: plain sampling). From the SFT
   policy: the reward models AVA-p, BT and PrefTrans, and the policies DPO, AfD + DPO and AfD + AVA-p; from the
   pretrained LM (the start of SFT, with SFT's budget): AVA-d. The AVA-p reward model is also the AVA-p policy: with
   the pretrained Q its backbone is a language model.
2. With those reward models: best-of-N over the ``sft`` candidates, and PPO from the SFT policy.

A seed gives every system the same initial policy, data and sampling seed, so every comparison is paired by prompt.
Judges: the synthetic task's gold return, or on real data a Bradley-Terry judge trained once per dataset on more data
than the systems saw (their training split plus ``judge.paths``, minus any row whose prompt is an evaluation prompt).
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from . import pyplot
from .reward_modeling import (
    BackboneSpec,
    DatasetSpec,
    TrainingSettings,
    _load_split,
    load_yaml,
    make_pool,
    prepare_backbone,
    run_jobs,
    sample_afd_pairs,
    set_worker_threads,
    training_args,
    unit_path,
    unit_relative,
)

# system -> (trainer objective, training rows, start): trained in round 1, from the SFT policy or the pretrained LM
TRAINED = {
    "ava-p": ("ava-p", "pairs", "sft"),
    "bt": ("bt", "pairs", "sft"),
    "preftrans": ("preftrans", "pairs", "sft"),
    "dpo": ("dpo", "pairs", "sft"),
    "ava-d": ("ava-d", "pairs", "base"),  # learns from the chosen responses, as SFT does
    "afd-dpo": ("dpo", "afd", "sft"),
    "afd-ava-p": ("ava-p", "afd", "sft"),
}
REWARD_MODELS = ("ava-p", "bt", "preftrans")
POLICIES = ("ava-p", "dpo", "ava-d", "afd-dpo", "afd-ava-p")  # trained models that are judged as policies
BON = {"bon-ava-p": "ava-p", "bon-bt": "bt", "bon-preftrans": "preftrans"}
# PPO system -> (reward model, token rewards, kappa); the last three serve the over-optimisation curves only
PPO = {
    "ppo-ava-p": ("ava-p", "dense", 0.0),
    "ppo-bt": ("bt", "last", 0.0),
    "ppo-preftrans": ("preftrans", "sum", 0.0),
    "ppo-ava-p-last": ("ava-p", "last", 0.0),
    "ppo-ava-p-kappa1": ("ava-p", "dense", 1.0),
}
# table -> (title, the AVA system, the baselines it meets)
TABLES = {
    2: ("Best-of-N", "bon-ava-p", ("sample", "bon-bt", "bon-preftrans")),
    3: ("PPO", "ppo-ava-p", ("sft", "ppo-bt", "ppo-preftrans")),
    4: ("Direct optimisation", "ava-p", ("dpo", "sft")),
    5: ("Learning from demonstrations", "ava-d", ("sft", "afd-dpo", "afd-ava-p")),
}
OVEROPTIMISATION = ("ppo-ava-p", "ppo-ava-p-last", "ppo-ava-p-kappa1", "ppo-bt", *BON)
LABELS = {
    "sft": "SFT", "sample": "sampling (SFT)", "ava-p": "AVA-p", "bt": "BT", "preftrans": "PrefTrans", "dpo": "DPO",
    "ava-d": "AVA-d", "afd-dpo": "AfD + DPO", "afd-ava-p": "AfD + AVA-p", "bon-ava-p": "BoN (AVA-p)",
    "bon-bt": "BoN (BT)", "bon-preftrans": "BoN (PrefTrans)", "ppo-ava-p": "PPO (AVA-p, dense)",
    "ppo-bt": "PPO (BT)", "ppo-preftrans": "PPO (PrefTrans, sum)", "ppo-ava-p-last": "PPO (AVA-p, last)",
    "ppo-ava-p-kappa1": "PPO (AVA-p, dense, kappa 1)",
}
SET_BY_STUDY = ("seed", "output_dir", "max_new_tokens", "temperature", "max_prompt_length")  # PPOConfig fields


@dataclass
class GenerationSettings:
    """Sampling of every policy: evaluation samples, best-of-N candidates, AfD samples (those with top-k 50 in
    batches of 32: ``sample_afd_pairs``) and PPO rollouts."""

    max_new_tokens: int = 16
    temperature: float = 1.0
    batch_size: int = 32


@dataclass
class JudgeSpec:
    """The held-out judge of a real dataset: a Bradley-Terry reward model on its own from-scratch backbone."""

    paths: list[str]  # preference files whose rows all train the judge, with the dataset's training split
    backbone: BackboneSpec
    training: TrainingSettings
    seed: int = 0


@dataclass
class PolicyDatasetSpec(DatasetSpec):
    eval_prompts: int = 200  # distinct evaluation prompts the systems are compared on
    tables: list[int] | None = None  # default: the study's tables
    overoptimisation: bool | None = None  # the extra PPO runs of the plot; default: on the synthetic task only
    judge: JudgeSpec | None = None  # required on real data; the synthetic task is judged by its gold return


@dataclass
class PolicyStudyConfig:
    name: str
    output_dir: str
    seeds: list[int]
    datasets: list[PolicyDatasetSpec]
    backbone: BackboneSpec
    training: TrainingSettings = field(default_factory=TrainingSettings)  # reward models, DPO, AVA-p
    sft: dict = field(default_factory=dict)  # TrainingSettings fields that differ for SFT (and AVA-d, its rival)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    bon_n: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    ppo: dict = field(default_factory=dict)  # PPOConfig fields, except those in SET_BY_STUDY
    max_prompt_tokens: int | None = None  # prompts keep their last tokens; default max_length // 2
    tables: list[int] = field(default_factory=lambda: list(TABLES))
    system_options: dict = field(default_factory=dict)  # {system: {AVAConfig option: value}}, e.g. dpo_beta
    workers: int = 1  # parallel processes; 0 runs everything in this process

    @classmethod
    def from_yaml(cls, path: str, **overrides: Any) -> "PolicyStudyConfig":
        raw = load_yaml(path, overrides)
        try:
            datasets = [_dataset_spec(d) for d in raw.pop("datasets")]
            config = cls(**{k: v for k, v in raw.items() if k not in ("backbone", "training", "generation")},
                         datasets=datasets, backbone=BackboneSpec(**raw["backbone"]),
                         training=TrainingSettings(**raw.get("training", {})),
                         generation=GenerationSettings(**raw.get("generation", {})))
        except (TypeError, KeyError) as error:
            raise ConfigError(f"{path}: {error}") from None
        config.validate(path)
        return config

    def validate(self, path: str) -> None:
        from ..rl import PPOConfig

        fixed = sorted(set(self.ppo) & set(SET_BY_STUDY))
        if fixed:
            raise ConfigError(f"{path}: ppo.{fixed[0]} is set by the study (seeds, generation, max_prompt_tokens)")
        try:
            PPOConfig(**self.ppo)
        except TypeError as error:
            raise ConfigError(f"{path}: ppo: {error}") from None
        for name in self.system_options:
            if name not in TRAINED:
                raise ConfigError(f"{path}: system_options.{name}: not a trained system {list(TRAINED)}")
        for name in self.sft:
            if name not in asdict(self.training):
                raise ConfigError(f"{path}: sft.{name}: not a training field {list(asdict(self.training))}")
        if self.prompt_budget + self.generation.max_new_tokens > self.training.max_length:
            raise ConfigError(f"{path}: max_prompt_tokens ({self.prompt_budget}) + generation.max_new_tokens "
                              f"({self.generation.max_new_tokens}) exceed training.max_length "
                              f"({self.training.max_length})")
        if min(self.bon_n) < 1:
            raise ConfigError(f"{path}: bon_n must be positive, got {self.bon_n}")
        for spec in self.datasets:
            unknown = set(self.tables_for(spec)) - set(TABLES)
            if unknown:
                raise ConfigError(f"{path}: dataset '{spec.name}': no table {sorted(unknown)}; "
                                  f"tables are {list(TABLES)}")
            if spec.path is not None and spec.judge is None:
                raise ConfigError(f"{path}: dataset '{spec.name}' needs a judge (real data has no gold reward)")
            if spec.path is not None and spec.overoptimisation:
                raise ConfigError(f"{path}: dataset '{spec.name}': over-optimisation curves need the gold reward "
                                  "of the synthetic task")

    @property
    def prompt_budget(self) -> int:
        return self.max_prompt_tokens or self.training.max_length // 2

    @property
    def sft_settings(self) -> TrainingSettings:
        return replace(self.training, **self.sft)

    def tables_for(self, spec: PolicyDatasetSpec) -> list[int]:
        return spec.tables or self.tables

    def overoptimisation_for(self, spec: PolicyDatasetSpec) -> bool:
        return spec.path is None if spec.overoptimisation is None else spec.overoptimisation

    def systems_for(self, spec: PolicyDatasetSpec) -> list[str]:
        """Every cell a dataset needs: the tables' systems, the over-optimisation runs, and what they build on."""
        wanted = {s for t in self.tables_for(spec) for s in (TABLES[t][1], *TABLES[t][2])}
        if self.overoptimisation_for(spec):
            wanted.update(OVEROPTIMISATION)
        wanted.update([BON[s] for s in wanted if s in BON] + [PPO[s][0] for s in wanted if s in PPO] + ["sft"])
        return [s for s in ("sft", *TRAINED, *BON, *PPO) if s in wanted]


def _dataset_spec(raw: dict) -> PolicyDatasetSpec:
    raw = dict(raw)
    if raw.get("folds") or raw.get("objectives"):
        raise ConfigError(f"dataset '{raw.get('name')}': folds and objectives are reward-modeling options; the policy "
                          "study uses one split and chooses systems by tables")
    judge = raw.pop("judge", None)
    if judge is not None:
        judge = JudgeSpec(**{**judge, "backbone": BackboneSpec(**judge["backbone"]),
                             "training": TrainingSettings(**judge.get("training", {}))})
    return PolicyDatasetSpec(**raw, judge=judge)


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _unit_key(config: PolicyStudyConfig, spec: PolicyDatasetSpec, seed: int) -> str:
    payload = (asdict(spec), asdict(config.backbone), asdict(config.sft_settings), asdict(config.generation),
               config.prompt_budget, seed)
    return f"{spec.name}-seed{seed}-{_digest(*payload)}"


def _judge_key(spec: PolicyDatasetSpec) -> str:
    return f"judge-{spec.name}-{_digest(asdict(spec.judge), spec.path, spec.family, spec.eval_fraction, spec.max_rows)}"


def _cell_key(spec: PolicyDatasetSpec, system: str, seed: int) -> str:
    return f"{spec.name}|{system}|{seed}"


# -- preparation ---------------------------------------------------------------------------------------------------


def _clip_prompts(prompts: list[str], tokenizer, budget: int) -> tuple[list[str], int]:
    """Prompts longer than ``budget`` tokens keep their last ``budget`` tokens (as text), so every system, TRL's
    trainers included, sees the same prompt and the response fits after it. Returns (prompts, how many were cut)."""
    from ..data.tokenize import prompt_ids

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
    from ..data.splits import group_key
    from ..trainers.baselines import trl_trainer

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

    from ..data import load_dataset
    from ..data.splits import group_key
    from ..reward_model import BTRewardModel
    from ..trainers.baselines import trl_trainer

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


# -- cells ---------------------------------------------------------------------------------------------------------


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _task(spec: PolicyDatasetSpec):
    """The synthetic task instance of a dataset without a path (its gold reward is the judge)."""
    from ..data.synthetic import SyntheticTask, SyntheticTaskConfig

    return SyntheticTask(SyntheticTaskConfig(seed=spec.synthetic_task_seed))


def _judge_scorer(config: PolicyStudyConfig, spec: PolicyDatasetSpec):
    """The judge as a scorer: gold returns on the synthetic task, the held-out judge's score otherwise."""
    from ..evaluation.judges import gold_scorer, reward_model_scorer

    if spec.judge is None:
        return gold_scorer(_task(spec))
    from ..reward_model import load_reward_model

    path = Path(config.output_dir) / "cache" / _judge_key(spec) / "judge"
    judge = load_reward_model(str(path), max_length=spec.judge.training.max_length,
                              batch_size=spec.judge.training.eval_batch_size, device=_device())
    return reward_model_scorer(judge, "last")


def _stored(scores) -> list:
    """Judge scores for results.json: -inf (a reward model's score of an empty completion) as null."""
    return [None if score == -np.inf else float(score) for score in scores]


def _loaded(scores) -> np.ndarray:
    values = np.array(scores, dtype=float)  # null -> nan
    return np.where(np.isnan(values), -np.inf, values)


def judged_samples(config: PolicyStudyConfig, spec: PolicyDatasetSpec, policy, tokenizer, seed: int, unit: Path,
                   output: Path, n: int = 1) -> list:
    """``n`` samples of ``policy`` per evaluation prompt (written to ``output``), and their judge scores."""
    from ..generation import generate_completions

    prompts = json.loads((unit / "prompts.json").read_text())
    settings = config.generation
    rows = generate_completions(policy, tokenizer, prompts, num_return_sequences=n, seed=seed,
                                max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                batch_size=settings.batch_size)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(json.dumps(row) + "\n" for row in rows))
    scores = np.asarray(_judge_scorer(config, spec)([r["prompt"] for r in rows], [r["completion"] for r in rows]))
    if np.isnan(scores).any():
        raise DataError(f"the judge cannot score {int(np.isnan(scores).sum())} completion(s), e.g. "
                        f"{rows[int(np.argmax(np.isnan(scores)))]['completion']!r:.80}", path=str(output))
    return _stored(scores)


def _sample_sft(config, spec, system: str, seed, unit: Path, work_dir: Path, prep: dict) -> dict:
    from ..generation import load_policy

    n = max(config.bon_n)
    policy, tokenizer = load_policy(unit_path(unit, prep["sft_path"]))
    candidates = judged_samples(config, spec, policy, tokenizer, seed, unit, unit / "candidates.jsonl", n)
    return {"judge_scores": judged_samples(config, spec, policy, tokenizer, seed, unit, work_dir / "samples.jsonl"),
            "candidate_scores": [candidates[i:i + n] for i in range(0, len(candidates), n)]}


def _train(config, spec, system: str, seed, unit: Path, work_dir: Path, prep: dict) -> dict:
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from ..generation import load_policy
    from ..reward_model import load_reward_model
    from ..trainers import AVATrainer
    from ..trainers.ava_config import AVA_OBJECTIVES
    from ..trainers.baselines import trl_trainer

    objective, data, start = TRAINED[system]
    tokenizer = AutoTokenizer.from_pretrained(str(unit / "tokenizer"))
    train = load_from_disk(str(unit / f"train_{data}"))
    settings = config.training if start == "sft" else config.sft_settings
    args = training_args(settings, objective, seed, str(work_dir), **config.system_options.get(system, {}))
    start_path = unit_path(unit, prep["sft_path" if start == "sft" else "base_path"])
    began = time.perf_counter()
    if objective in AVA_OBJECTIVES:
        trainer = AVATrainer(start_path, args=args, train_dataset=train, processing_class=tokenizer)
    else:
        trainer = trl_trainer(start_path, tokenizer, train, None, args)
    trainer.train()
    model_dir = unit / "models" / system
    trainer.save_model(str(model_dir))
    cell: dict[str, Any] = {"train_seconds": round(time.perf_counter() - began, 2),
                            "curve": [[e["step"], e["loss"]] for e in trainer.state.log_history if "loss" in e]}
    if system in REWARD_MODELS:
        scorer = load_reward_model(str(model_dir), max_length=settings.max_length,
                                   batch_size=settings.eval_batch_size, device=_device())
        scoring = scorer.scorings[0]  # the score the model was trained to rank by
        metrics = scorer.evaluate_pairs(load_from_disk(str(unit / "eval_pairs")))
        cell.update(accuracy=metrics[f"accuracy_{scoring}"], accuracy_ci95=list(metrics[f"accuracy_{scoring}_ci95"]))
    if system in POLICIES:
        policy, tokenizer = load_policy(str(model_dir))
        cell["judge_scores"] = judged_samples(config, spec, policy, tokenizer, seed, unit, work_dir / "samples.jsonl")
    return cell


def best_index(proxy: np.ndarray) -> np.ndarray:
    """Per row, the first candidate with the highest proxy score (NaN ranks last), as ``generation.best_of_n``."""
    return np.argmax(np.where(np.isnan(proxy), -np.inf, proxy), axis=-1)


def _best_of_n(config, spec, system: str, seed, unit: Path, work_dir: Path, prep: dict) -> dict:
    """Score the ``sft`` cell's candidates with a reward model; for each N, which of the first N it picks."""
    from ..evaluation.judges import reward_model_scorer
    from ..reward_model import load_reward_model

    rows = [json.loads(line) for line in (unit / "candidates.jsonl").read_text().splitlines()]
    reward_model = load_reward_model(str(unit / "models" / BON[system]), max_length=config.training.max_length,
                                     batch_size=config.training.eval_batch_size, device=_device())
    scorer = reward_model_scorer(reward_model, reward_model.scorings[0])
    proxy = np.array(scorer([r["prompt"] for r in rows], [r["completion"] for r in rows]))
    proxy = proxy.reshape(-1, max(config.bon_n))
    return {"proxy_scores": [_stored(row) for row in proxy],
            "picks": {str(n): best_index(proxy[:, :n]).tolist() for n in config.bon_n}}


def _ppo(config, spec, system: str, seed, unit: Path, work_dir: Path, prep: dict) -> dict:
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..rl import GoldRewards, PPOConfig, PPOTrainer, RewardModelRewards

    reward_model, reward, kappa = PPO[system]
    tokenizer = AutoTokenizer.from_pretrained(str(unit / "tokenizer"))
    policy = AutoModelForCausalLM.from_pretrained(unit_path(unit, prep["sft_path"]))
    prompts = list(dict.fromkeys(load_from_disk(str(unit / "train_pairs"))["prompt"]))
    rewards = RewardModelRewards(str(unit / "models" / reward_model), tokenizer, reward=reward, kappa=kappa,
                                 device=_device())
    gold = GoldRewards(_task(spec), tokenizer) if spec.path is None else None
    generation = config.generation
    ppo_config = PPOConfig(**config.ppo, seed=seed, output_dir=str(work_dir), max_new_tokens=generation.max_new_tokens,
                           temperature=generation.temperature, max_prompt_length=config.prompt_budget)
    began = time.perf_counter()
    trainer = PPOTrainer(policy, tokenizer, prompts, rewards, ppo_config, gold=gold)
    history = trainer.train()
    cell: dict[str, Any] = {"train_seconds": round(time.perf_counter() - began, 2),
                            "curve": [[h["step"], h["objective/scores"], h.get("gold/reward"), h["objective/kl"]]
                                      for h in history]}
    cell["judge_scores"] = judged_samples(config, spec, trainer.model.policy, tokenizer, seed, unit,
                                          work_dir / "samples.jsonl")
    return cell


def run_cell(config: PolicyStudyConfig, spec: PolicyDatasetSpec, system: str, seed: int, directory: str,
             work_dir: str) -> dict:
    """One system of a prepared unit: train or sample it, and judge its samples of the evaluation prompts."""
    from transformers import set_seed

    set_worker_threads(config.workers)
    set_seed(seed)
    unit = Path(directory)
    prep = json.loads((unit / "prep.json").read_text())
    run = _sample_sft if system == "sft" else _best_of_n if system in BON else _ppo if system in PPO else _train
    began = time.perf_counter()
    cell = run(config, spec, system, seed, unit, Path(work_dir), prep)
    return {**cell, "seconds": round(time.perf_counter() - began, 1)}


# -- the study -----------------------------------------------------------------------------------------------------


def _missing(spec: PolicyDatasetSpec) -> str | None:
    for path in ([spec.path] if spec.path else []) + (spec.judge.paths if spec.judge else []):
        if not Path(path).exists():
            return f"{path} not found"
    return None


def run_study(config: PolicyStudyConfig, progress: bool = True, command: str | None = None) -> dict:
    """Prepare units and judges, run every cell not already in results.json (round 1, then round 2), write
    results.json, results.md and the plots."""
    out = Path(config.output_dir)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"cells": {}, "prep": {}}
    results["skipped_datasets"] = {spec.name: why for spec in config.datasets if (why := _missing(spec))}
    specs = [spec for spec in config.datasets if spec.name not in results["skipped_datasets"]]

    def save():
        results_path.write_text(json.dumps(results, indent=1))

    def pending(spec, seed, systems):
        done = results["cells"]
        return [s for s in systems if s in config.systems_for(spec) and _cell_key(spec, s, seed) not in done]

    def cells(systems) -> dict:
        jobs = {}
        for spec in specs:
            for seed in config.seeds:
                unit = out / "cache" / _unit_key(config, spec, seed)
                for system in pending(spec, seed, systems):
                    work_dir = out / "work" / f"{spec.name}-{system}-{seed}"
                    jobs[_cell_key(spec, system, seed)] = (run_cell, str(work_dir / "log.txt"), config, spec, system,
                                                           seed, str(unit), str(work_dir))
        return jobs

    with make_pool(config.workers) as pool:
        jobs = {}
        for spec in specs:
            directory = out / "cache" / _judge_key(spec) if spec.judge else None
            if directory is not None and not (directory / "judge.json").exists():
                jobs[directory.name] = (prepare_judge, str(directory / "log.txt"), spec, str(directory))
            for seed in config.seeds:
                directory = out / "cache" / _unit_key(config, spec, seed)
                if not (directory / "prep.json").exists() and pending(spec, seed, config.systems_for(spec)):
                    jobs[directory.name] = (prepare_unit, str(directory / "log.txt"), config, spec, seed,
                                            str(directory))
        run_jobs(pool, jobs, results["prep"], save, "preparing", progress)
        run_jobs(pool, cells(["sft", *TRAINED]), results["cells"], save, "cells (round 1)", progress)
        run_jobs(pool, cells([*BON, *PPO]), results["cells"], save, "cells (round 2)", progress)
    write_report(config, results, out, command)
    return results


# -- summary and report (from results.json alone) -------------------------------------------------------------------


def system_scores(results: dict, dataset: str, system: str, seed: int) -> np.ndarray | None:
    """Judge scores of a system's evaluation samples, one per prompt (None when its cells are missing): ``sample`` is
    the SFT policy's first candidate, a best-of-N system the candidate it picks at the largest N."""
    cells = results["cells"]
    samples = cells.get(f"{dataset}|sft|{seed}")
    if system == "sample" or system in BON:
        if samples is None or (system in BON and f"{dataset}|{system}|{seed}" not in cells):
            return None
        candidates = _loaded(samples["candidate_scores"])
        if system == "sample":
            return candidates[:, 0]
        picks = cells[f"{dataset}|{system}|{seed}"]["picks"]
        return candidates[np.arange(len(candidates)), picks[str(max(map(int, picks)))]]
    cell = cells.get(f"{dataset}|{system}|{seed}")
    return None if cell is None else _loaded(cell["judge_scores"])


def compare(results: dict, dataset: str, a: str, b: str, seeds: list[int]) -> dict | None:
    """Win / tie / lose (%) of a against b, mean over seeds, and (win - lose) with its 95% two-level bootstrap
    interval over seeds and prompts (``paired_difference``); None when no seed has both."""
    from ..evaluation.judges import outcome
    from ..evaluation.pairwise import paired_difference

    outcomes = {}
    for seed in seeds:
        scores_a, scores_b = system_scores(results, dataset, a, seed), system_scores(results, dataset, b, seed)
        if scores_a is not None and scores_b is not None:
            outcomes[seed] = np.array([outcome(x, y) for x, y in zip(scores_a, scores_b)])
    if not outcomes:
        return None
    estimate, low, high = paired_difference(list(outcomes.values()))
    mean = lambda value: 100 * statistics.mean(float((o == value).mean()) for o in outcomes.values())
    return {"seeds": list(outcomes), "prompts": len(next(iter(outcomes.values()))), "win_pct": mean(1),
            "tie_pct": mean(0), "lose_pct": mean(-1), "win_minus_lose_pct": 100 * estimate,
            "win_minus_lose_pct_ci95": [100 * low, 100 * high]}


def summarize(config: PolicyStudyConfig, results: dict) -> dict:
    """Per dataset: the tables, each system's mean judge score, the reward models' held-out accuracy, and the
    over-optimisation curves (PPO: proxy, gold/judge, KL per update; best-of-N: per N), all over seeds."""
    summary = {}
    for spec in config.datasets:
        if spec.name in results.get("skipped_datasets", {}):
            continue
        entry: dict[str, Any] = {"judge": "gold return" if spec.judge is None else "judge reward model", "tables": {},
                                 "overoptimisation": config.overoptimisation_for(spec)}
        for table in config.tables_for(spec):
            _, ava, baselines = TABLES[table]
            entry["tables"][str(table)] = {b: compare(results, spec.name, ava, b, config.seeds) for b in baselines}
        entry["systems"], entry["reward_models"], entry["ppo_curves"], entry["bon_curves"] = {}, {}, {}, {}
        for system in ["sft", "sample", *POLICIES, *BON, *PPO]:
            per_seed = [s for s in (system_scores(results, spec.name, system, seed) for seed in config.seeds)
                        if s is not None]
            if per_seed:  # empty completions (-inf under a reward-model judge) are counted, not averaged
                means = [float(s[np.isfinite(s)].mean()) for s in per_seed if np.isfinite(s).any()]
                entry["systems"][system] = {"mean_score": statistics.mean(means) if means else None,
                                            "empty": int(sum((~np.isfinite(s)).sum() for s in per_seed)),
                                            "seeds": len(per_seed)}
        for system in ("sft", *TRAINED, *BON, *PPO):
            keys = [_cell_key(spec, system, seed) for seed in config.seeds]
            cells = [results["cells"][key] for key in keys if key in results["cells"]]
            if not cells:
                continue
            if "accuracy" in cells[0]:
                entry["reward_models"][system] = {"accuracy": statistics.mean(c["accuracy"] for c in cells),
                                                  "per_seed": [c["accuracy"] for c in cells]}
            if system in OVEROPTIMISATION and system in PPO and entry["overoptimisation"]:  # [step, proxy, gold, KL]
                length = min(len(c["curve"]) for c in cells)
                entry["ppo_curves"][system] = np.mean([c["curve"][:length] for c in cells], axis=0).tolist()
            if system in BON:
                entry["bon_curves"][system] = _bon_curve(results, spec.name, system, config)
        summary[spec.name] = entry
    return summary


def _bon_curve(results: dict, dataset: str, system: str, config: PolicyStudyConfig) -> dict:
    """For each N: the mean proxy score and the mean judge score of the best-of-N pick, mean over seeds."""
    proxy, judged = {n: [] for n in config.bon_n}, {n: [] for n in config.bon_n}
    finite_mean = lambda values: float(values[np.isfinite(values)].mean())
    for seed in config.seeds:
        cell, samples = (results["cells"].get(f"{dataset}|{s}|{seed}") for s in (system, "sft"))
        if cell is None or samples is None:
            continue
        candidates, scores = _loaded(samples["candidate_scores"]), _loaded(cell["proxy_scores"])
        for n in config.bon_n:
            picks, rows = np.array(cell["picks"][str(n)]), np.arange(len(candidates))
            proxy[n].append(finite_mean(scores[rows, picks]))
            judged[n].append(finite_mean(candidates[rows, picks]))
    return {"n": config.bon_n, "proxy": [statistics.mean(proxy[n]) for n in config.bon_n if proxy[n]],
            "judge": [statistics.mean(judged[n]) for n in config.bon_n if judged[n]]}


def _label(system: str) -> str:
    return LABELS.get(system, system)


def _mean_text(entry: dict) -> str:
    if entry["mean_score"] is None:
        return f"all {entry['empty']} empty"
    return f"{entry['mean_score']:.3f}" + (f" ({entry['empty']} empty)" if entry["empty"] else "")


def _win_text(entry: dict) -> str:
    low, high = entry["win_minus_lose_pct_ci95"]
    return (f"{entry['win_pct']:.1f} / {entry['tie_pct']:.1f} / {entry['lose_pct']:.1f} "
            f"({entry['win_minus_lose_pct']:+.1f} [{low:+.1f}, {high:+.1f}])")


def write_report(config: PolicyStudyConfig, results: dict, out: Path, command: str | None = None) -> None:
    from .report import _table

    summary = summarize(config, results)
    results["summary"] = summary
    (out / "results.json").write_text(json.dumps(results, indent=1))
    columns = {name: f"{name} ({entry['judge']})" for name, entry in summary.items()}
    command = command or f"avalign experiment policy --config <{config.name}.yaml>"
    t, g = config.training, config.generation
    lines = [
        f"# Policy study: {config.name}", "", f"Command: `{command}`", "",
        f"Machine: {platform.machine()}, Python {sys.version.split()[0]}. Seeds {config.seeds}: a seed gives every "
        "system the same initial (SFT) policy, data and sampling seed, so each comparison is paired by prompt. "
        f"Training: {t.max_steps} steps of {t.batch_size}, lr {t.learning_rate}, max_length {t.max_length} "
        f"(SFT and AVA-d: {config.sft or 'the same'}); samples of at most {g.max_new_tokens} tokens at temperature "
        f"{g.temperature}; prompts keep their last {config.prompt_budget} tokens; PPO {config.ppo or 'defaults'}.", "",
        "Each cell: win / tie / lose (%) of the AVA system against the baseline under the judge, mean over seeds, and "
        "(win - lose) with its 95% bootstrap interval over seeds and prompts.", "",
    ]
    for table, (title, ava, baselines) in TABLES.items():
        shown = {columns[d]: {f"vs {_label(b)}": e["tables"][str(table)][b] for b in baselines}
                 for d, e in summary.items() if str(table) in e["tables"]}
        if shown:
            lines += [f"## Table {table}: {title}, {_label(ava)} against each baseline", "",
                      *_table(shown, _win_text, [f"vs {_label(b)}" for b in baselines], header=_label(ava)), ""]
    means = {columns[d]: {_label(s): v for s, v in e["systems"].items()} for d, e in summary.items()}
    systems = [_label(s) for s in ["sft", "sample", *POLICIES, *BON, *PPO]]
    lines += ["## Mean judge score per system (the gold reward on the synthetic task; mean over seeds)", "",
              *_table(means, _mean_text,
                      [s for s in systems if any(s in m for m in means.values())], header="system"), "",
              "## Reward models: pairwise accuracy on the evaluation pairs (%, mean over seeds)", "",
              *_table({columns[d]: {_label(s): v for s, v in e["reward_models"].items()} for d, e in summary.items()},
                      lambda v: f"{100 * v['accuracy']:.1f}", [_label(s) for s in REWARD_MODELS],
                      header="reward model"),
              "", "## Judges", ""]
    for spec in config.datasets:
        if spec.name in summary:
            lines.append(_judge_line(spec, results))
    lines += _overoptimisation_lines(summary)
    lines += ["", "## Data and preparation", ""]
    for unit, prep in sorted(results["prep"].items()):
        if "sft" in prep:
            pre, sft = prep.get("pretrain"), prep["sft"]
            lines.append(f"- `{unit}`: {prep['train_pairs']} train / {prep['eval_pairs']} eval pairs; {prep['data']}; "
                         f"{prep['eval_prompts']} evaluation prompts not among the training prompts; prompts clipped: "
                         f"{prep['train_prompts_clipped']} train, {prep['eval_prompts_clipped']} eval"
                         + (f"; LM pretraining loss {pre['first_loss']:.2f} -> {pre['last_loss']:.2f}" if pre else "")
                         + f"; SFT loss {sft['first_loss']:.2f} -> {sft['last_loss']:.2f}; AfD pairs "
                         f"{prep['afd']['pairs']} (dropped {prep['afd']['dropped'] or 'none'})")
    for name, why in results.get("skipped_datasets", {}).items():
        lines.append(f"- dataset `{name}` skipped: {why}")
    lines += ["", "Plots: `win-rates.png` ((win - lose) per comparison with 95% intervals), "
              "`overoptimisation-<dataset>.png` (judge score against proxy score along PPO and over best-of-N)."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _plots(summary, out)


def _judge_line(spec: PolicyDatasetSpec, results: dict) -> str:
    if spec.judge is None:
        return f"- {spec.name}: the synthetic task's gold return (the true reward)."
    judge = results["prep"].get(_judge_key(spec))
    if judge is None:
        return f"- {spec.name}: the judge was not trained."
    low, high = judge["accuracy_ci95"]
    sources = ", ".join(f"{path} ({n})" for path, n in judge["sources"].items())
    return (f"- {spec.name}: a Bradley-Terry judge trained on {judge['train_pairs']} pairs from {sources}; "
            f"rows left out because their prompt is an evaluation prompt: {judge['dropped_eval_prompts']}. Its own "
            f"pairwise accuracy on the {judge['eval_pairs']} evaluation pairs: {100 * judge['accuracy']:.1f}% "
            f"[{100 * low:.1f}, {100 * high:.1f}].")


def _overoptimisation_lines(summary: dict) -> list[str]:
    lines = []
    for dataset, entry in summary.items():
        ppo = entry["ppo_curves"]
        if not ppo:
            continue
        lines += ["", f"## Over-optimisation on {dataset} (judge: {entry['judge']}; mean over seeds)", "",
                  "| PPO reward | proxy, first -> last update | judge, first -> last update | KL, last update |",
                  "|---|---|---|---|"]
        for system, curve in ppo.items():
            (_, p0, g0, _), (_, p1, g1, kl) = curve[0], curve[-1]
            lines.append(f"| {_label(system)} | {p0:.2f} -> {p1:.2f} | {g0:.2f} -> {g1:.2f} | {kl:.2f} |")
        lines += ["", "| best-of-N | " + " | ".join(f"N = {n}" for n in next(iter(entry["bon_curves"].values()))["n"])
                  + " |", "|---" * (1 + len(next(iter(entry["bon_curves"].values()))["n"])) + "|"]
        for system, curve in entry["bon_curves"].items():
            lines.append(f"| {_label(system)}: judge (proxy) | "
                         + " | ".join(f"{j:.2f} ({p:.2f})" for j, p in zip(curve["judge"], curve["proxy"])) + " |")
    return lines


def _smoothed(curve: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(proxy, gold, last update of each window): running means over a tenth of the updates, since each update's
    statistics come from one batch of rollouts."""
    window = max(1, len(curve) // 10)
    mean = lambda column: np.convolve(curve[:, column], np.ones(window) / window, mode="valid")
    return mean(1), mean(2), curve[window - 1:, 0].astype(int)


def _plots(summary: dict, out: Path) -> None:
    plt = pyplot(out)
    if plt is None:
        return

    datasets = [d for d, e in summary.items() if any(any(v for v in t.values()) for t in e["tables"].values())]
    if datasets:
        fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4.5), squeeze=False)
        for ax, dataset in zip(axes[0], datasets):
            rows = [(f"T{t}: {_label(TABLES[int(t)][1])} vs {_label(b)}", e) for t, table in
                    summary[dataset]["tables"].items() for b, e in table.items() if e is not None][::-1]
            estimates = [e["win_minus_lose_pct"] for _, e in rows]
            errors = [[m - e["win_minus_lose_pct_ci95"][0] for m, (_, e) in zip(estimates, rows)],
                      [e["win_minus_lose_pct_ci95"][1] - m for m, (_, e) in zip(estimates, rows)]]
            ax.barh([label for label, _ in rows], estimates, xerr=errors, color="tab:blue", alpha=0.7, capsize=2)
            ax.axvline(0, color="grey", lw=0.8, ls="--")
            ax.set_title(f"{dataset} ({summary[dataset]['judge']})", fontsize=9)
            ax.set_xlabel("win - lose (%), 95% interval")
            ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        fig.savefig(out / "win-rates.png", dpi=110)
        plt.close(fig)
    for dataset, entry in summary.items():
        if not entry["ppo_curves"]:
            continue
        # one panel per reward model (each has its own proxy scale): PPO along its updates, best-of-N over N
        curves = [(_label(s), *_smoothed(np.array(c)), "update") for s, c in entry["ppo_curves"].items()]
        curves += [(_label(s), c["proxy"], c["judge"], c["n"], "N") for s, c in entry["bon_curves"].items()]
        ncols = max(len(entry["ppo_curves"]), len(entry["bon_curves"]))
        fig, axes = plt.subplots(2, ncols, figsize=(3.3 * ncols, 6), squeeze=False)
        panels = [*axes[0][:len(entry["ppo_curves"])], *axes[1][:len(entry["bon_curves"])]]
        for ax, (title, proxy, judged, marks, unit) in zip(panels, curves):
            ax.plot(proxy, judged, marker=".", color="tab:blue")
            for index in sorted({0, len(marks) - 1} if unit == "update" else range(len(marks))):
                ax.annotate(f"{unit} {marks[index]}", (proxy[index], judged[index]), fontsize=7)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("proxy reward", fontsize=8)
            ax.set_ylabel(entry["judge"], fontsize=8)
        for ax in [ax for ax in axes.flat if ax not in panels]:
            ax.axis("off")
        fig.suptitle(f"over-optimisation on {dataset}: the judge against the optimised proxy (mean over seeds; PPO: "
                     "running means over a tenth of the updates)",
                     fontsize=10)
        fig.tight_layout()
        fig.savefig(out / f"overoptimisation-{dataset}.png", dpi=110)
        plt.close(fig)
