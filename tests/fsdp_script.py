"""Run under torchrun by tests/test_distributed.py: one AVA-d forward and backward of a TQR model sharded with FSDP2
(torch's fully_shard, as accelerate's fsdp.yaml applies it) on 2 CPU processes, against the unsharded model.

accelerate does not use FSDP on CPU, so the sharding is applied here the way its transformer-based wrap does: each
decoder layer (the backbone's _no_split_modules), then the root. With ``--separate-head`` the LM head (untied) is
its own FSDP unit too, so its weight is whole only inside the head's own hooks."""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from avalign import TQRModel
from avalign.data.collator import TQRCollator
from avalign.data.synthetic import synthetic_datasets
from avalign.data.tokenize import tokenize_dataset
from avalign.losses import ava_d_objective, sequence_terms

sys.path.insert(0, os.path.dirname(__file__))
from conftest import tiny_backbone, untied  # noqa: E402


def backbone(tokenizer, separate_head: bool):
    model = tiny_backbone("llama", tokenizer)
    return untied(model) if separate_head else model  # a tied weight cannot sit in two FSDP units


def loss_of(model: TQRModel, batch: dict) -> torch.Tensor:
    out = model(**batch)
    terms = sequence_terms(out.q_values, out.reward_mean, out.reward_log_std, out.reward_weights, out.mask, gamma=1.0)
    return ava_d_objective(terms, beta=1.0, lam=1.0).loss  # a mean over sequences


def main(out_dir: str, separate_head: bool) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    train, _, task = synthetic_datasets("demonstration", num_train=8, num_eval=2)
    tokenizer = task.tokenizer()
    rows, _ = tokenize_dataset(train, tokenizer, max_length=None)
    batch = TQRCollator(tokenizer.pad_token_id)([rows[i] for i in range(2 * world)])
    batch.pop("is_preference")

    reference = TQRModel(backbone(tokenizer, separate_head))
    torch.nn.init.normal_(reference.reward_head.weight, std=0.1)  # nonzero rewards, so every head gets a gradient
    sharded = TQRModel(backbone(tokenizer, separate_head))
    sharded.load_state_dict(reference.state_dict())
    loss_of(reference, batch).backward()  # all rows on one process

    for layer in sharded.backbone.model.layers:
        fully_shard(layer)
    if separate_head:
        fully_shard(sharded.backbone.lm_head)
    fully_shard(sharded)
    mine = {name: value[2 * rank : 2 * rank + 2] for name, value in batch.items()}
    loss_of(sharded, mine).backward()  # FSDP averages the ranks' gradients: the mean over all rows

    worst = {}
    for (name, expected), (_, param) in zip(reference.named_parameters(), sharded.named_parameters()):
        grad = param.grad.full_tensor()
        worst[name] = ((grad - expected.grad).abs().max() / expected.grad.abs().max()).item()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"world_size": world, "relative_grad_error": worst}, f)
    dist.barrier()
    # Leave without running gloo's and FSDP's C++ destructors: at interpreter exit they sometimes abort
    # ("terminate called without an active exception", about 1 run in 6 here) after the work is done.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], "--separate-head" in sys.argv[2:])
