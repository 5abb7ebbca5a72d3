"""`avalign score`: scored rows (AVA and Bradley-Terry), BT prefix rewards, streaming, normalisation, reports."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from avalign.cli import main
from avalign.data.formats import Record
from avalign.evaluation.scoring import scored_rows, token_texts
from avalign.modeling import TQRModel
from avalign.reward_model import AVARewardModel, BTRewardModel, NORMALIZATION_NAME
from conftest import tiny_backbone


@pytest.fixture(scope="module")
def ava_dir(tmp_path_factory, tokenizer):
    """A saved AVA model with random heads (the tests check wiring, not quality; zero heads would score all 0)."""
    directory = tmp_path_factory.mktemp("ava")
    torch.manual_seed(0)
    model = TQRModel(tiny_backbone("gpt2", tokenizer))
    torch.nn.init.normal_(model.reward_head.weight, std=0.5)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def bt_dir(tmp_path_factory, tokenizer):
    directory = tmp_path_factory.mktemp("bt")
    tiny_backbone("gpt2", tokenizer).save_pretrained(str(directory))
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(str(directory), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _pairs(synthetic, n=6):
    return [{"id": i, "prompt": p, "chosen": c, "rejected": r}
            for i, (p, c, r) in enumerate(zip(*(synthetic[1][k][:n] for k in ("prompt", "chosen", "rejected"))))]


def test_score_ava_pairs_and_demonstrations(ava_dir, synthetic, tokenizer, tmp_path):
    pairs = _pairs(synthetic)
    source, out = _write(tmp_path / "pairs.jsonl", pairs), tmp_path / "out.jsonl"
    assert main(["score", "--model_name_or_path", str(ava_dir), "--dataset_name", str(source),
                 "--output_file", str(out), "--batch_size", "4"]) == 0
    rows = _read(out)
    assert [{k: row[k] for k in pairs[0]} for row in rows] == pairs  # the input comes back, in order
    scorer = AVARewardModel.from_pretrained(str(ava_dir))
    chosen, rejected = scorer.pair_scores(synthetic[1].select(range(len(pairs))))  # what `evaluate` ranks by
    assert [row["chosen_score"] for row in rows] == pytest.approx(chosen["last"], abs=1e-5)
    assert [row["rejected_score"] for row in rows] == pytest.approx(rejected["last"], abs=1e-5)
    for row, pair in zip(rows, pairs):
        for side in ("chosen", "rejected"):
            words = pair[side].split()
            assert [t.strip() for t in row[f"{side}_tokens"]] == words + [tokenizer.eos_token]
            products = np.multiply(row[f"{side}_token_weight"], row[f"{side}_token_mean"])
            assert row[f"{side}_token_rewards"] == pytest.approx(products.tolist(), abs=1e-6)  # w_t mu_t
            assert row[f"{side}_token_rewards"][-1] == pytest.approx(row[f"{side}_score"], abs=1e-5)  # 'last'
            assert min(row[f"{side}_token_std"]) > 0
    demos = _write(tmp_path / "demos.jsonl", [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs])
    assert main(["score", "--model_name_or_path", str(ava_dir), "--dataset_name", str(demos),
                 "--output_file", str(out), "--scoring", "sum"]) == 0
    for row, pair_row in zip(_read(out), rows):
        assert row["token_rewards"] == pytest.approx(pair_row["chosen_token_rewards"], abs=1e-5)
        assert row["score"] == pytest.approx(sum(row["token_rewards"]), abs=1e-4)  # Eq. 19's sum


def test_score_bt_with_prefix_rewards_and_implicit_prompts(bt_dir, synthetic, tmp_path, capsys):
    """Implicit-prompt transcripts score as the explicit rows they stand for; prefix rewards sum to the score minus
    the prompt's score."""
    explicit = [{"prompt": f"\n\nHuman: {p}\n\nAssistant:", "chosen": c, "rejected": r}
                for p, c, r in (( row["prompt"], row["chosen"], row["rejected"]) for row in _pairs(synthetic, 4))]
    implicit = [{"chosen": row["prompt"] + row["chosen"], "rejected": row["prompt"] + row["rejected"]} for row in explicit]
    outputs = []
    for name, rows in (("explicit", explicit), ("implicit", implicit)):
        out = tmp_path / f"{name}.out.jsonl"
        assert main(["score", "--model_name_or_path", str(bt_dir), "--dataset_name",
                     str(_write(tmp_path / f"{name}.jsonl", rows)), "--output_file", str(out),
                     "--bt_prefix_rewards"]) == 0
        outputs.append(_read(out))
    scorer = BTRewardModel.from_pretrained(str(bt_dir))
    prompt_scores = scorer.model(**scorer.tokenizer([explicit[0]["prompt"]], return_tensors="pt")).logits[0, 0].item()
    for a, b in zip(*outputs):
        assert a["chosen_score"] == pytest.approx(b["chosen_score"], abs=1e-5)
        assert a["rejected_token_rewards"] == pytest.approx(b["rejected_token_rewards"], abs=1e-5)
    first = outputs[0][0]
    assert sum(first["chosen_token_rewards"]) == pytest.approx(first["chosen_score"] - prompt_scores, abs=1e-4)
    assert "chosen_token_std" not in first


def test_score_names_the_bad_row(ava_dir, tmp_path, capsys):
    source = _write(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "bis"}, {"prompt": "b", "completion": 3}])
    assert main(["score", "--model_name_or_path", str(ava_dir), "--dataset_name", str(source),
                 "--output_file", str(tmp_path / "o.jsonl")]) == 2
    assert f"file {source}, row 2, field 'completion'" in capsys.readouterr().err


def test_scored_rows_stream(ava_dir, synthetic):
    """Rows come out batch by batch: the first batch is written before later input is even read."""
    scorer = AVARewardModel.from_pretrained(str(ava_dir), batch_size=2)

    def records():
        for i, row in enumerate(_pairs(synthetic, 2)):
            yield Record("mem", i + 1, row)
        raise AssertionError("read past the first batch")

    rows = scored_rows(scorer, records())
    assert [row["id"] for row in (next(rows), next(rows))] == [0, 1]


def test_compute_normalization_stores_mean_and_std(ava_dir, synthetic, tmp_path):
    source, out = _write(tmp_path / "pairs.jsonl", _pairs(synthetic)), tmp_path / "out.jsonl"
    target = tmp_path / "model"
    target.mkdir()
    for file in ava_dir.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    assert main(["score", "--model_name_or_path", str(target), "--dataset_name", str(source), "--output_file",
                 str(out), "--compute_normalization"]) == 0
    scores = [row[k] for row in _read(out) for k in ("chosen_score", "rejected_score")]
    stored = json.loads((target / NORMALIZATION_NAME).read_text())
    assert stored["mean"] == pytest.approx(np.mean(scores)) and stored["std"] == pytest.approx(np.std(scores, ddof=1))
    assert stored["responses"] == len(scores) and stored["scoring"] == "last"


def test_token_texts_keep_the_spaces_a_whole_decode_has(tokenizer):
    ids = tokenizer(" bis ter gov", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert "".join(token_texts(tokenizer, ids)) == tokenizer.decode(ids)


def test_training_stores_the_normalisation_score_measures(tmp_path, capsys):
    """`avalign train` measures it on its evaluation pairs; `avalign score --compute_normalization` on the same
    pairs (streamed, a running mean and std) stores the same numbers."""
    out = tmp_path / "run"
    assert main(["train", "--output_dir", str(out), "--max_steps", "2", "--synthetic_train_size", "32",
                 "--synthetic_eval_size", "24", "--disable_tqdm", "true", "--use_cpu", "true"]) == 0
    trained = json.loads((out / NORMALIZATION_NAME).read_text())
    (out / NORMALIZATION_NAME).unlink()
    assert main(["score", "--model_name_or_path", str(out), "--dataset_name", "synthetic", "--max_rows", "24",
                 "--compute_normalization"]) == 0
    scored = json.loads((out / NORMALIZATION_NAME).read_text())
    assert trained["responses"] == scored["responses"] == 48 and trained["scoring"] == scored["scoring"] == "sum"  # the default
    assert trained["mean"] == pytest.approx(scored["mean"], abs=1e-6)
    assert trained["std"] == pytest.approx(scored["std"], rel=1e-6)
