"""Load an AVA reward model saved by avalign with transformers + safetensors only (avalign not installed).

avalign copies this file into every model directory it saves, as ``ava_reward_model.py``; it is uploaded with the
model. Causal-LM backbones only; one (prompt, response) at a time, without batching.

    from ava_reward_model import load_ava_reward_model
    model = load_ava_reward_model("path/or/hub-id")       # a hub id needs huggingface_hub (a transformers dependency)
    out = model.score("Why is the sky blue?", " Rayleigh scattering.")
    out["score"], out["last"], out["sum"], out["tokens"], out["token_rewards"], out["token_mean"], out["token_std"]

What a directory holds: the backbone in its own Hugging Face format, ``tqr_config.json`` (the heads' options) and
``tqr_heads.safetensors``: ``reward_head`` (Linear hidden -> 2: reward mean mu_t and log sigma_t, clamped to
[log_std_min, log_std_max]) and ``reward_weights.query`` / ``reward_weights.key`` (one attention layer whose column
means over the response positions are the weights w_t, times the number of positions when rescale_reward_weights).
The reward of response token t (EOS included) is read from the hidden state that has seen it. ``last`` is
w_T mu_T at the last token, ``sum`` the sum of w_t mu_t (Eq. 19), ``score`` the one of them the model was trained
to rank by (``scoring`` in tqr_config.json; what `avalign evaluate` ranks by), and ``token_rewards`` w_t mu_t. Heads run in float32 (a bf16 model scores within bf16 rounding of avalign's scores).
"""

from __future__ import annotations

import json
import math
import os

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


class StandaloneAVARewardModel:
    def __init__(self, directory: str):
        with open(os.path.join(directory, "tqr_config.json")) as handle:
            self.config = json.load(handle)
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.backbone = AutoModelForCausalLM.from_pretrained(directory).eval()
        self.heads = {k: v.float() for k, v in load_file(os.path.join(directory, "tqr_heads.safetensors")).items()}

    def _linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x @ self.heads[f"{name}.weight"].T + self.heads[f"{name}.bias"]

    @torch.no_grad()
    def score(self, prompt: str, response: str) -> dict:
        tokenizer = self.tokenizer
        prompt_ids = tokenizer(prompt)["input_ids"] or [tokenizer.bos_token_id or tokenizer.eos_token_id]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt_ids + response_ids])
        hidden = self.backbone.base_model(input_ids=ids).last_hidden_state[0].float()
        seen = hidden[len(prompt_ids):]  # the state after each response token
        reward = self._linear("reward_head", seen)
        mean, log_std = reward[:, 0], reward[:, 1].clamp(self.config["log_std_min"], self.config["log_std_max"])
        if self.config["use_reward_weights"]:
            queries, keys = self._linear("reward_weights.query", seen), self._linear("reward_weights.key", seen)
            weights = (queries @ keys.T / math.sqrt(queries.shape[-1])).softmax(-1).mean(0)
            if self.config["rescale_reward_weights"]:
                weights = weights * len(response_ids)
        else:
            weights = torch.ones_like(mean)
        token_rewards = weights * mean
        last, total = float(token_rewards[-1]), float(token_rewards.sum())
        return {
            "score": total if self.config.get("scoring") == "sum" else last, "last": last, "sum": total,
            "tokens": tokenizer.convert_ids_to_tokens(response_ids), "token_rewards": token_rewards.tolist(),
            "token_mean": mean.tolist(), "token_std": log_std.exp().tolist(), "token_weight": weights.tolist(),
        }


def load_ava_reward_model(path: str) -> StandaloneAVARewardModel:
    """A local directory, or a hub id (downloaded with huggingface_hub.snapshot_download)."""
    if not os.path.isdir(path):
        from huggingface_hub import snapshot_download

        path = snapshot_download(path)
    return StandaloneAVARewardModel(path)
