"""`avalign train`: Hugging Face-style flags (every TrainingArguments flag too) and `--config file.yaml`.

With no dataset and no model it runs the main job: AVA-p on the embedded synthetic task with a tiny GPT-2.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from dataclasses import asdict

import torch
from trl import get_peft_config, get_quantization_config

from ..data.synthetic import SYNTHETIC
from ..errors import ConfigError
from ..modeling import check_quantization, parameter_counts
from ..trainers.ava_config import TRL_OBJECTIVES, AVAConfig
from ..trainers.checkpoints import resumable_checkpoint
from ..training_record import save_training_record
from .common import DataArguments, LoadedRun, ModelArguments, load_data_and_model
from .parsing import dataclass_parser, parse_dataclasses


# Settings of the embedded default task; flags and --config still override them.
SYNTHETIC_DEFAULTS = dict(
    output_dir="outputs/ava-synthetic", learning_rate=1e-3, num_train_epochs=3, per_device_train_batch_size=16,
    per_device_eval_batch_size=64, eval_strategy="epoch", save_strategy="no", warmup_steps=20, max_length=64,
    logging_steps=25, seed=0,
)


def run(data_args: DataArguments, args: AVAConfig, model_args: ModelArguments | None = None) -> dict:
    """Train, save, evaluate; returns the final metrics (also what the CLI prints). ``model_args``: how the given
    backbone loads and whether a LoRA adapter trains on it (TRL's ModelConfig flags)."""
    model_args = model_args or ModelArguments()
    if model_args.model_name_or_path is not None:  # as TRL's scripts do; a from-scratch backbone is built as is
        args.model_init_kwargs = model_args.init_kwargs(args)
    model_options = dict(peft_config=get_peft_config(model_args), quantization_config=get_quantization_config(model_args))
    check_quantization(model_options["quantization_config"])  # before loading any data
    if args.objective in TRL_OBJECTIVES:
        with tempfile.TemporaryDirectory() as backbone_dir:
            return run_baseline(load_data_and_model(data_args, model_args, args, backbone_dir=backbone_dir), args,
                                data_args, **model_options)
    from ..trainers.ava_trainer import AVATrainer

    loaded = load_data_and_model(data_args, model_args, args)
    model = loaded.model if loaded.model is not None else loaded.backbone_path
    trainer = AVATrainer(
        model, args=args, train_dataset=loaded.train, eval_dataset=loaded.eval, processing_class=loaded.tokenizer,
        **model_options,
    )
    if data_args.dataset_name not in (None, SYNTHETIC):
        trainer.model_card_data["datasets"] = [data_args.dataset_name]
    metrics = _train_and_save(trainer, args, data_args)
    if loaded.eval is not None:
        metrics.update({k: v for k, v in trainer.evaluate().items() if k.startswith("eval_")})
    if loaded.eval is not None:
        from ..reward_model import AVARewardModel

        scorer = AVARewardModel(trainer.model, loaded.tokenizer, max_length=args.max_length)
        _store_normalization(scorer, loaded.eval, args, metrics)
        if loaded.task is not None and "chosen_gold_rewards" in loaded.eval.column_names:
            from ..evaluation.gold import gold_metrics

            metrics.update(gold_metrics(scorer, loaded.eval))
    metrics["output_dir"] = args.output_dir
    return metrics


def _store_normalization(scorer, pairs, args: AVAConfig, metrics: dict) -> None:
    """The reward normalisation `avalign serve --normalize_reward` applies, measured on the evaluation pairs; a
    model whose scores are all equal (e.g. untrained heads) gets none, with a warning, and the run still succeeds.
    Every process scores (a sharded model, as under ZeRO-3, needs all ranks in each forward); the main one writes."""
    if "rejected" not in pairs.column_names:
        return
    from ..reward_model import normalize_on_pairs, save_normalization

    measured = normalize_on_pairs(scorer, pairs)
    if args.should_save:
        try:
            metrics["reward_normalization"] = save_normalization(args.output_dir, **measured)
        except ConfigError as exc:
            warnings.warn(f"no reward normalisation stored: {exc}", stacklevel=2)


def _train_and_save(trainer, args: AVAConfig, data_args: DataArguments) -> dict:
    counts = parameter_counts(trainer.model)
    if args.process_index == 0:
        print(f"[avalign] trainable parameters: {counts['trainable_params']:,} of {counts['total_params']:,} "
              f"({counts['trainable_params'] / counts['total_params']:.2%})")
    resume = args.resume_from_checkpoint
    if resume is not None:  # "true": the output directory's newest complete checkpoint (as for a run's directory)
        resume = resumable_checkpoint(args.output_dir if resume.lower() == "true" else resume)
    train_output = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(args.output_dir)
    data = {split: {k: v for k, v in asdict(report).items() if k != "details"}
            for split, report in trainer.tokenize_reports.items()}
    if args.should_save:  # what evaluate needs to score as in training and to find the held-out split
        dataset = data_args.dataset_name or SYNTHETIC
        save_training_record(
            args.output_dir, max_length=args.max_length,
            dataset_name=os.path.abspath(dataset) if os.path.exists(dataset) else dataset,
            dataset_family=data_args.dataset_family, eval_fraction=data_args.eval_fraction,
            dataset_seed=data_args.dataset_seed, max_rows=data_args.max_rows, data=data,
        )
        if args.objective in TRL_OBJECTIVES:  # AVATrainer's card has them already
            with open(os.path.join(args.output_dir, "README.md"), "a") as card:
                card.write("\n## Data (avalign)\n\n" + "".join(
                    f"- {split} data: {report.summary()}\n" for split, report in trainer.tokenize_reports.items()))
    return {"train_loss": train_output.training_loss, "train_runtime_s": train_output.metrics["train_runtime"],
            "data": data, **counts}


def run_baseline(loaded: LoadedRun, args: AVAConfig, data_args: DataArguments, **model_options) -> dict:
    """A TRL baseline on the same data, tokenizer and initial backbone; a BT model is evaluated like AVA.
    ``model_options``: peft_config and quantization_config, passed to TRL's trainer."""
    from ..reward_model import BTRewardModel
    from ..trainers.baselines import trl_trainer

    train_eval = loaded.eval if args.objective != "sft" else None  # SFT's eval rows would need completions
    trainer = trl_trainer(loaded.backbone_path, loaded.tokenizer, loaded.train, train_eval, args, **model_options)
    metrics = _train_and_save(trainer, args, data_args)
    if args.objective == "bt" and loaded.eval is not None:
        scorer = BTRewardModel(trainer.model, loaded.tokenizer, max_length=args.max_length,
                               batch_size=args.per_device_eval_batch_size)
        pairs = scorer.evaluate_pairs(loaded.eval)
        _store_normalization(scorer, loaded.eval, args, metrics)
        metrics.update(eval_accuracy=pairs["accuracy_last"], eval_accuracy_ci95=pairs["accuracy_last_ci95"],
                       eval_n=pairs["n"])
    metrics["output_dir"] = args.output_dir
    return metrics


def main(argv: list[str]) -> int:
    parser = dataclass_parser((DataArguments, AVAConfig, ModelArguments), prog="avalign train")
    data_args, args, model_args = parse_dataclasses(parser, argv)
    if data_args.dataset_name is None:
        parser.set_defaults(**SYNTHETIC_DEFAULTS)
        data_args, args, model_args = parse_dataclasses(parser, argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not args.use_cpu and not torch.cuda.is_available():
        # transformers would otherwise let every process train alone, silently.
        raise ConfigError("launched with several processes but no GPU: pass --use_cpu true to train data-parallel "
                          "on CPU (gloo)")
    metrics = run(data_args, args, model_args)
    if args.process_index == 0:  # one line from a multi-process run
        print(json.dumps(metrics, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
