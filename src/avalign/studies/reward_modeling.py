"""The reward-modeling study (the paper's Table 1): objectives x datasets x backbones x seeds, side by side.

Every objective of a (dataset, backbone, seed) unit starts from the same prepared backbone, sees the same tokens
(one tokenisation, truncation included), the same steps, batch, learning rate and data order (the seed), and is
scored on the same evaluation pairs. Preparation (data split, tokenizer, tokenisation, LM pretraining of a
from-scratch backbone, AfD samples) runs once per unit and is cached on disk; finished cells are kept in
results.json, so an interrupted run resumes where it stopped. With ``folds: k`` a dataset is evaluated k-fold by
prompt group: seed s holds out fold s mod k, so k seeds score every pair exactly once.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from ..errors import ConfigError
from .objectives import OBJECTIVES
from .report import write_report


@dataclass
class TrainingSettings:
    max_steps: int = 200
    batch_size: int = 16
    learning_rate: float = 5e-4
    warmup_ratio: float = 0.1
    max_length: int = 256
    eval_batch_size: int = 64
    logging_steps: int = 10


@dataclass
class BackboneSpec:
    name: str
    model_name_or_path: str | None = None  # a hub id or path: used as is, no pretraining
    arch: str = "gpt2"
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    vocab_size: int = 2000
    pretrain: dict = field(default_factory=lambda: {"max_steps": 300, "batch_size": 16, "learning_rate": 1e-3})
    llama2c: str | None = None  # a folder with a llama2.c checkpoint and tokenizer (stories260K): converted, no pretraining


@dataclass
class DatasetSpec:
    name: str
    path: str | None = None  # None: the embedded synthetic task
    family: str | None = None
    folds: int | None = None  # k-fold by prompt group; otherwise eval_fraction
    eval_fraction: float = 0.2
    max_rows: int | None = None
    synthetic_train_size: int = 4000
    synthetic_eval_size: int = 500
    synthetic_task_seed: int = 0  # another seed draws another task instance (development data for sweeps)
    # "stories260k": the gold task of data/stories_gold.py, texts sampled from the llama2.c model in ``path``;
    # sizes and instance from the synthetic_* fields
    gold_task: str | None = None
    objectives: list[str] | None = None  # default: the study's objectives
    backbones: list[str] | None = None  # names of the study's backbones to run it on; default: all


def load_yaml(path: str, overrides: dict) -> dict:
    """A study's YAML mapping with the overrides that are not None on top."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"no experiment config at {path}") from None
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return raw


@dataclass
class StudyConfig:
    name: str
    output_dir: str
    seeds: list[int]
    objectives: list[str]
    datasets: list[DatasetSpec]
    backbones: list[BackboneSpec]
    training: TrainingSettings = field(default_factory=TrainingSettings)
    afd: dict = field(default_factory=lambda: {"max_new_tokens": 48, "temperature": 1.0})
    workers: int = 1  # parallel processes; 0 runs everything in this process
    # named extra objectives for sweeps: {name: {objective: ava-p, <AVAConfig option>: value, ...}}
    variants: dict = field(default_factory=dict)
    # AVAConfig options for every objective (e.g. to pin the settings a published table was run with); an
    # objective's own switches and a variant's options take precedence
    ava_options: dict = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str, **overrides: Any) -> "StudyConfig":
        raw = load_yaml(path, overrides)
        try:
            config = cls(
                **{k: v for k, v in raw.items() if k not in ("datasets", "backbones", "training")},
                datasets=[DatasetSpec(**d) for d in raw["datasets"]],
                backbones=[BackboneSpec(**b) for b in raw["backbones"]],
                training=TrainingSettings(**raw.get("training", {})),
            )
        except (TypeError, KeyError) as error:
            raise ConfigError(f"{path}: {error}") from None
        for name, options in config.variants.items():
            if options.get("objective") not in OBJECTIVES:
                raise ConfigError(f"{path}: variant '{name}' needs an objective from {list(OBJECTIVES)}")
        names = [b.name for b in config.backbones]
        for spec in config.datasets:
            if spec.backbones is not None and not set(spec.backbones) <= set(names):
                raise ConfigError(f"{path}: dataset '{spec.name}' names backbones {spec.backbones}; defined: {names}")
            for objective in config.objectives_for(spec):
                if objective not in OBJECTIVES and objective not in config.variants:
                    raise ConfigError(f"{path}: unknown objective '{objective}'; expected one of {list(OBJECTIVES)} "
                                      "or a name under variants")
        return config

    def objectives_for(self, spec: DatasetSpec) -> list[str]:
        return spec.objectives or self.objectives

    def method(self, name: str) -> tuple[str, dict, str]:
        """(trainer objective, AVAConfig options, training data) of an objective id or a variant."""
        options = dict(self.variants.get(name, {"objective": name}))
        base_objective, base_options, data = OBJECTIVES[options.pop("objective")]
        return base_objective, {**self.ava_options, **base_options, **options}, data


# -- preparation (one per dataset x backbone x seed) -------------------------------------------------------------


def _unit_key(config: StudyConfig, spec: DatasetSpec, backbone: BackboneSpec, seed: int) -> str:
    # What the prepared data depends on; not the objective list (AfD samples are added when first needed).
    data = {k: v for k, v in asdict(spec).items() if k != "objectives"}
    payload = json.dumps([data, asdict(backbone), seed, config.training.max_length, config.afd], sort_keys=True)
    return f"{spec.name}-{backbone.name}-seed{seed}-{hashlib.sha256(payload.encode()).hexdigest()[:10]}"


def _load_split(spec: DatasetSpec, seed: int):
    """(train, eval, gold task or None, what loading dropped) of one unit."""
    if spec.gold_task is not None:
        return _stories_gold_split(spec)
    if spec.path is None:
        from ..data.synthetic import synthetic_datasets

        from ..data.synthetic import SyntheticTaskConfig

        train, evaluation, task = synthetic_datasets("preference", spec.synthetic_train_size, spec.synthetic_eval_size,
                                                     SyntheticTaskConfig(seed=spec.synthetic_task_seed))
        return train, evaluation, task, "synthetic task"
    from ..data import load_dataset

    fold = (seed % spec.folds, spec.folds) if spec.folds else None
    loaded = load_dataset(spec.path, family=spec.family, eval_fraction=spec.eval_fraction, seed=0,
                          max_rows=spec.max_rows, eval_fold=fold)
    if loaded.kind != "preference" or loaded.eval is None:
        raise ConfigError(f"{spec.path}: the study needs preference pairs with an evaluation split")
    return loaded.train, loaded.eval, None, loaded.report.summary()


def _converted_llama2c(folder: str, output_dir: str) -> str:
    from ..convert import convert_llama2c

    convert_llama2c(str(Path(folder) / "stories260K.bin"), str(Path(folder) / "tok512.bin"), output_dir)
    return output_dir


def _stories_gold_split(spec: DatasetSpec):
    """The stories260K gold task of one instance: train and eval pairs sampled from the model (train and eval from
    different row seeds, so prompts are drawn independently)."""
    import tempfile

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..data.stories_gold import StoriesGoldConfig, StoriesGoldTask, stories_gold_rows

    if spec.gold_task != "stories260k":
        raise ConfigError(f"unknown gold_task '{spec.gold_task}'; expected 'stories260k'")
    with tempfile.TemporaryDirectory() as converted:
        _converted_llama2c(spec.path, converted)
        model, tokenizer = AutoModelForCausalLM.from_pretrained(converted), AutoTokenizer.from_pretrained(converted)
    task = StoriesGoldTask(len(tokenizer), StoriesGoldConfig(seed=spec.synthetic_task_seed))
    train, train_report = stories_gold_rows(model, tokenizer, task, spec.synthetic_train_size, seed=1)
    evaluation, eval_report = stories_gold_rows(model, tokenizer, task, spec.synthetic_eval_size, seed=2)
    summary = f"stories260K gold task {task.config}; left out: train {train_report}, eval {eval_report}"
    return Dataset.from_list(train), Dataset.from_list(evaluation), task, summary


def prepare_backbone(backbone: BackboneSpec, task, train, directory: Path, max_length: int, seed: int, report: dict):
    """(tokenizer, backbone path): a hub id or path as it is, or a from-scratch backbone LM-pretrained on the training
    rows' texts (saved under ``directory``/backbone, its losses in report["pretrain"]). The synthetic task brings its
    word-level tokenizer; other from-scratch backbones get a byte-level BPE trained on the same texts."""
    from transformers import AutoTokenizer

    from ..backbones import build_backbone
    from ..data.tokenize import ensure_pad_token
    from ..pretrain import pretrain_causal_lm
    from ..tokenizer import row_texts, train_bpe_tokenizer

    if backbone.model_name_or_path is not None:
        return ensure_pad_token(AutoTokenizer.from_pretrained(backbone.model_name_or_path)), backbone.model_name_or_path
    if backbone.llama2c is not None:
        path = _converted_llama2c(backbone.llama2c, str(directory / "backbone"))
        return ensure_pad_token(AutoTokenizer.from_pretrained(path)), path
    texts = [text for row in train for text in row_texts(row)]
    tokenizer = task.tokenizer() if task is not None else train_bpe_tokenizer(texts, backbone.vocab_size)
    model = build_backbone(backbone.arch, len(tokenizer), hidden_size=backbone.hidden_size,
                           num_layers=backbone.layers, num_heads=backbone.heads, max_positions=max_length,
                           pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, seed=seed)
    backbone_path = str(directory / "backbone")
    report["pretrain"] = pretrain_causal_lm(model, tokenizer, texts, output_dir=backbone_path,
                                            max_length=max_length, seed=seed, **backbone.pretrain)
    return tokenizer, backbone_path


def sample_afd_pairs(policy_path: str, tokenizer, train, afd: dict, max_length: int, seed: int, report: dict):
    """AfD pairs: each training prompt's chosen response against one sample of the policy at ``policy_path``
    (``afd``: max_new_tokens, temperature); the counts go to report["afd"]."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..data.afd import afd_pairs
    from ..data.cleaning import CleaningReport
    from ..generation import generate_completions

    policy = AutoModelForCausalLM.from_pretrained(policy_path).to("cuda" if torch.cuda.is_available() else "cpu")
    # top-k 50 (transformers' default) in batches of 32: what the published AfD rows were sampled with
    samples = generate_completions(policy, tokenizer, train["prompt"], seed=seed, top_k=50, batch_size=32,
                                   max_prompt_tokens=max_length - afd["max_new_tokens"],
                                   max_new_tokens=afd["max_new_tokens"], temperature=afd["temperature"],
                                   progress=False)
    dropped = CleaningReport()
    pairs = afd_pairs(train, [sample["completion"] for sample in samples], dropped)
    report["afd"] = {"pairs": len(pairs), "dropped": dropped.dropped}
    return pairs


def unit_relative(path: str, unit: Path) -> str:
    """How prep.json records a path: relative to the unit when it lies inside it (so a cache can be moved or
    copied), else as given (a hub id or an outside path)."""
    try:
        return str(Path(path).relative_to(unit))
    except ValueError:
        return path


def unit_path(unit: Path, recorded: str) -> str:
    """The inverse of ``unit_relative``."""
    inside = unit / recorded
    return str(inside) if inside.exists() else recorded


def prepare_unit(config: StudyConfig, spec: DatasetSpec, backbone: BackboneSpec, seed: int, directory: str) -> dict:
    """Write everything the unit's cells share to ``directory``; returns the preparation report. A unit prepared
    before without AfD pairs keeps what it has (split, tokenizer, pretrained backbone) and only gets them added."""
    from transformers import AutoTokenizer

    from ..data.tokenize import tokenize_dataset

    out = Path(directory)
    max_length = config.training.max_length
    train, evaluation, task, summary = _load_split(spec, seed)

    def save_tokenized(rows, name: str, report: dict) -> None:
        tokenized, tokenize_report = tokenize_dataset(rows, tokenizer, max_length=max_length, source=name)
        tokenized.save_to_disk(str(out / f"train_{name}"))
        report[f"tokenize_{name}"] = tokenize_report.summary()

    if (out / "prep.json").exists():
        report = json.loads((out / "prep.json").read_text())
        tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
        backbone_path = unit_path(out, report["backbone_path"])
    else:
        report = {"train_pairs": len(train), "eval_pairs": len(evaluation), "data": summary}
        if task is not None:  # gold per-token rewards, kept for the gold metrics
            evaluation.save_to_disk(str(out / "eval_gold"))
            evaluation = evaluation.remove_columns(["chosen_gold_rewards", "rejected_gold_rewards"])
        tokenizer, backbone_path = prepare_backbone(backbone, task, train, out, max_length, seed, report)
        tokenizer.save_pretrained(str(out / "tokenizer"))
        save_tokenized(train, "pairs", report)
        evaluation.save_to_disk(str(out / "eval"))
        # tokenised once here, so that no cell tokenises the evaluation pairs again
        tokenize_dataset(evaluation, tokenizer, max_length=max_length, source="eval")[0].save_to_disk(str(out / "eval_ids"))
        report["backbone_path"] = unit_relative(backbone_path, out)
    needs_text = any(config.method(o)[2] == "text" for o in config.objectives_for(spec))
    if needs_text and not (out / "train_text").exists():  # DPO tokenises the text itself, as TRL does
        train.select_columns(["prompt", "chosen", "rejected"]).save_to_disk(str(out / "train_text"))
    needs_afd = any(config.method(o)[2] == "afd" for o in config.objectives_for(spec))
    if needs_afd and not (out / "train_afd").exists():  # the initial policy: the backbone
        save_tokenized(sample_afd_pairs(backbone_path, tokenizer, train, config.afd, max_length, seed, report), "afd",
                       report)
    (out / "prep.json").write_text(json.dumps(report, indent=1))
    return report


# -- cells (one per unit x objective) ----------------------------------------------------------------------------


def training_args(settings: TrainingSettings, objective: str, seed: int, output_dir: str, **switches):
    """The AVAConfig of one training run (a TRL baseline takes it through ``trl_config``): the study's settings, no
    checkpoints, no reports, CPU unless a GPU is there. ``switches`` (AVAConfig options) win, e.g. a variant's
    learning rate or steps."""
    import torch

    from ..trainers import AVAConfig

    options = dict(
        output_dir=output_dir, objective=objective, seed=seed, max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size, per_device_eval_batch_size=settings.eval_batch_size,
        learning_rate=settings.learning_rate,
        warmup_steps=int(settings.warmup_ratio * switches.get("max_steps", settings.max_steps)),
        max_length=settings.max_length, logging_steps=settings.logging_steps, save_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
    )
    return AVAConfig(**{**options, **switches})


def set_worker_threads(workers: int) -> None:
    """Share the cores among ``workers`` processes; an in-process run (``workers: 0``) keeps the caller's setting
    (e.g. OMP_NUM_THREADS)."""
    import torch

    if workers > 0:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def run_cell(config: StudyConfig, objective: str, seed: int, directory: str, work_dir: str,
             save_dir: str | None = None) -> dict:
    """Train one objective on a prepared unit and score it on the unit's evaluation pairs; ``save_dir``: keep the
    trained model there (a DPO policy scores against the unit's backbone as its reference)."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer, set_seed

    from ..modeling import TQRModel
    from ..reward_model import AVARewardModel, BTRewardModel
    from ..trainers import AVATrainer
    from ..evaluation.pairwise import pairwise_correct
    from ..trainers.baselines import as_bt_features, bradley_terry_trainer, trl_config

    set_worker_threads(config.workers)
    set_seed(seed)  # fresh heads start from the seed's state, whatever this worker ran before
    unit = Path(directory)
    prep = json.loads((unit / "prep.json").read_text())
    backbone_path = unit_path(unit, prep["backbone_path"])
    tokenizer = AutoTokenizer.from_pretrained(str(unit / "tokenizer"))
    trainer_objective, switches, data = config.method(objective)
    evaluation = load_from_disk(str(unit / "eval_ids"))
    gold = load_from_disk(str(unit / "eval_gold")) if (unit / "eval_gold").exists() else None
    if trainer_objective == "probe":
        return _probe_cell(backbone_path, evaluation, gold)
    train = load_from_disk(str(unit / ("train_afd" if data == "afd" else "train_pairs")))
    if data == "chosen":
        train = train.remove_columns(["rejected_ids"]).rename_column("chosen_ids", "completion_ids")
    settings = config.training
    args = training_args(settings, trainer_objective, seed, work_dir, **switches)
    start = time.perf_counter()
    if trainer_objective == "bt":
        trainer = bradley_terry_trainer(backbone_path, tokenizer, as_bt_features(train), None, trl_config(args))
        trainer.train()
        scorer = BTRewardModel(trainer.model, tokenizer, max_length=settings.max_length,
                               batch_size=settings.eval_batch_size)
    elif trainer_objective == "dpo":
        from transformers import AutoModelForCausalLM

        from ..reward_model import DPOImplicitRewardModel
        from ..trainers.baselines import trl_trainer

        trainer = trl_trainer(backbone_path, tokenizer, load_from_disk(str(unit / "train_text")), None, args)
        trainer.train()
        scorer = DPOImplicitRewardModel(trainer.model, AutoModelForCausalLM.from_pretrained(backbone_path), tokenizer,
                                        beta=args.dpo_beta, max_length=settings.max_length,
                                        batch_size=settings.eval_batch_size)
    else:
        model = TQRModel.from_pretrained(backbone_path, args.tqr_config())
        trainer = AVATrainer(model, args=args, train_dataset=train, processing_class=tokenizer)
        trainer.train()
        scorer = AVARewardModel(trainer.model, tokenizer, max_length=settings.max_length,
                                batch_size=settings.eval_batch_size)
    train_seconds = time.perf_counter() - start
    if save_dir is not None:
        trainer.save_model(save_dir)
        tokenizer.save_pretrained(save_dir)
    chosen, rejected = scorer.pair_scores(evaluation)
    cell: dict[str, Any] = {"train_seconds": round(train_seconds, 2), "n": len(evaluation), "correct": {}}
    # Which pairs share a prompt: the report's bootstrap resamples prompts, not pairs, when seeds share the pairs.
    prompts = evaluation["prompt" if "prompt" in evaluation.column_names else "prompt_ids"]  # text or token ids
    cell["eval_prompt_groups"] = np.unique([str(p) for p in prompts], return_inverse=True)[1].tolist()
    for scoring in scorer.scorings:
        correct = pairwise_correct(chosen[scoring], rejected[scoring])
        cell[f"accuracy_{scoring}"] = float(correct.mean())
        cell["correct"][scoring] = "".join("1" if c else "0" for c in correct)
    if gold is not None:
        from ..evaluation.gold import gold_metrics

        cell.update(gold_metrics(scorer, gold, tokenized=evaluation, plots=True))  # the unit's eval_ids: tokenised once
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    cell["curve"] = [[entry["step"], entry["loss"]] for entry in logs]
    cell["last_log"] = logs[-1] if logs else {}  # the objective's terms and training accuracy at the end
    return cell


def _probe_cell(backbone_path: str, evaluation, gold) -> dict:
    """The oracle-probe cell: no training, no pairwise accuracy of its own; its dense metrics only."""
    from transformers import AutoModelForCausalLM

    from ..evaluation.dense import dense_metrics, probe_readings

    if gold is None:
        raise ConfigError("oracle-probe needs a gold task (per-token gold rewards)")
    backbone = AutoModelForCausalLM.from_pretrained(backbone_path).eval()
    return {"train_seconds": 0.0, "n": len(evaluation), "correct": {}, "curve": [], "last_log": {},
            "dense": dense_metrics(probe_readings(backbone, evaluation, gold), gold)}


# -- the study -------------------------------------------------------------------------------------------------


class _InProcess:
    """``workers: 0``: run every job here, one after another (debugging, tests); same interface as a pool."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, function, *args) -> Future:
        future: Future = Future()
        future.set_result(function(*args))
        return future


def _logged(function, log_path: str, *args):
    """Run ``function(*args)`` in a worker with its output in ``log_path``, so the progress bars stay readable."""
    import contextlib

    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        return function(*args)


def make_pool(workers: int):
    """A process pool of ``workers`` (spawn: workers start clean instead of forking a process whose torch thread
    pools are already running), or ``_InProcess`` for ``workers: 0``."""
    if workers > 0:
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    return _InProcess()


def run_jobs(pool, jobs: dict, store: dict, save, desc: str, progress: bool) -> None:
    """Run ``jobs`` ({key: (function, log path, *args)}) in ``pool``, each with its output in its log file; store
    each result under its key as it finishes and ``save()``, so a crash loses only unfinished jobs."""
    pending = {pool.submit(_logged, function, log, *args): key for key, (function, log, *args) in jobs.items()}
    for future in tqdm(as_completed(pending), total=len(pending), desc=desc, disable=not progress):
        store[pending[future]] = future.result()
        save()


def _cell_key(spec: DatasetSpec, backbone: BackboneSpec, objective: str, seed: int) -> str:
    return f"{spec.name}|{backbone.name}|{objective}|{seed}"


def run_study(config: StudyConfig, progress: bool = True, command: str | None = None) -> dict:
    """Prepare every unit, run every cell not already in results.json, write results.json/.md and plots."""
    out = Path(config.output_dir)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"cells": {}, "prep": {}}
    units = [(spec, backbone, seed) for spec in config.datasets for backbone in config.backbones for seed in config.seeds
             if spec.backbones is None or backbone.name in spec.backbones]
    skipped = {}
    for spec in config.datasets:
        if spec.path is not None and not Path(spec.path).exists():
            skipped[spec.name] = f"{spec.path} not found"
    units = [u for u in units if u[0].name not in skipped]
    results["skipped_datasets"] = skipped
    cells = [(spec, backbone, objective, seed) for spec, backbone, seed in units
             for objective in config.objectives_for(spec)
             if _cell_key(spec, backbone, objective, seed) not in results["cells"]]

    def save():
        results_path.write_text(json.dumps(results, indent=1))

    with make_pool(config.workers) as pool:
        jobs = {}
        for spec, backbone, seed in units:
            directory = out / "cache" / _unit_key(config, spec, backbone, seed)
            unit_cells = [c for c in cells if c[0] is spec and c[1] is backbone and c[3] == seed]
            lacks = [name for data, name in (("afd", "train_afd"), ("text", "train_text"))  # added to a cached unit
                     if any(config.method(c[2])[2] == data for c in unit_cells) and not (directory / name).exists()]
            if unit_cells and (lacks or not (directory / "prep.json").exists()):
                directory.mkdir(parents=True, exist_ok=True)
                jobs[directory.name] = (prepare_unit, str(directory / "log.txt"), config, spec, backbone, seed,
                                        str(directory))
        run_jobs(pool, jobs, results["prep"], save, "preparing", progress)
        for spec, backbone, seed in units:  # units prepared by an earlier, interrupted run
            directory = out / "cache" / _unit_key(config, spec, backbone, seed)
            if directory.name not in results["prep"] and (directory / "prep.json").exists():
                results["prep"][directory.name] = json.loads((directory / "prep.json").read_text())
        jobs = {}
        for spec, backbone, objective, seed in cells:
            directory = out / "cache" / _unit_key(config, spec, backbone, seed)
            work_dir = str(out / "work" / f"{spec.name}-{backbone.name}-{objective}-{seed}")
            jobs[_cell_key(spec, backbone, objective, seed)] = (run_cell, f"{work_dir}/log.txt", config, objective,
                                                                seed, str(directory), work_dir)
        run_jobs(pool, jobs, results["cells"], save, "cells", progress)
    write_report(config, results, out, command)
    return results
