"""Policy optimisation with AVA rewards: token rewards (``rewards``) and PPO (``ppo``); docs/ppo.md."""

from .ppo import PPOConfig, PPOTrainer
from .rewards import AVARewardFunction, GoldRewards, RewardModelFunction, RewardModelRewards

__all__ = ["AVARewardFunction", "GoldRewards", "PPOConfig", "PPOTrainer", "RewardModelFunction", "RewardModelRewards"]
