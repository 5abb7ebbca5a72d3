"""PPO for language models in one file (CleanRL style), for AVA's dense per-token rewards.

One update: sample a batch of prompts; generate responses with the policy; score every response token with a
token-reward source (``avalign.rl.rewards``) and subtract the KL penalty to the frozen initial policy at every token;
estimate advantages with GAE; then run ``ppo_epochs`` passes of clipped policy and value losses over minibatches.
docs/ppo.md gives the equations and where each one lives here.

Tensors of a rollout are [B, R]: column t is response token t (the action), right-padded after the response's end
(its first EOS, or ``max_new_tokens``); ``mask`` is true on response tokens.

The value function is a linear head on the policy's last hidden states (a shared trunk, as in CleanRL's Atari PPO)
rather than a second copy of the network: one forward pass gives logits and values, and memory holds two networks
(policy and frozen reference) instead of three. The price is that value gradients also move the policy's trunk,
which ``vf_coef`` scales.
"""

from __future__ import annotations

import copy
import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..data.tokenize import ensure_pad_token, prompt_ids
from ..errors import ConfigError, TrainingDivergedError

LOG_FILE = "ppo_log.jsonl"


@dataclass
class PPOConfig:
    """Every PPO option; one line of help each (it is the ``avalign ppo --help`` text)."""

    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate (policy and value head)."})
    batch_size: int = field(default=16, metadata={"help": "Episodes (prompt + sampled response) per PPO update."})
    mini_batch_size: int = field(default=4, metadata={"help": "Episodes per gradient step; divides batch_size."})
    ppo_epochs: int = field(default=4, metadata={"help": "Passes over each batch of episodes."})
    clip_range: float = field(default=0.2, metadata={"help": "epsilon of the clipped policy ratio."})
    clip_range_value: float = field(default=0.2, metadata={"help": "How far a value may move from its rollout value "
                                                           "before its loss is clipped."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss in the total loss."})
    gamma: float = field(default=1.0, metadata={"help": "Discount over response tokens."})
    lam: float = field(default=0.95, metadata={"help": "lambda of GAE (bias-variance trade-off of advantages)."})
    kl_coef: float = field(default=0.05, metadata={"help": "Per-token penalty on log pi(a) - log pi_init(a) (the k1 "
                                                   "KL estimator) to the frozen initial policy."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Scale the per-token rewards of each batch to unit "
                                                          "variance (mean kept) before GAE."})
    whiten_advantages: bool = field(default=True, metadata={"help": "Normalise advantages per batch (zero mean, "
                                                            "unit variance)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    max_prompt_length: int = field(default=128, metadata={"help": "Prompt tokens kept (from the end)."})
    max_new_tokens: int = field(default=32, metadata={"help": "Longest sampled response, in tokens."})
    min_new_tokens: int = field(default=1, metadata={"help": "Shortest response before EOS: EOS is masked at the "
                                                     "first positions, in sampling and in every log-probability, so "
                                                     "the policy is the LM conditioned on a non-empty response. "
                                                     "Reward models never see an empty response in training (it is "
                                                     "a data error), so their score of one is an extrapolation PPO "
                                                     "would exploit. 0: no constraint."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature; log-probabilities use the same "
                                                      "temperature, so it is part of the policy."})
    total_episodes: int = field(default=1024, metadata={"help": "Episodes in the whole run; updates = total_episodes "
                                                        "// batch_size."})
    seed: int = field(default=0, metadata={"help": "Seed of prompt order, sampling and minibatches."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the policy, tokenizer, model card and "
                                                           f"{LOG_FILE} go (None: keep nothing on disk)."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar."})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda when available)."})

    def __post_init__(self) -> None:
        for name in ("learning_rate", "batch_size", "mini_batch_size", "ppo_epochs", "max_new_tokens",
                     "max_prompt_length", "temperature", "total_episodes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batch_size % self.mini_batch_size:
            raise ConfigError(f"mini_batch_size ({self.mini_batch_size}) must divide batch_size ({self.batch_size})")
        if self.total_episodes < self.batch_size:
            raise ConfigError(f"total_episodes ({self.total_episodes}) is less than one batch ({self.batch_size})")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ConfigError(f"gamma and lam must lie in [0, 1], got {self.gamma} and {self.lam}")
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")


# -- the maths: pure functions of [B, R] tensors ---------------------------------------------------------------------

def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over valid positions; ``shift_mean=False`` only rescales (keeps the mean)."""
    mean = masked_mean(values, mask)
    whitened = (values - mean) * torch.rsqrt(masked_mean((values - mean) ** 2, mask) + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


def kl_penalized_rewards(token_rewards: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = reward model's r_t - kl_coef * (log pi(a_t) - log pi_init(a_t)) at every response token (the k1
    estimator: its expectation under pi is KL(pi || pi_init)). Returns (rewards, kl), both zero off ``mask``."""
    kl = (logprobs - ref_logprobs) * mask
    return (token_rewards - kl_coef * kl) * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016): delta_t = r_t + gamma V_{t+1} - V_t,
    A_t = delta_t + gamma lam A_{t+1}; the episode ends after the last response token (V = 0 beyond it).
    ``mask`` must be contiguous from column 0. Returns (advantages, returns = advantages + values)."""
    values, rewards = values * mask, rewards * mask
    next_values = F.pad(values[:, 1:], (0, 1))
    deltas = rewards + gamma * next_values - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = deltas[:, t] + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017, Eq. 7), as a loss: mean of max(-A rho, -A clip(rho, 1 -/+ eps))
    with rho = pi / pi_old per token. Returns (loss, clipfrac: share of tokens where clipping binds, approxkl:
    0.5 mean (log rho)^2)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac, 0.5 * masked_mean(log_ratio**2, mask)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip_range_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 mean of max((V - G)^2, (V_clipped - G)^2), V_clipped = V_old + clip(V - V_old, -c, c).
    Returns (loss, clipfrac)."""
    clipped_values = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
    unclipped_error, clipped_error = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_error, clipped_error), mask)
    return loss, masked_mean((clipped_error > unclipped_error).float(), mask)


# -- the model --------------------------------------------------------------------------------------------------------

def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` uses them, so sampled and recomputed log-probs agree."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class PolicyAndValue(nn.Module):
    """The policy LM and a scalar value head on its last hidden states (zero-initialised: V = 0 at the start)."""

    def __init__(self, policy: PreTrainedModel):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.config.get_text_config().hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids(attention_mask), output_hidden_states=True)
        return out.logits, self.value_head(out.hidden_states[-1]).squeeze(-1).float()


def mask_early_eos(logits: torch.Tensor, min_new_tokens: int, eos_token_id: int) -> torch.Tensor:
    """Logits [B, R, V] of the positions that predict response tokens, with EOS made impossible (the lowest finite
    logit, so that entropies stay finite) at the first ``min_new_tokens`` positions: what ``generate`` samples from
    with ``min_new_tokens``."""
    if min_new_tokens <= 0:
        return logits
    logits = logits.clone()
    logits[:, :min_new_tokens, eos_token_id] = torch.finfo(logits.dtype).min
    return logits


def response_logprobs(logits: torch.Tensor, responses: torch.Tensor, temperature: float) -> torch.Tensor:
    """log pi(a_t) [B, R] of the response tokens, from the logits [B, R, V] of the positions that predict them."""
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, responses[..., None]).squeeze(-1)


def pad_left(sequences: list[list[int]], pad_value: int) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([[pad_value] * (width - len(s)) + s for s in sequences], dtype=torch.long)


def response_mask(responses: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """True up to and including each row's first EOS (every column when there is none)."""
    is_eos = (responses == eos_token_id).long()
    return (is_eos.cumsum(-1) - is_eos) == 0


@dataclass
class Rollout:
    """One batch of episodes; per-token tensors are [B, R] (see the module docstring)."""

    sequences: torch.Tensor  # [B, Lq + R] left-padded prompt + right-padded response
    attention_mask: torch.Tensor  # [B, Lq + R]
    responses: torch.Tensor  # [B, R]
    mask: torch.Tensor  # [B, R] bool
    logprobs: torch.Tensor  # log pi_old(a_t)
    ref_logprobs: torch.Tensor  # log pi_init(a_t)
    values: torch.Tensor  # V_old(s_t)
    token_rewards: torch.Tensor  # the reward source's r_t
    entropy: torch.Tensor  # H(pi_old(. | s_t))
    gold_returns: torch.Tensor | None  # gold return per episode, when a gold source is given


# -- the trainer ------------------------------------------------------------------------------------------------------

class PPOTrainer:
    """PPO on a causal LM ``policy`` with a token-reward source (``avalign.rl.rewards``); ``gold`` (optional) is a
    second source whose returns are only logged, e.g. the synthetic task's gold reward."""

    def __init__(self, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], rewards,
                 config: PPOConfig, *, gold=None):
        if policy.config.is_encoder_decoder:
            raise ConfigError("PPO here supports causal LM policies only (the policy is an encoder-decoder)")
        if not prompts:
            raise ConfigError("no prompts to train on")
        self.config, self.rewards, self.gold = config, rewards, gold
        self.tokenizer = ensure_pad_token(tokenizer)
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.queries = [prompt_ids(self.tokenizer, prompt)[-config.max_prompt_length:] for prompt in prompts]
        # eval(): no dropout, so log-probs at sampling and at training time come from the same policy.
        if config.min_new_tokens > 0:  # the trained policy is the LM conditioned on a non-empty response: its saved
            policy.generation_config.min_new_tokens = config.min_new_tokens  # generation config samples it so
        self.model = PolicyAndValue(policy).to(self.device).eval()
        self.reference = copy.deepcopy(policy).to(self.device).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate, eps=1e-5)
        self.generation_config = GenerationConfig(
            do_sample=True, temperature=config.temperature, top_k=0, top_p=1.0, max_new_tokens=config.max_new_tokens,
            min_new_tokens=config.min_new_tokens, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
        )
        self.history: list[dict] = []
        self._order: list[int] = []

    def _next_queries(self) -> list[list[int]]:
        """The next batch of prompts from a shuffled pass over all of them (reshuffled each pass)."""
        while len(self._order) < self.config.batch_size:
            self._order += torch.randperm(len(self.queries), generator=self.generator).tolist()
        batch, self._order = self._order[: self.config.batch_size], self._order[self.config.batch_size:]
        return [self.queries[i] for i in batch]

    @torch.no_grad()
    def sample(self, queries: list[list[int]]) -> list[list[int]]:
        """Responses of the current policy to prompt ids, each up to and including its first EOS."""
        return self._generate(queries)[1]

    @torch.no_grad()
    def _generate(self, queries: list[list[int]]):
        input_ids = pad_left(queries, self.tokenizer.pad_token_id).to(self.device)
        attention = pad_left([[1] * len(q) for q in queries], 0).to(self.device)
        output = self.model.policy.generate(input_ids=input_ids, attention_mask=attention,
                                            generation_config=self.generation_config)
        responses = output[:, input_ids.shape[1]:]
        mask = response_mask(responses, self.tokenizer.eos_token_id)
        responses = responses.masked_fill(~mask, self.tokenizer.pad_token_id)
        lists = [row[valid].tolist() for row, valid in zip(responses, mask)]
        return (input_ids, attention, responses, mask), lists

    def _policy_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return mask_early_eos(logits, self.config.min_new_tokens, self.tokenizer.eos_token_id)

    @torch.no_grad()
    def rollout(self, queries: list[list[int]]) -> Rollout:
        (input_ids, query_mask, responses, mask), response_lists = self._generate(queries)
        sequences = torch.cat([input_ids, responses], 1)
        attention = torch.cat([query_mask, mask.long()], 1)
        start = input_ids.shape[1] - 1  # the position whose logits predict the first response token
        logits, values = self.model(sequences, attention)
        logits, values = self._policy_logits(logits[:, start:-1]), values[:, start:-1]
        ref_logits = self._policy_logits(self.reference(input_ids=sequences, attention_mask=attention,
                                                        position_ids=position_ids(attention)).logits[:, start:-1])
        log_policy = torch.log_softmax(logits.float() / self.config.temperature, -1)
        entropy = -(log_policy.exp() * log_policy).sum(-1)
        return Rollout(
            sequences, attention, responses, mask,
            logprobs=log_policy.gather(-1, responses[..., None]).squeeze(-1),
            ref_logprobs=response_logprobs(ref_logits, responses, self.config.temperature),
            values=values, token_rewards=self._token_rewards(self.rewards, queries, response_lists, mask),
            entropy=entropy,
            gold_returns=None if self.gold is None else
            self._token_rewards(self.gold, queries, response_lists, mask).sum(-1),
        )

    def _token_rewards(self, source, queries, response_lists, mask) -> torch.Tensor:
        rows = source.token_rewards(queries, response_lists)
        rewards = torch.zeros(mask.shape, dtype=torch.float32)
        for row, values in enumerate(rows):
            rewards[row, : len(values)] = values
        return rewards.to(self.device)

    def step(self, step: int) -> dict:
        """One PPO update (rollout, GAE, ppo_epochs of minibatch steps); returns its logged statistics."""
        config = self.config
        batch = self.rollout(self._next_queries())
        mask = batch.mask.float()
        rewards, kl = kl_penalized_rewards(batch.token_rewards, batch.logprobs, batch.ref_logprobs, mask,
                                           config.kl_coef)
        if config.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, batch.values, mask, config.gamma, config.lam)
        if config.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        start = batch.sequences.shape[1] - batch.responses.shape[1] - 1
        stats = defaultdict(list)
        for _ in range(config.ppo_epochs):
            for idx in torch.randperm(config.batch_size, generator=self.generator).split(config.mini_batch_size):
                logits, values = self.model(batch.sequences[idx], batch.attention_mask[idx])
                logprobs = response_logprobs(self._policy_logits(logits[:, start:-1]), batch.responses[idx],
                                             config.temperature)
                pg_loss, pg_clipfrac, approxkl = clipped_policy_loss(
                    logprobs, batch.logprobs[idx], advantages[idx], mask[idx], config.clip_range)
                vf_loss, vf_clipfrac = clipped_value_loss(
                    values[:, start:-1], batch.values[idx], returns[idx], mask[idx], config.clip_range_value)
                loss = pg_loss + config.vf_coef * vf_loss
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(f"PPO loss became {loss.item()} at step {step} (policy loss "
                                                f"{pg_loss.item()}, value loss {vf_loss.item()})")
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
                self.optimizer.step()
                for name, value in (("policy/loss", pg_loss), ("policy/clipfrac", pg_clipfrac),
                                    ("policy/approxkl", approxkl), ("val/loss", vf_loss),
                                    ("val/clipfrac", vf_clipfrac)):
                    stats[name].append(value.item())
        scores, kl_sum = batch.token_rewards.sum(-1), kl.sum(-1)
        log = {
            "step": step, "episodes": step * config.batch_size,
            "objective/kl": kl_sum.mean().item(),
            "objective/entropy": (batch.entropy * mask).sum(-1).mean().item(),
            "objective/scores": scores.mean().item(),
            "objective/rlhf_reward": (scores - config.kl_coef * kl_sum).mean().item(),
            "val/mean": masked_mean(batch.values, mask).item(),
            "response_length": mask.sum(-1).mean().item(),
            # responses that are EOS alone: the collapse a reward model that prefers them drives PPO to
            "response/empty": ((mask.sum(-1) == 1) & (batch.responses[:, 0] == self.tokenizer.eos_token_id)
                               ).float().mean().item(),
            **{name: sum(values) / len(values) for name, values in stats.items()},
        }
        if batch.gold_returns is not None:
            log["gold/reward"] = batch.gold_returns.mean().item()
        return log

    def train(self) -> list[dict]:
        """All updates; each one's statistics go to ``history``, the progress bar and ``output_dir``/ppo_log.jsonl."""
        num_updates = self.config.total_episodes // self.config.batch_size
        log_path = None
        if self.config.output_dir is not None:
            os.makedirs(self.config.output_dir, exist_ok=True)
            log_path = os.path.join(self.config.output_dir, LOG_FILE)
            open(log_path, "w").close()
        bar = tqdm(range(1, num_updates + 1), desc="ppo", disable=self.config.disable_tqdm)
        for step in bar:
            log = self.step(step)
            self.history.append(log)
            bar.set_postfix({k: round(log[k], 3) for k in ("objective/scores", "objective/kl", "gold/reward")
                             if k in log})
            if log_path is not None:
                with open(log_path, "a") as handle:
                    handle.write(json.dumps(log) + "\n")
        return self.history

    def save(self, output_dir: str, card: dict | None = None) -> None:
        """The policy (Hugging Face format, loadable with AutoModelForCausalLM) and tokenizer, and a model card
        (README.md) with the config, ``card`` (where the policy and rewards came from) and the last statistics."""
        self.model.policy.save_pretrained(output_dir)
        self.tokenizer.save_pretrained(output_dir)
        lines = ["---", "library_name: transformers", "tags: [avalign, ppo, rlhf]", "---", "",
                 "# PPO policy (avalign)", "", "Trained with `avalign ppo` (docs/ppo.md in avalign).", ""]
        lines += [f"- {key}: `{value}`" for key, value in (card or {}).items()]
        lines += ["", "## PPO config", "", "```json", json.dumps(asdict(self.config), indent=2), "```"]
        if self.history:
            lines += ["", "## Last update", "", "```json", json.dumps(self.history[-1], indent=2), "```"]
        with open(os.path.join(output_dir, "README.md"), "w") as handle:
            handle.write("\n".join(lines) + "\n")
