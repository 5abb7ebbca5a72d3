"""The cells of a prepared unit, one per system: the SFT policy's samples and candidates, the trained systems
(round 1), then best-of-N over those candidates and PPO with the trained reward models (round 2)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..reward_modeling import set_worker_threads, training_args, unit_path
from .config import BON, POLICIES, PPO, REWARD_MODELS, TRAINED, PolicyDatasetSpec, PolicyStudyConfig
from .judging import _device, _stored, _task, judged_samples


def _sample_sft(config, spec, system: str, seed, unit: Path, work_dir: Path, prep: dict) -> dict:
    from ...generation import load_policy

    n = max(config.bon_n)
    policy, tokenizer = load_policy(unit_path(unit, prep["sft_path"]))
    candidates = judged_samples(config, spec, policy, tokenizer, seed, unit, unit / "candidates.jsonl", n)
    return {"judge_scores": judged_samples(config, spec, policy, tokenizer, seed, unit, work_dir / "samples.jsonl"),
            "candidate_scores": [candidates[i:i + n] for i in range(0, len(candidates), n)]}


def _train(config, spec, system: str, seed, unit: Path, work_dir: Path, prep: dict) -> dict:
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from ...generation import load_policy
    from ...reward_model import load_reward_model
    from ...trainers import AVATrainer
    from ...trainers.ava_config import AVA_OBJECTIVES
    from ...trainers.baselines import trl_trainer

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
    from ...evaluation.judges import reward_model_scorer
    from ...reward_model import load_reward_model

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

    from ...rl import GoldRewards, PPOConfig, PPOTrainer, RewardModelRewards

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
