"""AVATrainer: a transformers.Trainer that trains a TQR model with AVA-p or AVA-d."""

from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
from collections import defaultdict
from dataclasses import asdict, fields
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoTokenizer, EvalPrediction, PreTrainedTokenizerBase, Trainer, set_seed
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from trl.data_utils import maybe_extract_prompt

from ..backbones import check_fits
from ..data.cleaning import clean_dataset, require_dataset
from ..data.collator import TQRCollator
from ..data.tokenize import TokenizeReport, ensure_pad_token, load_chat_template, response_columns, tokenize_dataset
from ..errors import ConfigError, DataError, TrainingDivergedError
from ..evaluation.pairwise import pairwise_accuracy
from ..losses import (
    AVAObjective,
    ava_d_objective,
    ava_p_objective,
    preference_transformer_objective,
    reward_variances,
    sequence_rewards,
    sequence_terms,
)
from ..modeling import TQR_CONFIG_NAME, TQR_HEADS_NAME, TQRModel, TQROutput, supports_padding_free
from ..training_record import save_training_record
from .. import __version__
from .ava_config import AVA_OBJECTIVES, AVAConfig
from .callbacks import DivergenceGuard
from .checkpoints import resumable_checkpoint

AVA_BIBTEX = """@inproceedings{cai2025ava,
  title     = {Approximated Variational Bayesian Inverse Reinforcement Learning for Large Language Model Alignment},
  author    = {Cai, Yuang and Yuan, Yuyu and Shi, Jinsheng and Lin, Qinhong},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year      = {2025},
  eprint    = {2411.09341},
  archivePrefix = {arXiv}
}"""
STANDALONE_LOADER = "ava_reward_model.py"  # avalign/hub_loader.py, copied beside every saved model

_LOSS_TOTAL = "avalign_loss_total"  # key of the running loss sum in a checkpoint's trainer_state.json
_CARD_OPTIONS = (
    "objective", "alpha", "beta", "gamma", "lam", "cer_coef", "cer_form", "cer_expected", "cer_target", "td_reference", "reduction", "use_reward_weights",
    "use_negative", "use_irl", "use_cer", "pretrained_q", "rescale_reward_weights", "weights_apply_to",
    "log_std_min", "log_std_max", "max_length", "too_long", "learning_rate", "per_device_train_batch_size", "seed",
)


def _is_hub_id(name: str) -> bool:
    """Whether a backbone's name is a Hub id (``gpt2``, ``org/model``) rather than a local or temporary path."""
    return bool(name) and not os.path.exists(name) and not name.startswith((".", "/", "~")) and name.count("/") <= 1


def _as_demonstrations(dataset: Dataset) -> Dataset:
    """AVA-d on preference data learns from the chosen responses only (the rejected ones are not demonstrations)."""
    return dataset.select_columns(["prompt", "chosen"]).rename_column("chosen", "completion")


def _check_padding_free(model: TQRModel) -> None:
    config = model.backbone.config
    if model.is_encoder_decoder:
        raise ConfigError(f"padding_free needs a causal LM; {config.model_type} is an encoder-decoder")
    if not supports_padding_free(model.backbone):
        raise ConfigError(f"padding_free: the {config.model_type} backbone lets packed sequences see each other "
                          "(it ignores position ids when masking); train it with padding_free=False")
    attention = getattr(config, "_attn_implementation", None)
    if attention in ("sdpa", "eager"):
        warnings.warn(f"padding_free with attn_implementation={attention}: correct, but attention runs over the "
                      "whole packed row (quadratic in the batch's tokens); it saves time with flash_attention_2/3 "
                      "or flex_attention", stacklevel=3)


def _rows(output: TQROutput, rows: slice) -> dict[str, torch.Tensor]:
    return {name: getattr(output, name)[rows] for name in ("q_values", "reward_mean", "reward_log_std", "reward_weights", "mask")}


class AVATrainer(Trainer):
    """Trains a [`TQRModel`] with the AVA objectives (or the Preference Transformer baseline on the same model).

    ``model`` is a TQRModel or a hub id / path (a saved TQR model, or a plain backbone that gets fresh heads from
    ``args``), loaded with ``args.model_init_kwargs`` and ``quantization_config`` as TRL's trainers load theirs.
    ``peft_config`` (e.g. ``peft.LoraConfig``) trains an adapter on the backbone instead of its weights; the TQR heads
    are always trained in full, and both are saved side by side (``TQRModel.from_pretrained`` reloads them). Datasets are in TRL's formats: prompt/chosen/rejected (needed by AVA-p) or prompt/completion
    (AVA-d), standard or conversational; they are tokenised here and the truncation counts are printed.

    Example:
    ```python
    from avalign import AVAConfig, AVATrainer
    trainer = AVATrainer("gpt2", args=AVAConfig(output_dir="ava-gpt2"), train_dataset=train, eval_dataset=test)
    trainer.train()
    ```
    """

    def __init__(
        self,
        model: TQRModel | str,
        args: AVAConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        peft_config: "PeftConfig | None" = None,
        quantization_config: "BitsAndBytesConfig | None" = None,
        **kwargs: Any,
    ):
        args = args if args is not None else AVAConfig()
        if not isinstance(args, AVAConfig):
            raise ConfigError(f"AVATrainer needs an AVAConfig, got {type(args).__name__}")
        if args.objective not in AVA_OBJECTIVES:
            raise ConfigError(f"objective {args.objective} is a TRL baseline: train it with "
                              "avalign.trainers.baselines.trl_trainer (or `avalign train --objective ...`)")
        if isinstance(model, str):
            init_kwargs = {"trust_remote_code": args.trust_remote_code, **(args.model_init_kwargs or {})}
            if quantization_config is not None:
                init_kwargs["quantization_config"] = quantization_config
            processing_class = processing_class or AutoTokenizer.from_pretrained(
                model, revision=init_kwargs.get("revision"), trust_remote_code=init_kwargs["trust_remote_code"])
            set_seed(args.seed)  # fresh heads: initialised under the run's seed, not whatever state came before
            model = TQRModel.from_pretrained(model, args.tqr_config(), **init_kwargs)
        elif quantization_config is not None or args.model_init_kwargs:
            raise ConfigError("quantization_config and model_init_kwargs apply when AVATrainer loads the model: pass "
                              "its path or hub id instead of a TQRModel")
        if peft_config is not None:
            model.add_adapter(peft_config)  # the backbone's own weights freeze; the TQR heads keep training
        if processing_class is None:
            raise ConfigError("pass processing_class (the tokenizer) when model is a TQRModel object")
        model.tqr_config.scoring = args.scoring  # not part of the heads: the score this run trains it to rank by
        differ = {k: (v, getattr(args, k)) for k, v in asdict(model.tqr_config).items() if getattr(args, k) != v}
        if differ:  # the heads are built by then, so the model's own options are what trains
            warnings.warn(f"the model's options (model, AVAConfig) differ and the model's are used: {differ}", stacklevel=2)
        ensure_pad_token(processing_class)
        if args.chat_template_path is not None:
            processing_class.chat_template = load_chat_template(args.chat_template_path)
        check_fits(model.backbone, processing_class, args.max_length)
        if args.padding_free:
            _check_padding_free(model)
        backbone_config = model.backbone.config
        self.tokenize_reports: dict[str, TokenizeReport] = {}
        train_dataset = self._tokenize(train_dataset, "train", processing_class, model.is_encoder_decoder, args)
        eval_dataset = self._tokenize(eval_dataset, "eval", processing_class, model.is_encoder_decoder, args)
        collator = TQRCollator(
            pad_token_id=processing_class.pad_token_id,
            is_encoder_decoder=model.is_encoder_decoder,
            decoder_start_token_id=getattr(backbone_config, "decoder_start_token_id", None),
            padding_free=args.padding_free,
        )
        eval_is_preference = eval_dataset is not None and "rejected_ids" in eval_dataset.column_names
        super().__init__(
            model=model,
            args=args,
            data_collator=kwargs.pop("data_collator", collator),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=kwargs.pop("compute_metrics", self._pairwise_metrics if eval_is_preference else None),
            callbacks=[*(kwargs.pop("callbacks", None) or []), DivergenceGuard()],
            **kwargs,
        )
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.ref_model = None
        if args.td_reference and args.objective != "preftrans":  # the initial model, frozen, for Q_ref
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False).to(self.args.device)
        # Model-card metadata (datasets, tags, license, language, base_model); create_model_card's arguments add to it.
        self.model_card_data: dict[str, Any] = {}

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """Trainer.train; ``resume_from_checkpoint`` True or a run's directory resumes from its newest complete
        checkpoint (incomplete ones, from an interrupted save, are skipped with a message)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = self.args.output_dir
        if isinstance(resume_from_checkpoint, str):
            resume_from_checkpoint = resumable_checkpoint(resume_from_checkpoint)
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        if resume_from_checkpoint is None:
            return output
        # Trainer's train_loss after a resume averages only the steps run since; add the ones before it.
        with open(os.path.join(resume_from_checkpoint, TRAINER_STATE_NAME)) as handle:
            saved = json.load(handle)
        before = saved.get("stateful_callbacks", {}).get(_LOSS_TOTAL, {}).get("loss_total")
        if before is None or not self.state.global_step:
            return output
        since = self.state.global_step - saved["global_step"]
        loss = (before + output.training_loss * since) / self.state.global_step
        return output._replace(training_loss=loss, metrics={**output.metrics, "train_loss": loss})

    def _save_checkpoint(self, model, trial) -> None:
        # The sum of every training loss so far goes into the checkpoint (trainer_state.json), for train().
        self.state.stateful_callbacks[_LOSS_TOTAL] = {"loss_total": self._total_loss_scalar + self._tr_loss.item()}
        super()._save_checkpoint(model, trial)

    # -- data -----------------------------------------------------------------------------------------------
    def _tokenize(self, dataset, split, tokenizer, is_encoder_decoder, args) -> Dataset | None:
        if dataset is None:
            return None
        require_dataset(dataset, f"{split}_dataset")
        if "prompt_ids" in dataset.column_names:  # already tokenised by the caller
            return dataset
        if "prompt" not in dataset.column_names and {"chosen", "rejected"} <= set(dataset.column_names):
            # Implicit prompts, as TRL accepts them: the shared start of chosen and rejected is the prompt.
            dataset = dataset.map(maybe_extract_prompt, desc=f"{split}: extracting prompts")
        columns = response_columns(dataset.column_names)
        if split == "train" and args.objective != "ava-d" and columns != ("chosen", "rejected"):
            raise DataError(
                f"objective {args.objective} needs preference rows (prompt/chosen/rejected); the train set has {dataset.column_names}",
                path="train_dataset",
                field="chosen/rejected",
            )
        if split == "train" and args.objective == "ava-d" and columns == ("chosen", "rejected"):
            dataset = _as_demonstrations(dataset)
        dataset, cleaning = clean_dataset(dataset, f"{split}_dataset")  # as the CLI's loader cleans
        if cleaning.dropped and args.process_index == 0:
            print(f"[avalign] {split}: cleaned: {cleaning.summary()}")
        tokenized, report = tokenize_dataset(
            dataset, tokenizer, max_length=args.max_length, is_encoder_decoder=is_encoder_decoder,
            too_long=args.too_long, source=f"{split}_dataset", num_proc=args.dataset_num_proc,
        )
        self.tokenize_reports[split] = report
        if args.process_index == 0:
            print(f"[avalign] {split}: {report.summary()}")
        return tokenized

    # -- loss -----------------------------------------------------------------------------------------------
    def _objective(self, output: TQROutput, is_pair: bool, td_baseline: torch.Tensor | None = None,
                   ) -> tuple[AVAObjective, dict[str, torch.Tensor] | None]:
        """The objective of a batch, and (for preference batches) the sequence scores of both halves."""
        args: AVAConfig = self.args
        if args.objective != "ava-d" and not is_pair:
            raise DataError(f"objective {args.objective} needs preference rows (prompt/chosen/rejected)",
                            field="chosen/rejected")
        half = output.mask.shape[0] // 2 if is_pair else output.mask.shape[0]
        chosen, rejected = _rows(output, slice(0, half)), _rows(output, slice(half, None))
        if td_baseline is not None:
            chosen["td_baseline"], rejected["td_baseline"] = td_baseline[:half], td_baseline[half:]
        scores = None
        if is_pair:
            scores = {
                "chosen": sequence_rewards(chosen["reward_mean"], chosen["reward_weights"], chosen["mask"]),
                "rejected": sequence_rewards(rejected["reward_mean"], rejected["reward_weights"], rejected["mask"]),
            }
        if args.objective == "preftrans":
            return preference_transformer_objective(scores["chosen"]["sum"], scores["rejected"]["sum"]), scores
        options = dict(gamma=args.gamma, reduction=args.reduction, weights_apply_to=args.weights_apply_to)
        chosen_terms = sequence_terms(**chosen, **options)
        if args.objective == "ava-p":
            variance = None
            if args.cer_expected:
                variance = sum(reward_variances(rows["reward_log_std"], rows["reward_weights"], rows["mask"])[
                    args.cer_target] for rows in (chosen, rejected))
            objective = ava_p_objective(
                chosen_terms, sequence_terms(**rejected, **options), scores["chosen"][args.cer_target],
                scores["rejected"][args.cer_target], beta=args.beta, lam=args.lam, cer_coef=args.cer_coef,
                cer_form=args.cer_form, margin_variance=variance, use_negative=args.use_negative,
                use_irl=args.use_irl, use_cer=args.use_cer,
            )
        else:
            objective = ava_d_objective(chosen_terms, beta=args.beta, lam=args.lam, use_irl=args.use_irl)
        objective.terms["td_error"] = chosen_terms.td_error.mean()
        return objective, scores

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        is_pair = bool(inputs.pop("is_preference"))
        output: TQROutput = model(**inputs, with_q=self.args.objective != "preftrans")
        td_baseline = None
        if self.ref_model is not None:
            with torch.no_grad():
                td_baseline = self.ref_model(**inputs).q_values
        objective, scores = self._objective(output, is_pair, td_baseline)
        loss = objective.loss
        mode = "train" if model.training else "eval"
        if mode == "train" and not torch.isfinite(loss):
            terms = {k: round(float(v.detach()), 4) for k, v in objective.terms.items()}
            raise TrainingDivergedError(
                f"loss is {loss.item()} at step {self.state.global_step + 1}; stopping instead of training on. "
                f"Terms: {terms}. Try a lower learning rate or a tighter log_std clamp."
            )
        self._record(mode, objective, output, scores)
        return (loss, (output, scores)) if return_outputs else loss

    # -- metrics --------------------------------------------------------------------------------------------
    def _record(self, mode: str, objective: AVAObjective, output: TQROutput, scores) -> None:
        mask = output.mask
        values = {f"objective/{name}": value.detach() for name, value in objective.terms.items()}
        values["rewards/sigma"] = output.reward_log_std.detach().exp()[mask].mean()
        if scores is not None:
            half = mask.shape[0] // 2
            mean = output.reward_mean.detach()
            values["rewards/chosen"] = mean[:half][mask[:half]].mean()
            values["rewards/rejected"] = mean[half:][mask[half:]].mean()
            chosen, rejected = scores["chosen"][self.args.scoring], scores["rejected"][self.args.scoring]
            values["rewards/accuracy"] = (chosen > rejected).float().mean()
            values["rewards/margin"] = (chosen - rejected).mean()
        for name, value in values.items():
            self._metrics[mode][name].append(self.accelerator.gather_for_metrics(value.reshape(1)).float().mean().item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if "loss" in logs else "eval"
        prefix = "eval_" if mode == "eval" else ""
        logs = {**logs, **{prefix + k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v}}
        self._metrics[mode].clear()
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad():
            loss, (_, scores) = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only or scores is None:
            return loss.detach(), None, None
        logits = torch.stack(
            [scores["chosen"]["last"], scores["rejected"]["last"], scores["chosen"]["sum"], scores["rejected"]["sum"]],
            dim=1,
        )
        # Trainer only calls compute_metrics when labels exist; pairs carry their label in their order.
        return loss.detach(), logits, torch.zeros(logits.shape[0], device=logits.device)

    def _pairwise_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        scores = np.asarray(prediction.predictions)
        metrics = {
            "accuracy_last": pairwise_accuracy(scores[:, 0], scores[:, 1]),
            "accuracy_sum": pairwise_accuracy(scores[:, 2], scores[:, 3]),
            "n": float(scores.shape[0]),
        }
        metrics["accuracy"] = metrics[f"accuracy_{self.args.scoring}"]
        return metrics

    # -- persistence: backbone in its own HF format plus the heads (see TQRModel.save_pretrained) -------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        # Trainer.save_model calls this on every process under DeepSpeed; only the main one writes (another rank's
        # staged save, without the gathered weights, would replace the main one's files).
        if not self.args.should_save:
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        # state_dict is set when the Trainer gathered it from FSDP or DeepSpeed shards.
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir, state_dict=state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        save_training_record(output_dir, max_length=self.args.max_length)
        self._write_card(output_dir)

    def _write_card(self, output_dir: str) -> None:
        with open(os.path.join(output_dir, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(self.model_card())
        shutil.copyfile(os.path.join(os.path.dirname(os.path.dirname(__file__)), "hub_loader.py"),
                        os.path.join(output_dir, STANDALONE_LOADER))

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Trainer's push during training copies a fixed list of model files from the checkpoint to output_dir and
        uploads output_dir; the heads, their config, the card and the standalone loader are copied here first, so
        every pushed commit is a whole TQR model."""
        if self.is_world_process_zero() and self.args.hub_strategy != "end":
            for name in (TQR_CONFIG_NAME, TQR_HEADS_NAME, "README.md", STANDALONE_LOADER):
                if os.path.isfile(os.path.join(checkpoint_folder, name)):
                    shutil.copy(os.path.join(checkpoint_folder, name), os.path.join(self.args.output_dir, name))
        super()._push_from_checkpoint(checkpoint_folder)

    def create_model_card(self, language: str | None = None, license: str | None = None,
                          tags: str | list[str] | None = None, model_name: str | None = None,
                          finetuned_from: str | None = None, tasks: str | list[str] | None = None,
                          dataset_tags: str | list[str] | None = None, dataset: str | list[str] | None = None,
                          dataset_args: str | list[str] | None = None) -> None:
        """Trainer's hook (``push_to_hub`` calls it; its TrainingSummary needs a PreTrainedModel's ``config``, which a
        TQRModel does not have): write avalign's card, with these arguments in its metadata."""
        if not self.is_world_process_zero():
            return

        def listed(value):
            return [value] if isinstance(value, str) else list(value or [])

        data = self.model_card_data
        data["tags"] = list(dict.fromkeys(listed(data.get("tags")) + listed(tags)))
        data["datasets"] = list(dict.fromkeys(listed(data.get("datasets")) + listed(dataset) + listed(dataset_tags)))
        for key, value in (("language", language), ("license", license), ("base_model", finetuned_from),
                           ("model_name", model_name)):
            if value is not None:
                data[key] = value
        self._write_card(self.args.output_dir)

    def model_card(self) -> str:
        """The model card: YAML metadata for the Hub, what was trained, on what, with which options, how it ended,
        how to load it (with or without avalign) and what to cite."""
        from huggingface_hub import ModelCardData

        args: AVAConfig = self.args
        model = self.accelerator.unwrap_model(self.model)
        backbone_config = model.backbone.config
        loaded_from = getattr(backbone_config, "_name_or_path", "")
        backbone = loaded_from or backbone_config.model_type
        data = dict(self.model_card_data)
        name = data.pop("model_name", None) or os.path.basename(os.path.normpath(args.output_dir or "model"))
        base_model = data.pop("base_model", None) or (loaded_from if _is_hub_id(loaded_from) else None)
        metadata = ModelCardData(
            base_model=base_model, library_name="avalign", license=data.pop("license", "other"),
            tags=list(dict.fromkeys(["avalign", "ava", "reward-model", args.objective, *data.pop("tags", [])])),
            datasets=data.pop("datasets", None) or None, **data,
        )
        options = {f.name: getattr(args, f.name) for f in fields(AVAConfig) if f.name in _CARD_OPTIONS}
        last_logs = {k: v for h in self.state.log_history for k, v in h.items()}
        repo = getattr(self, "hub_model_id", None) or args.hub_model_id or name
        lines = [
            "---", metadata.to_yaml(), "---", "", f"# {name}", "",
            f"A TQR model trained with avalign {__version__} ({args.objective}; Approximated Variational Alignment, "
            "Cai et al., AAAI 2025) on a `" + backbone + "` backbone: a reward mean mu_t, a sigma_t and a weight w_t "
            "for every response token.", "",
            "## Usage", "", "With avalign (`pip install avalign`):", "", "```python",
            "from avalign import AVARewardModel", "",
            f'model = AVARewardModel.from_pretrained("{repo}")',
            'rewards = model.score(["Why is the sky blue?"], [" Rayleigh scattering."])[0]',
            f"rewards.{model.tqr_config.scoring}, rewards.token_rewards, rewards.reward_std  # sequence score, w_t mu_t, "
            "sigma_t", "```", "",
            "Or `avalign score --model_name_or_path " + repo + " --dataset_name rows.jsonl --output_file scored.jsonl "
            "--html report.html`, and `avalign serve` for OpenRLHF's `--remote_rm_url`.", "",
            f"Without avalign (needs torch, transformers and safetensors; causal-LM backbones): `{STANDALONE_LOADER}` "
            "in this repository loads the model.", "", "```python",
            "from ava_reward_model import load_ava_reward_model", "",
            f'model = load_ava_reward_model("{repo}")',
            'out = model.score("Why is the sky blue?", " Rayleigh scattering.")',
            'out["score"], out["token_rewards"], out["token_std"]', "```", "",
            "The backbone alone (the policy, when the Q head is the pretrained LM head) loads with "
            "`AutoModelFor*.from_pretrained`; `AutoModelForSequenceClassification` does not read the reward heads.", "",
            "## Training", "", f"- steps: {self.state.global_step}, epochs: {self.state.epoch}",
            *(f"- {split} data: {report.summary()}" for split, report in self.tokenize_reports.items()),
            "", "## Options", "", *(f"- `{k}`: {v}" for k, v in options.items()),
            "", "## Last logged metrics", "", *(f"- `{k}`: {v}" for k, v in sorted(last_logs.items())), "",
            "## Citation", "", "```bibtex", AVA_BIBTEX, "```", "",
        ]
        return "\n".join(lines)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        loaded = TQRModel.from_pretrained(resume_from_checkpoint)
        model.load_state_dict(loaded.state_dict())

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)
