"""Hub-ready outputs: push_to_hub with the Hub calls stubbed (no network), the model card's metadata, and the
standalone loader that needs no avalign."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard

from avalign import AVAConfig, AVATrainer
from avalign.modeling import TQRModel
from avalign.reward_model import AVARewardModel
from conftest import tiny_backbone


@pytest.fixture()
def trainer(tmp_path, synthetic, tokenizer):
    torch.manual_seed(0)
    model = TQRModel(tiny_backbone("gpt2", tokenizer))
    torch.nn.init.normal_(model.reward_head.weight, std=0.5)  # zero heads would score everything 0
    args = AVAConfig(output_dir=str(tmp_path / "ava-tiny"), max_steps=1, max_length=64, report_to=[], use_cpu=True,
                     disable_tqdm=True, hub_model_id="someone/ava-tiny")
    return AVATrainer(model, args=args, train_dataset=synthetic[0].select(range(8)), processing_class=tokenizer)


@pytest.fixture()
def uploads(monkeypatch):
    """Trainer's Hub calls, stubbed: (repo id, files, folder) of every upload_folder call."""
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls.append((repo_id, sorted(os.listdir(folder_path)), folder_path))
            return SimpleNamespace(done=lambda: True, is_done=lambda: True, cancel=lambda: None)

    monkeypatch.setattr("transformers.trainer.hf_api", lambda: FakeApi())
    return calls


def test_push_to_hub_uploads_the_model_and_its_card(trainer, uploads):
    trainer.push_to_hub(dataset="someone/pairs", license="apache-2.0", tags=["tiny"])
    (repo, files, folder), = uploads
    assert repo == "someone/ava-tiny"
    assert {"README.md", "tqr_heads.safetensors", "tqr_config.json", "config.json", "model.safetensors",
            "ava_reward_model.py", "tokenizer.json"} <= set(files)
    card = ModelCard.load(os.path.join(folder, "README.md"))
    assert card.data.library_name == "avalign" and card.data.license == "apache-2.0"
    assert card.data.datasets == ["someone/pairs"]
    assert {"avalign", "ava", "reward-model", "ava-p", "tiny"} <= set(card.data.tags)
    assert card.data.base_model is None  # a backbone built from a config has no Hub id to name
    assert 'AVARewardModel.from_pretrained("someone/ava-tiny")' in card.text
    assert "eprint    = {2411.09341}" in card.text and "## Training" in card.text


def test_pushes_during_training_upload_whole_models(tmp_path, synthetic, tokenizer, uploads):
    """hub_strategy every_save: each checkpoint's push already holds the heads, their config and the loader."""
    args = AVAConfig(output_dir=str(tmp_path / "run"), max_steps=2, max_length=64, save_strategy="steps", save_steps=1,
                     push_to_hub=True, hub_model_id="someone/run", report_to=[], use_cpu=True, disable_tqdm=True)
    AVATrainer(TQRModel(tiny_backbone("gpt2", tokenizer)), args=args, train_dataset=synthetic[0].select(range(4)),
               processing_class=tokenizer).train()
    assert uploads and all({"tqr_heads.safetensors", "tqr_config.json", "ava_reward_model.py"} <= set(files)
                           for _, files, _ in uploads)


def test_standalone_loader_scores_as_avalign_does_without_avalign(trainer, synthetic, tmp_path):
    trainer.save_model()
    directory = trainer.args.output_dir
    prompts, responses = synthetic[1]["prompt"][:3], synthetic[1]["chosen"][:3]
    script = (
        "import json, sys; sys.modules['avalign'] = None  # importing avalign now fails\n"
        "from ava_reward_model import load_ava_reward_model\n"
        f"model = load_ava_reward_model({directory!r})\n"
        f"print(json.dumps([model.score(p, r) for p, r in zip({prompts!r}, {responses!r})]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=directory, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr
    standalone = json.loads(result.stdout.strip().splitlines()[-1])
    scorer = AVARewardModel.from_pretrained(directory)
    for got, want in zip(standalone, scorer.score(prompts, responses)):
        assert got["last"] == pytest.approx(want.last, abs=1e-5) and got["sum"] == pytest.approx(want.sum, abs=1e-5)
        assert got["score"] == pytest.approx(getattr(want, scorer.scorings[0]), abs=1e-5)
        assert got["token_rewards"] == pytest.approx(want.token_rewards, abs=1e-5)
        assert got["token_std"] == pytest.approx(want.reward_std, abs=1e-5)
        assert got["token_weight"] == pytest.approx(want.reward_weights, abs=1e-5)
