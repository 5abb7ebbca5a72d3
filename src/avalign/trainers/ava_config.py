"""AVAConfig: every AVA option, as a TrainingArguments subclass (so every Trainer flag works too)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainingArguments

from ..errors import ConfigError
from ..losses import CER_FORMS, REDUCTIONS, WEIGHT_TARGETS
from ..modeling import TQRConfig
from ..ops import Q_KERNELS
from ..data.tokenize import TOO_LONG_POLICIES

AVA_OBJECTIVES = ("ava-p", "ava-d", "preftrans")  # trained by AVATrainer on a TQR model
TRL_OBJECTIVES = ("bt", "dpo", "sft")  # baselines trained by TRL's own trainers (trainers/baselines.py)
OBJECTIVES = AVA_OBJECTIVES + TRL_OBJECTIVES
SCORINGS = ("last", "sum")


def _at_least(low):
    return lambda value: value is not None and math.isfinite(value) and value >= low


# (option, what is allowed, check): the ranges in which each option means what docs/method.md says; outside them a
# run trains "fine" on a meaningless loss (beta -1, lam -5, cer_coef -3, gamma 7 gave loss -6473).
OPTION_RANGES = (
    ("beta", ">= 0", _at_least(0)),
    ("lam", ">= 0", _at_least(0)),
    ("cer_coef", ">= 0", _at_least(0)),
    ("gamma", "in [0, 1]", lambda value: _at_least(0)(value) and value <= 1),
    ("dpo_beta", "> 0", lambda value: _at_least(0)(value) and value > 0),
    ("max_length", "None or >= 4 (room for a prompt and a response)", lambda v: v is None or _at_least(4)(v)),
    ("learning_rate", ">= 0", _at_least(0)),
    ("per_device_train_batch_size", ">= 1", _at_least(1)),
    ("per_device_eval_batch_size", ">= 1", _at_least(1)),
    ("gradient_accumulation_steps", ">= 1", _at_least(1)),
)


class WithoutHubToken:
    """Training arguments that pickle without ``hub_token``: the Trainer writes them (training_args.bin) into every
    output and checkpoint directory, which get copied, shared and pushed."""

    def __getstate__(self) -> dict:
        return {**self.__dict__, "hub_token": None}


@dataclass
class AVAConfig(WithoutHubToken, TrainingArguments):
    """Configuration of [`AVATrainer`]. Defaults of alpha, beta, gamma and lambda are this project's choices
    (the paper publishes none); docs/method.md gives the sweep that chose them."""

    # -- objective ------------------------------------------------------------------------------------------
    objective: str = field(
        default="ava-p",
        metadata={"help": "ava-p: preference pairs (Eq. 17 + CER, Eq. 18). ava-d: demonstrations (Eq. 13); on "
                  "preference data it trains on the chosen responses. preftrans: the Preference Transformer "
                  "baseline (Kim et al. 2023) on the same model's reward head and weights. Baselines through "
                  "TRL, with the same TrainingArguments: bt (Bradley-Terry reward model, RewardTrainer), dpo "
                  "(DPOTrainer), sft (SFTTrainer on the chosen responses).",
                  "choices": list(OBJECTIVES)},
    )
    dpo_beta: float = field(default=0.1, metadata={"help": "beta of DPO (objective dpo only; TRL's default)."})
    alpha: float = field(default=1.0, metadata={"help": "alpha of the pretrained-Q transform (Eq. 12)."})
    beta: float = field(default=1.0, metadata={"help": "beta, weight of the Q (policy) term (Eqs. 13, 17)."})
    gamma: float = field(default=1.0, metadata={"help": "gamma, discount in the TD error (Eq. 14)."})
    lam: float = field(
        default=0.1,
        metadata={"help": "lambda, weight of the TD log-likelihood term (Eqs. 13, 17). Default 0.1: with the CER on "
                  "the weighted return it gave the best dense rewards on development data (docs/method.md)."},
    )
    cer_coef: float = field(
        default=5.0,
        metadata={"help": "Weight of the CER auxiliary term (Eq. 18), AVA-p only. Default 5 with the log form: "
                  "with the printed form and weight 1, the TD likelihood outweighs it and the reward head stops "
                  "ranking (docs/results/reward-modeling.md)."},
    )
    cer_form: str = field(
        default="logsigmoid",
        metadata={"help": "CER as printed in the paper (sigmoid of the reward margin) or its log (logsigmoid).",
                  "choices": list(CER_FORMS)},
    )
    cer_expected: bool = field(
        default=False,
        metadata={"help": "CER as its expectation under the reward posterior q, E_q[log sigmoid(R+ - R-)] (the "
                  "variational reading, as the TD term is), so that sigma learns from the preferences; off: CER at "
                  "the posterior means, as printed."},
    )
    cer_target: str = field(
        default="sum",
        metadata={"help": "Which expected reward CER ranks: the last response token's weighted reward mean (last) or "
                  "the weighted return over the response, sum_t w_t mu_t (sum, the Eq. 19 reading of E[R | y]). "
                  "With sum every position's reward mean is trained by the preference, not only the last one's.",
                  "choices": list(SCORINGS)},
    )
    td_reference: bool = field(
        default=False,
        metadata={"help": "Take TD errors (Eq. 14) of Q - Q_ref, with Q_ref the initial model's Q (a frozen copy, "
                  "like DPO's reference model: one more forward per step), so the reward explains what the "
                  "preferences change in the policy rather than the LM's own TD errors."},
    )
    reduction: str = field(
        default="mean",
        metadata={"help": "Per-sequence reduction of per-token terms: token mean over valid response positions, "
                  "or sum.", "choices": list(REDUCTIONS)},
    )
    # -- ablations (paper's names in quotes) ------------------------------------------------------------------
    use_reward_weights: bool = field(default=True, metadata={"help": "Reward weights w_t (Eq. 11); False = 'w/o rwt'."})
    use_negative: bool = field(default=True, metadata={"help": "Rejected sequence's Q term; False = 'w/o neg'."})
    use_irl: bool = field(default=True, metadata={"help": "KL and TD terms; False = 'w/o irl'."})
    use_cer: bool = field(default=True, metadata={"help": "CER term (AVA-p); False = 'w/o cer'."})
    pretrained_q: bool = field(default=True, metadata={"help": "Q from the LM head; False = fresh Q head, 'w/o ptq'."})
    # -- the open decisions of docs/method.md ---------------------------------------------------------------
    rescale_reward_weights: bool = field(
        default=True, metadata={"help": "Multiply w_t by the number of valid positions (uniform weights = 1)."}
    )
    weights_apply_to: str = field(
        default="mean",
        metadata={"help": "What w_t multiplies in the TD likelihood: the reward mean, or mean and std.",
                  "choices": list(WEIGHT_TARGETS)},
    )
    log_std_min: float = field(default=-5.0, metadata={"help": "Lower clamp of the predicted log sigma."})
    log_std_max: float = field(default=2.0, metadata={"help": "Upper clamp of the predicted log sigma."})
    q_chunk_size: int | None = field(
        default=None, metadata={"help": "Rows per chunk of the vocabulary-sized Q computation (None: op default)."}
    )
    q_kernel: str = field(
        default="torch",
        metadata={"help": "Q computation: torch, triton (fused kernels) or auto (triton on CUDA when installed). "
                  "triton and auto are opt-in until the kernels have been run on a GPU (docs/performance.md).",
                  "choices": list(Q_KERNELS)},
    )
    # -- data -------------------------------------------------------------------------------------------------
    max_length: int | None = field(
        default=512, metadata={"help": "Maximum prompt + response tokens (each side for encoder-decoders)."}
    )
    too_long: str = field(
        default="truncate",
        metadata={"help": "Responses that do not fit: cut their end (truncate) or drop the row (drop); both counted.",
                  "choices": list(TOO_LONG_POLICIES)},
    )
    padding_free: bool = field(
        default=False,
        metadata={"help": "Causal LMs: pack each batch's sequences end to end in one row with restarting position ids "
                  "instead of padding them (same loss; checked on the backbone at start). Saves the padded "
                  "positions with flash_attention_2/3 or flex_attention; with sdpa or eager, attention spans the "
                  "whole packed row and can cost more than it saves."},
    )
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "As in TRL: processes that tokenise the datasets (datasets.map's num_proc)."}
    )
    chat_template_path: str | None = field(
        default=None,
        metadata={"help": "As in TRL: the chat template for conversational rows, from a Jinja file (.jinja/.j2) or "
                  "the tokenizer at this path or hub id (its template only: no tokens are added)."},
    )
    scoring: str | None = field(
        default=None,
        metadata={"help": "Sequence score for accuracy, saved with the model as the score it ranks by: the last "
                  "response token's weighted reward mean, or their sum (Eq. 19). Default: the CER target (sum for "
                  "the Preference Transformer).", "choices": list(SCORINGS)},
    )
    # -- model loading (TRL's names) -------------------------------------------------------------------------
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments of the backbone's from_pretrained when the trainer loads it from a path "
                  "or hub id (dtype, attn_implementation, revision, ...)."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run model and tokenizer code from the hub repository (off: only transformers')."}
    )
    # -- TrainingArguments defaults that suit this trainer ----------------------------------------------------
    output_dir: str | None = field(default="outputs/avalign", metadata={"help": "Where checkpoints and the model go."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Initial AdamW learning rate."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every TQR parameter takes part in the loss, so DDP need not search."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator needs the tokenised columns."}
    )

    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + ["model_init_kwargs"]

    def __post_init__(self) -> None:
        if self.scoring is None:
            self.scoring = self.cer_target
        for name, allowed in (
            ("objective", OBJECTIVES),
            ("cer_form", CER_FORMS),
            ("reduction", REDUCTIONS),
            ("weights_apply_to", WEIGHT_TARGETS),
            ("too_long", TOO_LONG_POLICIES),
            ("scoring", SCORINGS),
            ("cer_target", SCORINGS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"unknown {name} '{getattr(self, name)}'; expected one of {list(allowed)}")
        for name, allowed, check in OPTION_RANGES:
            if not check(getattr(self, name)):
                raise ConfigError(f"{name} must be {allowed}, got {getattr(self, name)}")
        if self.objective == "preftrans":
            if not self.use_reward_weights:
                raise ConfigError("objective preftrans needs use_reward_weights=True (its weighted return is the model)")
            # Its return is sum_t w_t r_t with weights summing to 1, scored as the "sum"; Q takes no part, so an
            # untied LM head gets no gradient and DDP must allow unused parameters.
            self.rescale_reward_weights, self.scoring, self.ddp_find_unused_parameters = False, "sum", True
        self.tqr_config()  # validates the model-side options early
        super().__post_init__()

    def tqr_config(self) -> TQRConfig:
        """The model-side part of this config (saved with the model as tqr_config.json)."""
        return TQRConfig(**{f.name: getattr(self, f.name) for f in fields(TQRConfig)})
