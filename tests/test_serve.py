"""`avalign serve`: OpenRLHF's remote reward protocol over loopback HTTP, with a real client (urllib)."""

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from avalign.errors import ConfigError
from avalign.modeling import TQRModel
from avalign.reward_model import AVARewardModel, save_normalization
from avalign.serve import RewardService, make_server
from conftest import tiny_backbone

HUMAN, ASSISTANT = "\n\nHuman: ", "\n\nAssistant:"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    directory = tmp_path_factory.mktemp("served")
    torch.manual_seed(0)
    model = TQRModel(tiny_backbone("gpt2", tokenizer))
    torch.nn.init.normal_(model.reward_head.weight, std=0.5)  # zero heads would score everything 0
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    save_normalization(str(directory), "last", mean=0.25, std=2.0, responses=10)
    return directory


@pytest.fixture(scope="module")
def server(model_dir):
    server = make_server(RewardService.from_pretrained(str(model_dir), batch_size=3), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def post(url, body, path="/get_reward"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def episodes(synthetic):
    pairs = synthetic[1].select(range(7))
    prompts = [f"{HUMAN}{p}{ASSISTANT}" for p in pairs["prompt"]]
    return prompts, list(pairs["chosen"])


def test_rewards_are_the_sequence_scores(server, model_dir, episodes):
    prompts, responses = episodes
    expected = AVARewardModel.from_pretrained(str(model_dir)).sequence_scores(prompts, responses)["last"]
    queries = [p + r for p, r in zip(prompts, responses)]
    status, reply = post(server, {"query": queries, "prompts": prompts, "labels": [""] * len(queries)})
    assert status == 200 and set(reply) == {"rewards", "scores", "extra_logs"}
    assert reply["rewards"] == pytest.approx(expected, abs=1e-5) and reply["scores"] == reply["rewards"]
    assert reply["extra_logs"]["raw_score"] == pytest.approx(expected, abs=1e-5)
    # query alone: split after the last "\n\nAssistant:"; OpenRLHF's queries may end with the EOS text
    status, alone = post(server, {"query": [q + "</s>" for q in queries]})
    assert status == 200 and alone["rewards"] == pytest.approx(expected, abs=1e-5)
    status, normalized = post(server, {"query": queries, "normalize": True, "token_rewards": True})
    assert normalized["rewards"] == pytest.approx([(s - 0.25) / 2.0 for s in expected], abs=1e-5)
    assert [row[-1] for row in normalized["token_rewards"]] == pytest.approx([s / 2.0 for s in expected], abs=1e-5)
    assert [len(row) for row in normalized["token_std"]] == [len(r.split()) + 1 for r in responses]


def test_bad_requests_get_400_and_the_server_keeps_serving(server, episodes):
    prompts, responses = episodes
    for body, message in (
        (b"not json", "not JSON"),
        ({"prompts": prompts}, "'query' must be a list of strings"),
        ({"query": ["no marker here"]}, "send 'prompts'"),
        ({"query": ["abc"], "prompts": ["xyz"]}, "does not start with its prompt"),
        ({"query": [prompts[0] + responses[0]], "prompts": prompts[:2]}, "'prompts' has 2 entries"),
    ):
        status, reply = post(server, body)
        assert status == 400 and message in reply["error"]
    assert post(server, {"query": []}, path="/elsewhere")[0] == 404
    assert post(server, {"query": []}) == (200, {"rewards": [], "scores": [], "extra_logs": {"raw_score": []}})
    with urllib.request.urlopen(server + "/health", timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"


def test_normalisation_must_be_of_the_served_scoring(model_dir):
    with pytest.raises(ConfigError, match="'last' scores, but the server scores with 'sum'"):
        RewardService.from_pretrained(str(model_dir), scoring="sum")


def test_concurrent_clients_each_get_their_own_rewards(server, model_dir, episodes):
    prompts, responses = episodes
    expected = AVARewardModel.from_pretrained(str(model_dir)).sequence_scores(prompts, responses)["last"]

    def one(i):
        k = i % len(prompts)
        return k, post(server, {"query": [prompts[k] + responses[k]], "prompts": [prompts[k]]})[1]["rewards"][0]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(40)))
    assert len(answers) == 40
    assert [reward for _, reward in answers] == pytest.approx([expected[k] for k, _ in answers], abs=1e-5)
