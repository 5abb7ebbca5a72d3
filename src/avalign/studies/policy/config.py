"""The policy study's systems and tables, its configuration (a YAML preset) and the keys of its cache and cells."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ...errors import ConfigError
from ..reward_modeling import BackboneSpec, DatasetSpec, TrainingSettings, load_yaml


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
        from ...rl import PPOConfig

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
