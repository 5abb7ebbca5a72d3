"""TRL's data conventions: implicit-prompt preference rows, chat_template_path, dataset config and split flags."""

import datasets
import pytest
import torch

from avalign import AVAConfig, AVATrainer
from avalign.data import load_dataset
from avalign.errors import DataError
from avalign.modeling import TQRModel
from conftest import tiny_backbone


def _trainer(tmp_path, tokenizer, rows, **options):
    torch.manual_seed(0)
    args = AVAConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=True, max_length=64,
                     **options)
    return AVATrainer(TQRModel(tiny_backbone("gpt2", tokenizer)), args=args, train_dataset=rows,
                      processing_class=tokenizer)


def test_implicit_prompt_rows_train_as_the_explicit_rows(tmp_path, synthetic, tokenizer):
    pairs = synthetic[0].select_columns(["prompt", "chosen", "rejected"])
    # TRL's extraction takes the longest common prefix of characters (less a final space): the rows where the two
    # responses' first letters differ, so that the prefix is exactly the prompt
    explicit = pairs.filter(lambda row: row["chosen"][1] != row["rejected"][1]).select(range(6))
    implicit = datasets.Dataset.from_dict({side: [p + r for p, r in zip(explicit["prompt"], explicit[side])]
                                           for side in ("chosen", "rejected")})
    expected = _trainer(tmp_path / "e", tokenizer, explicit).train_dataset
    got = _trainer(tmp_path / "i", tokenizer, implicit).train_dataset
    assert got.to_list() == expected.to_list()


def test_chat_template_path_sets_the_template(tmp_path, synthetic, tokenizer):
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }} {% endfor %}")
    pairs = synthetic[0].select(range(4))
    rows = datasets.Dataset.from_dict({
        "prompt": [[{"role": "user", "content": p}] for p in pairs["prompt"]],
        "chosen": [[{"role": "assistant", "content": c.strip()}] for c in pairs["chosen"]],
        "rejected": [[{"role": "assistant", "content": r.strip()}] for r in pairs["rejected"]],
    })
    bare = tokenizer.__class__.from_pretrained(_saved(tokenizer, tmp_path / "tok"))
    bare.chat_template = None
    with pytest.raises(DataError, match="chat template"):
        _trainer(tmp_path / "a", bare, rows)
    trainer = _trainer(tmp_path / "b", bare, rows, chat_template_path=str(template))
    first = trainer.train_dataset[0]
    assert first["prompt_ids"] == bare(pairs["prompt"][0] + " ")["input_ids"]  # the template's rendering
    assert first["chosen_ids"][:-1] == bare(pairs["chosen"][0].strip(), add_special_tokens=False)["input_ids"]


def _saved(tokenizer, path):
    tokenizer.save_pretrained(str(path))
    return str(path)


def test_named_splits_of_a_saved_dataset(tmp_path, synthetic):
    pairs = synthetic[0].select_columns(["prompt", "chosen", "rejected"])
    datasets.DatasetDict({"tr": pairs.select(range(40)), "held": pairs.select(range(40, 52)),
                          "test": pairs.select(range(52, 64))}).save_to_disk(str(tmp_path / "saved"))
    loaded = load_dataset(str(tmp_path / "saved"), train_split="tr", test_split="held", clean=False)
    assert (len(loaded.train), len(loaded.eval)) == (40, 12)
    assert loaded.eval["prompt"] == pairs["prompt"][40:52]
    with pytest.raises(DataError, match=r"no split 'dev'; splits: \['tr', 'held', 'test'\]"):
        load_dataset(str(tmp_path / "saved"), train_split="tr", test_split="dev")
