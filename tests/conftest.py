import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# CI runs a fixed sequence of examples, so a green run stays green; local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton reads this when a kernel is decorated (first import): without a GPU, test_kernels runs them interpreted.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def synthetic():
    """(train pairs, eval pairs, task) of a small synthetic task instance."""
    from avalign.data.synthetic import synthetic_datasets

    return synthetic_datasets("preference", num_train=64, num_eval=32)


@pytest.fixture(scope="session")
def tokenizer(synthetic):
    return synthetic[2].tokenizer()


def tiny_backbone(arch, tokenizer, seed=0):
    from avalign.backbones import build_backbone

    return build_backbone(
        arch, len(tokenizer), hidden_size=32, num_layers=2, num_heads=2, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, seed=seed,
    )


def untied(model):
    """``model`` with its LM head a parameter of its own (tiny_backbone ties it to the embedding)."""
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    return model


def last_json_line(text):
    """The JSON object a command prints last."""
    return json.loads(text.strip().splitlines()[-1])


def reference_gold_return(task, prompt, completion):
    """The gold return written from the synthetic task's tables: the sum over the completion's words w of
    base[w] + interaction[previous word, w], starting from the prompt's last word."""
    ids = {word: i for i, word in enumerate(task.words)}
    previous, total = ids[prompt.split()[-1]], 0.0
    for word in completion.split():
        total += task.base_reward[ids[word]] + task.interaction[previous, ids[word]]
        previous = ids[word]
    return float(total)
