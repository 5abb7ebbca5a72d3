"""What `train` and `evaluate` share: where the data and the model come from."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from trl import ModelConfig

from ..backbones import build_backbone
from ..data.splits import check_fraction
from ..data.synthetic import SYNTHETIC, SyntheticTask, synthetic_datasets
from ..errors import ConfigError
from ..modeling import TQRModel


@dataclass
class ModelArguments(ModelConfig):
    """TRL's ModelConfig, the same flags (--dtype, --attn_implementation, --model_revision, --use_peft, --lora_*,
    --load_in_4bit/8bit, ...); only --model_name_or_path says what avalign makes of it."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id or local path of a backbone (causal LM or encoder-decoder) or a saved TQR model. "
                  "Default: a tiny GPT-2 built from a config (synthetic task only)."},
    )

    def __post_init__(self) -> None:
        path = self.model_name_or_path
        # A hub id is "name" or "org/name"; anything else is a local path, which must exist before any work starts.
        if path is not None and not os.path.exists(path) and (path.startswith((".", "/", "~")) or path.count("/") > 1):
            raise ConfigError(f"--model_name_or_path {path}: no such directory")
        super().__post_init__()

    def init_kwargs(self, args) -> dict:
        """The backbone's from_pretrained keyword arguments, as TRL's scripts build them (``args``: AVAConfig, whose
        ``model_init_kwargs`` win)."""
        return {"revision": self.model_revision, "trust_remote_code": args.trust_remote_code,
                "attn_implementation": self.attn_implementation, "dtype": self.dtype, **(args.model_init_kwargs or {})}


@dataclass
class DataArguments:
    """Where the data come from (the model: ModelArguments; the rest: AVAConfig)."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub id or local .jsonl/.json/.parquet/.csv (.gz too) file, or 'synthetic' (the default): "
                  "the embedded task with gold per-token rewards."},
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "As in TRL: the hub dataset's configuration (datasets.load_dataset's name)."}
    )
    dataset_train_split: str | None = field(
        default=None, metadata={"help": "As in TRL: the split to train on (default: train, or the only split)."}
    )
    dataset_test_split: str | None = field(
        default=None, metadata={"help": "As in TRL: the split to evaluate on (default: test, validation, valid, eval "
                                "or dev, whichever exists; none: --eval_fraction of the prompts)."}
    )
    dataset_family: str | None = field(
        default=None, metadata={"help": "Parser for the dataset (e.g. hh-rlhf, tldr, gsm8k-pairs); default: detected."}
    )
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of prompts held out for evaluation."})
    dataset_seed: int = field(default=0, metadata={"help": "Seed of the prompt-grouped train/eval split."})
    max_rows: int | None = field(default=None, metadata={"help": "Read at most this many rows (quick runs)."})
    synthetic_train_size: int = field(default=10000, metadata={"help": "Training rows of the synthetic task."})
    synthetic_eval_size: int = field(default=500, metadata={"help": "Evaluation pairs of the synthetic task."})
    backbone_arch: str = field(
        default="gpt2",
        metadata={"help": "Architecture of the from-scratch backbone used when no --model_name_or_path is given: "
                  "gpt2, llama, qwen2, bart or t5."},
    )
    backbone_hidden_size: int = field(default=64, metadata={"help": "Width of the from-scratch backbone."})
    backbone_layers: int = field(default=2, metadata={"help": "Layers of the from-scratch backbone."})
    tokenizer_vocab_size: int = field(
        default=4000,
        metadata={"help": "Without --model_name_or_path on real data: vocabulary of the byte-level BPE tokenizer "
                  "trained on the training split."},
    )

    def __post_init__(self) -> None:
        check_fraction(self.eval_fraction)
        for name in ("max_rows", "synthetic_train_size", "synthetic_eval_size", "backbone_hidden_size",
                     "backbone_layers", "tokenizer_vocab_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class LoadedRun:
    train: Dataset | None
    eval: Dataset | None
    tokenizer: PreTrainedTokenizerBase
    model: TQRModel | None  # over a from-scratch backbone; None when backbone_path is a given model
    task: SyntheticTask | None = None
    backbone_path: str | None = None  # the given model, or the from-scratch backbone saved for a TRL baseline


def load_data_and_model(data_args: DataArguments, model_args: ModelArguments, args,
                        backbone_dir: str | None = None) -> LoadedRun:
    """Datasets (train rows in the format the objective needs; eval always pairs), tokenizer and model.

    A given ``--model_name_or_path`` is not loaded here: ``backbone_path`` names it, and the trainer loads it (AVATrainer
    builds the fresh heads under the run's seed). Without one, a from-scratch backbone is built: wrapped as a TQR
    model, or with ``backbone_dir`` (for TRL baselines) saved there, with the same weights AVA would start from."""
    task = None
    if data_args.dataset_name in (None, SYNTHETIC):
        kind = "demonstration" if args.objective in ("ava-d", "sft") else "preference"
        train, eval_set, task = synthetic_datasets(kind, data_args.synthetic_train_size, data_args.synthetic_eval_size)
        tokenizer = task.tokenizer()
    else:
        from ..data import load_dataset
        from ..tokenizer import row_texts, train_bpe_tokenizer

        loaded = load_dataset(
            data_args.dataset_name, family=data_args.dataset_family, eval_fraction=data_args.eval_fraction,
            seed=data_args.dataset_seed, max_rows=data_args.max_rows, dataset_config=data_args.dataset_config,
            train_split=data_args.dataset_train_split, test_split=data_args.dataset_test_split,
        )
        train, eval_set = loaded.train, loaded.eval
        if model_args.model_name_or_path is not None:
            tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                                      trust_remote_code=args.trust_remote_code)
        else:  # a from-scratch backbone: its tokenizer is trained here, offline, on the training split only
            texts = (text for row in train for text in row_texts(row))
            tokenizer = train_bpe_tokenizer(texts, data_args.tokenizer_vocab_size)
    model, backbone_path = None, model_args.model_name_or_path
    if backbone_path is None:
        if model_args.use_peft or model_args.load_in_4bit or model_args.load_in_8bit:
            raise ConfigError("--use_peft and --load_in_4bit/8bit adapt a pretrained backbone: pass --model_name_or_path")
        backbone = build_backbone(
            data_args.backbone_arch, len(tokenizer), hidden_size=data_args.backbone_hidden_size,
            num_layers=data_args.backbone_layers, max_positions=max(256, args.max_length or 0),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, seed=args.seed,
        )
        if backbone_dir is not None:
            backbone.save_pretrained(backbone_dir)
            backbone_path = backbone_dir
        else:
            model = TQRModel(backbone, args.tqr_config())
    return LoadedRun(train, eval_set, tokenizer, model, task, backbone_path)
