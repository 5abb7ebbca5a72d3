"""`avalign ppo`: PPO on a causal LM with per-token rewards from an AVA reward model (dense, sum or last, optionally
pessimistic), a Bradley-Terry model or an ensemble of reward models (last) or, on the synthetic task, the gold
reward. The last stdout line is one JSON object (the last update's statistics and the output directory)."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, field

from ..data.synthetic import SYNTHETIC
from ..errors import ConfigError
from ..reward_model import ENSEMBLES
from ..rl.ppo import PPOConfig
from ..rl.rewards import REWARDS
from .bon import ENSEMBLE_HELP, ENSEMBLE_K_HELP, KAPPA_HELP
from .parsing import dataclass_parser, parse_dataclasses

GOLD = "gold"


@dataclass
class PPOArguments:
    """Where the policy, the rewards and the prompts come from (the rest is PPOConfig)."""

    policy: str = field(metadata={"help": "A Hugging Face causal LM directory (or hub id), or a TQR model directory "
                                  "saved by `avalign train` with the pretrained Q (its backbone is the policy)."})
    reward_model: list[str] = field(metadata={"help": "A reward model directory (AVA/TQR or Bradley-Terry) sharing "
                                              "the policy's tokenizer, several with --ensemble, or 'gold': the "
                                              "synthetic task's gold reward."})
    reward: str = field(default="dense", metadata={"help": "dense: a reward at every token (AVA: w*mu - kappa*sigma; "
                                                   "Bradley-Terry: prefix differences); sum: their total on the last "
                                                   "token; last: the last token's reward (Bradley-Terry models and "
                                                   "ensembles: their score).",
                                                   "choices": list(REWARDS)})
    kappa: float = field(default=0.0, metadata={"help": KAPPA_HELP})
    ensemble: str | None = field(default=None, metadata={"help": ENSEMBLE_HELP + " Needs --reward last.",
                                                         "choices": list(ENSEMBLES)})
    ensemble_k: float = field(default=1.0, metadata={"help": ENSEMBLE_K_HELP})
    prompts: str = field(default=SYNTHETIC, metadata={"help": "'synthetic' (the embedded task's training prompts; "
                                                      "its eval prompts stay unseen) or a .jsonl/.json/.csv/.parquet "
                                                      "file with a prompt column."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column of the prompts in a prompts file."})
    num_prompts: int = field(default=2000, metadata={"help": "Synthetic prompts to draw, or rows read from a file."})

    def __post_init__(self) -> None:
        if isinstance(self.reward_model, str):  # one path in a --config YAML file
            self.reward_model = [self.reward_model]


def load_prompts(args: PPOArguments) -> list[str]:
    if args.prompts == SYNTHETIC:
        from ..data.synthetic import SyntheticTask

        return [row["prompt"] for row in SyntheticTask().demonstration_rows(args.num_prompts, seed=1)]
    from ..data.loading import read_file
    from ..generation import record_text

    return [record_text(record, args.prompt_column) for record in read_file(args.prompts, max_rows=args.num_prompts)]


def reward_sources(args: PPOArguments, tokenizer, device: str):
    """(the reward source PPO optimises, the gold source it logs, or None)."""
    from ..data.synthetic import SyntheticTask
    from ..reward_model import load_reward_models
    from ..rl.rewards import GoldRewards, RewardModelRewards

    gold = None
    if args.prompts == SYNTHETIC:
        with contextlib.suppress(ConfigError):  # a policy with another tokenizer: no gold reward to log
            gold = GoldRewards(SyntheticTask(), tokenizer)
    if args.reward_model != [GOLD]:
        reward_model = load_reward_models(args.reward_model, args.ensemble, args.ensemble_k, kappa=args.kappa,
                                          device=device)
        return RewardModelRewards(reward_model, tokenizer, reward=args.reward), gold
    if args.ensemble is not None:
        raise ConfigError("--ensemble combines reward models; --reward_model gold is the gold reward alone")
    if gold is None:
        raise ConfigError("--reward_model gold needs --prompts synthetic and a policy with the synthetic task's "
                          "tokenizer")
    if args.kappa:
        raise ConfigError("--kappa needs an AVA reward model (the gold reward has no sigma)")
    return GoldRewards(SyntheticTask(), tokenizer, reward=args.reward), gold


def run(args: PPOArguments, config: PPOConfig) -> dict:
    from ..generation import BoltzmannHead, load_policy
    from ..rl.ppo import PPOTrainer

    if config.output_dir is None:
        raise ConfigError("--output_dir is required: the trained policy is saved there")
    policy, tokenizer = load_policy(args.policy, device=config.device)
    if isinstance(policy.get_output_embeddings(), BoltzmannHead):
        raise ConfigError(f"'{args.policy}' is a TQR model with a fresh Q head (its policy is softmax(beta * Q)); PPO "
                          "trains and saves a plain LM head, so give it a plain LM or a pretrained-Q TQR model")
    rewards, gold = reward_sources(args, tokenizer, config.device)
    trainer = PPOTrainer(policy, tokenizer, load_prompts(args), rewards, config, gold=gold)
    history = trainer.train()
    trainer.save(config.output_dir, card={"policy": args.policy, "reward_model": " ".join(args.reward_model),
                                          "reward": args.reward, "kappa": args.kappa, "ensemble": args.ensemble,
                                          "ensemble_k": args.ensemble_k, "prompts": args.prompts})
    return {**history[-1], "output_dir": config.output_dir}


def main(argv: list[str]) -> int:
    args, config = parse_dataclasses(dataclass_parser((PPOArguments, PPOConfig), prog="avalign ppo"), argv)
    print(json.dumps(run(args, config), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
