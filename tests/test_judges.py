"""Judges and win rates: the gold and reward-model judges against recomputed scores, and the LLM judge against a real
HTTP stub server on loopback that is biased towards whichever response it is shown first."""

import json
import threading
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from avalign.errors import ConfigError, DataError
from avalign.evaluation.judges import (
    JUDGE_SYSTEM_PROMPT, JUDGE_USER_PROMPT, GoldJudge, JudgeError, LLMJudge, RewardModelJudge, parse_verdict, win_rates,
)
from avalign.modeling import TQRModel
from avalign.reward_model import AVARewardModel

from conftest import reference_gold_return, tiny_backbone


def test_gold_judge_and_its_margin(synthetic):
    task = synthetic[2]
    prompts, a, b = synthetic[1]["prompt"][:8], synthetic[1]["chosen"][:8], synthetic[1]["rejected"][:8]
    diffs = [reference_gold_return(task, p, x) - reference_gold_return(task, p, y) for p, x, y in zip(prompts, a, b)]
    assert GoldJudge(task).judge(prompts, a, b) == [(d > 0) - (d < 0) for d in diffs]
    margin = sorted(abs(d) for d in diffs)[3]  # the four smallest differences become ties
    judged = GoldJudge(task, margin=margin).judge(prompts, a, b)
    assert judged == [0 if abs(d) <= margin else (d > 0) - (d < 0) for d in diffs] and judged.count(0) == 4
    with pytest.raises(DataError, match="pair 2.*not words of the synthetic task"):
        GoldJudge(task).judge(prompts[:2], a[:2], [b[0], "hello world"])


def test_reward_model_judge_recomputes_sequence_scores(tokenizer, synthetic, tmp_path):
    torch.manual_seed(0)
    model = TQRModel(tiny_backbone("gpt2", tokenizer))
    torch.nn.init.normal_(model.reward_head.weight)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    prompts, a, b = synthetic[1]["prompt"][:6], synthetic[1]["chosen"][:6], synthetic[1]["rejected"][:6]
    scorer = AVARewardModel.from_pretrained(str(tmp_path))
    for scoring in ("last", "sum"):
        scored = zip(scorer.score(prompts, a), scorer.score(prompts, b))
        diffs = [getattr(x, scoring) - getattr(y, scoring) for x, y in scored]
        assert RewardModelJudge(str(tmp_path), scoring).judge(prompts, a, b) == [(d > 0) - (d < 0) for d in diffs]
    # An empty completion cannot be scored: it loses to any other and ties with another empty one.
    assert RewardModelJudge(str(tmp_path)).judge(prompts[:3], ["", a[1], ""], [b[0], "", ""]) == [-1, 1, 0]
    with pytest.raises(ConfigError, match="scoring 'middle'"):
        RewardModelJudge(str(tmp_path), "middle")


def test_win_rates_percentages_and_intervals():
    outcomes = [1] * 6 + [0] * 3 + [-1]
    rates = win_rates(outcomes)
    assert (rates["n"], rates["win_pct"], rates["tie_pct"], rates["lose_pct"]) == (10, 60, 30, 10)
    assert rates["win_minus_lose_pct"] == pytest.approx(50)
    low, high = rates["win_minus_lose_pct_ci95"]
    assert -100 <= low < 50 < high <= 100
    low, high = rates["win_pct_ci95"]
    assert 0 <= low < 60 < high <= 100
    assert win_rates([1] * 5)["win_minus_lose_pct_ci95"] == [100, 100]
    with pytest.raises(ValueError):
        win_rates([2, 1])


@pytest.mark.parametrize("reply,verdict", [
    ("A", 1), ("B", -1), ("tie", 0), ("**B**", -1), ("Response A is better.", 1), ("[[A]]", 1), ("Tie.", 0),
    ("Verdict: B", -1), ("Both are fine, but the final verdict: A", 1), ("assistant b", -1),
    ("B, because it answers the question", -1), ("A clear winner is B", None),
    ("I cannot decide", None), ("Banana", None), ("", None),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


class StubJudge(BaseHTTPRequestHandler):
    """/v1/chat/completions: prefers the response containing GOOD; when both or neither do, it picks whichever is
    shown first (position bias). ``server.mode`` switches to failures."""

    def do_POST(self):
        server = self.server
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append((self.path, self.headers.get("Authorization"), request))
        if server.mode == "error":
            return self._send(500, b"overloaded")
        if server.mode == "echo":  # a careless server echoes the request's headers in its error body
            return self._send(401, f"unauthorized; you sent Authorization: {self.headers.get('Authorization')}".encode())
        if server.mode == "garbage":
            return self._send(200, b"<html>not json</html>")
        content = request["messages"][-1]["content"]
        first = content.split("[Response A]\n")[1].split("\n\n[Response B]")[0]
        second = content.split("[Response B]\n")[1].split("\n\nReply with")[0]
        if ("GOOD" in first) != ("GOOD" in second):
            reply = "**Response A** is better" if "GOOD" in first else "B"
        else:
            reply = "A"  # position bias
        if server.mode == "unreadable":
            reply = "Both responses have merits."
        self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode())

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubJudge)
    server.mode, server.requests = "judge", []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def judge_for(server, **kwargs):
    return LLMJudge(f"http://127.0.0.1:{server.server_address[1]}/v1", "stub-model", retry_wait=0, workers=2, **kwargs)


def test_llm_judge_asks_both_orders_and_cancels_position_bias(stub_server, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "secret")
    prompts = ["p1", "p2", "p3", "p4"]
    a = ["GOOD answer", "meh", "GOOD one", "plain"]
    b = ["meh", "GOOD answer", "GOOD two", "also plain"]
    # Only the content-based preferences survive; the position-biased "A" to equal pairs becomes a tie.
    assert judge_for(stub_server, api_key_env="STUB_KEY").judge(prompts, a, b) == [1, -1, 0, 0]
    assert len(stub_server.requests) == 2 * len(prompts)
    path, auth, request = stub_server.requests[0]
    assert path == "/v1/chat/completions" and auth == "Bearer secret"
    assert request["model"] == "stub-model" and request["temperature"] == 0
    shown = {(r["messages"][-1]["content"].split("[Prompt]\n")[1].split("\n")[0],
              r["messages"][-1]["content"].split("[Response A]\n")[1].split("\n")[0]) for _, _, r in stub_server.requests}
    assert shown == {(p, x) for p, pair in zip(prompts, zip(a, b)) for x in pair}  # each completion shown first once


@pytest.mark.parametrize("mode,message", [
    ("error", r"HTTP 500.*overloaded.*after 2 attempt"),
    ("garbage", r"not a chat-completion reply.*<html>"),
    ("unreadable", r"cannot read a verdict.*Both responses have merits"),
])
def test_llm_judge_errors_name_the_endpoint_and_the_row(stub_server, mode, message):
    stub_server.mode = mode
    judge = judge_for(stub_server, retries=1)
    with pytest.raises(JudgeError, match=rf"/v1/chat/completions, rows 7 and 9, a shown first: {message}"):
        judge.judge(["p"], ["x"], ["y"], labels=["rows 7 and 9"])
    assert len(stub_server.requests) == (2 if mode == "error" else 1)  # only server errors are retried


def test_docs_quote_the_llm_judge_prompt():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "policy.md").read_text()
    assert f"```text\n{JUDGE_SYSTEM_PROMPT}\n```" in docs and f"```text\n{JUDGE_USER_PROMPT}\n```" in docs


def test_llm_judge_keeps_secrets_out_of_its_messages(stub_server, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sk-secret-123")
    stub_server.mode = "echo"
    with pytest.raises(JudgeError, match="HTTP 401") as error:
        judge_for(stub_server, api_key_env="STUB_KEY", retries=0).judge(["p"], ["x"], ["y"])
    assert "sk-secret-123" not in str(error.value) and "Authorization: Bearer ***" in str(error.value)
    port = stub_server.server_address[1]
    judge = LLMJudge(f"http://user:pw-456@127.0.0.1:{port}/v1", "m", api_key_env="STUB_KEY", retries=0)
    assert judge.shown_url == f"http://user:***@127.0.0.1:{port}/v1/chat/completions"
    with pytest.raises(JudgeError) as error:
        judge.judge(["p"], ["x"], ["y"])
    assert "pw-456" not in str(error.value)


def test_llm_judge_warns_about_a_missing_key_and_a_key_over_http(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.warns(UserWarning, match="NO_SUCH_KEY is not set"):
        LLMJudge("https://judge.example/v1", "m", api_key_env="NO_SUCH_KEY")
    monkeypatch.setenv("STUB_KEY", "k")
    with pytest.warns(UserWarning, match="unencrypted over http:// to judge.example"):
        LLMJudge("http://judge.example/v1", "m", api_key_env="STUB_KEY")
    with pytest.raises(ConfigError, match="expected http"):
        LLMJudge("judge.example/v1", "m", api_key_env="STUB_KEY")
