"""Per-position quantities AVA needs from the vocabulary, without a full [batch, length, vocab] tensor.

Eq. 12 (pretrained Q): Q(s, a) = log softmax_a(alpha * pi(. | s)), pi = softmax(logits).
Only the taken action's Q enters the objectives, so the op returns Q(s_i, a_i) for N gathered positions.
"""

from __future__ import annotations

import torch


def pretrained_q_values(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    actions: torch.Tensor,
    alpha: float,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Q(s_i, a_i) = alpha * pi(a_i | s_i) - logsumexp_a(alpha * pi(a | s_i)) for hidden [N, H], weight [V, H], actions [N].

    Returns float32 [N]. (Naive reference version; to be replaced by the chunked op.)
    """
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    probs = logits.softmax(-1)
    scaled = alpha * probs
    return scaled.gather(-1, actions[:, None]).squeeze(-1) - scaled.logsumexp(-1)
