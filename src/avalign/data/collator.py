"""Batching for the TQR model: right padding, completion masks, chosen and rejected in one forward.

A preference batch of B rows becomes 2B sequences, chosen first (rows 0..B-1) then rejected (B..2B-1), so the
model runs one concatenated forward. Causal LMs get prompt + response in ``input_ids``; encoder-decoders get the
prompt in ``input_ids`` and [decoder start] + response in ``decoder_input_ids``. ``completion_mask`` is 1 on
response tokens of the action sequence. ``is_preference`` tells the loss whether the rows come in pairs.

Padding-free batches (``padding_free=True``, causal LMs only) put the same sequences, in the same order, end to end
in one row with ``position_ids`` restarting at 0 for each; there is no ``attention_mask``, so the backbone keeps the
sequences apart from the position ids (transformers' packed-sequence masks; varlen kernels with flash attention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


PREFERENCE_KEYS = ("chosen", "rejected")


def pad_right(sequences: list[list[int]], pad_value: int) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [pad_value] * (width - len(s)) for s in sequences], dtype=torch.long)


def collate_sequences(
    features: list[dict],
    response_keys: tuple[str, ...],
    pad_token_id: int,
    is_encoder_decoder: bool = False,
    decoder_start_token_id: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pure function from tokenised rows (``prompt_ids``, ``<key>_ids``) to padded tensors, one block of rows per
    response key in the order given."""
    prompts, responses = [], []
    for key in response_keys:
        for feature in features:
            prompts.append(list(feature["prompt_ids"]))
            responses.append(list(feature[f"{key}_ids"]))
    if is_encoder_decoder:
        sequences = [[decoder_start_token_id] + r for r in responses]
        completion = [[0] + [1] * len(r) for r in responses]
        batch = {
            "input_ids": pad_right(prompts, pad_token_id),
            "attention_mask": pad_right([[1] * len(p) for p in prompts], 0),
            "decoder_input_ids": pad_right(sequences, pad_token_id),
            "decoder_attention_mask": pad_right([[1] * len(s) for s in sequences], 0),
        }
    else:
        sequences = [p + r for p, r in zip(prompts, responses)]
        completion = [[0] * len(p) + [1] * len(r) for p, r in zip(prompts, responses)]
        batch = {
            "input_ids": pad_right(sequences, pad_token_id),
            "attention_mask": pad_right([[1] * len(s) for s in sequences], 0),
        }
    batch["completion_mask"] = pad_right(completion, 0)
    batch["is_preference"] = response_keys == PREFERENCE_KEYS
    return batch


def collate_packed(features: list[dict], response_keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Padding-free counterpart of ``collate_sequences`` for causal LMs: one [1, total] row, no padding."""
    input_ids, position_ids, completion = [], [], []
    for key in response_keys:
        for feature in features:
            prompt, response = list(feature["prompt_ids"]), list(feature[f"{key}_ids"])
            input_ids += prompt + response
            position_ids += range(len(prompt) + len(response))
            completion += [0] * len(prompt) + [1] * len(response)
    return {
        "input_ids": torch.tensor([input_ids], dtype=torch.long),
        "position_ids": torch.tensor([position_ids], dtype=torch.long),
        "completion_mask": torch.tensor([completion], dtype=torch.long),
        "is_preference": response_keys == PREFERENCE_KEYS,
    }


def unpack_index(position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, valid), both [S, L_max]: sequence s, position j of a packed [1, total] row is column index[s, j]
    wherever valid[s, j]; elsewhere index is 0 (a placeholder the masks exclude)."""
    positions = position_ids.reshape(-1)
    starts = (positions == 0).nonzero().squeeze(1)
    lengths = torch.diff(starts, append=starts.new_tensor([positions.numel()]))
    offsets = torch.arange(int(lengths.max()), device=positions.device)
    valid = offsets[None, :] < lengths[:, None]
    return (starts[:, None] + offsets[None, :]) * valid, valid


@dataclass
class TQRCollator:
    """The trainer's data collator: ``collate_sequences`` (or ``collate_packed``) with the tokenizer's and
    backbone's settings bound. Rows with ``rejected_ids`` are pairs; otherwise the single response column is
    ``completion_ids``."""

    pad_token_id: int
    is_encoder_decoder: bool = False
    decoder_start_token_id: int | None = None
    padding_free: bool = False

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        keys = PREFERENCE_KEYS if "rejected_ids" in features[0] else ("completion",)
        if self.padding_free:
            return collate_packed(features, keys)
        return collate_sequences(features, keys, self.pad_token_id, self.is_encoder_decoder, self.decoder_start_token_id)
