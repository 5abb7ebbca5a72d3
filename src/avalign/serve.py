"""A reward model over HTTP, speaking OpenRLHF's remote reward-model protocol (``--remote_rm_url``).

Request (POST, JSON): ``{"query": [prompt + response texts], "prompts": [prompt texts], "labels": [...]}``;
``prompts`` and ``labels`` are optional (labels are accepted and ignored). Each query is split into its prompt and
response: with ``prompts``, the query must start with its prompt and the rest is the response; without them, the
response is what follows the last ``response_marker`` (default ``"\\n\\nAssistant:"``, which stays in the prompt,
as in HH-RLHF). Trailing EOS and pad token texts are removed from the response (the reward model appends its EOS).
Optional request fields: ``"normalize"`` (true/false; default: the server's setting) and ``"token_rewards"``
(true: add the per-token rewards and, for AVA models, sigma).

Reply: ``{"rewards": [...], "scores": [...], "extra_logs": {"raw_score": [...]}}``, one number per query, as
OpenRLHF's serve_rm replies; rewards and scores are the sequence scores, normalised as ``(score - mean) / std``
with the mean and std stored beside the model (at the end of `avalign train`, or by ``avalign score
--compute_normalization``) when normalising. With
token rewards: ``"token_rewards"`` (and ``"token_std"``) lists per query; normalisation divides them by std (their
sum then moves by the same scale as the score; the mean is a sequence-level shift and is not spread over tokens).

The server is a standard-library ThreadingHTTPServer: requests are parsed concurrently and scored one request at a
time under a lock (each in the model's batches), so concurrent clients never share a forward pass.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .errors import AvalignError, ConfigError
from .reward_model import AVARewardModel, BTRewardModel, load_normalization

HH_ASSISTANT = "\n\nAssistant:"


class RequestError(ValueError):
    """A request the server answers with 400 and this message."""


def _string_list(body: dict, key: str, length: int | None = None) -> list[str]:
    values = body.get(key)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise RequestError(f"'{key}' must be a list of strings")
    if length is not None and len(values) != length:
        raise RequestError(f"'{key}' has {len(values)} entries but 'query' has {length}")
    return values


class RewardService:
    """What the server does with one request, callable without HTTP: split queries, score, normalise."""

    def __init__(self, scorer: AVARewardModel | BTRewardModel, *, normalization: dict | None = None,
                 normalize: bool = False, response_marker: str = HH_ASSISTANT, scoring: str | None = None):
        if normalize and normalization is None:
            raise ConfigError("normalize needs the reward normalisation stored with the model: run "
                              "`avalign score --compute_normalization` on a reference set first")
        self.scorer, self.normalization, self.normalize = scorer, normalization, normalize
        self.response_marker, self.scoring = response_marker, scoring or scorer.scorings[0]
        if self.scoring not in scorer.scorings:
            raise ConfigError(f"the model offers scorings {list(scorer.scorings)}, not '{self.scoring}'")
        if normalization is not None and normalization.get("scoring", self.scoring) != self.scoring:
            raise ConfigError(f"the stored normalisation is of the '{normalization['scoring']}' scores, but the server "
                              f"scores with '{self.scoring}': recompute it with --scoring {self.scoring}")
        tokenizer = scorer.tokenizer
        self._trailing = [t for t in (tokenizer.eos_token, tokenizer.pad_token) if t]
        self.lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "RewardService":
        from .reward_model import load_reward_model

        scorer_options = {k: kwargs.pop(k) for k in ("max_length", "batch_size", "device") if k in kwargs}
        return cls(load_reward_model(path, **scorer_options), normalization=load_normalization(path), **kwargs)

    def split(self, queries: list[str], prompts: list[str] | None) -> tuple[list[str], list[str]]:
        """(prompts, responses) of the queries (see the module docstring)."""
        split_prompts, responses = [], []
        for index, query in enumerate(queries):
            if prompts is not None:
                if not query.startswith(prompts[index]):
                    raise RequestError(f"query {index} does not start with its prompt")
                prompt = prompts[index]
            else:
                cut = query.rfind(self.response_marker)
                if cut < 0:
                    raise RequestError(f"query {index} has no {self.response_marker!r} to split the prompt from the "
                                       "response at: send 'prompts'")
                prompt = query[: cut + len(self.response_marker)]
            response = query[len(prompt):]
            stripped = True
            while stripped:  # OpenRLHF's queries may end with the EOS (and pad) texts
                stripped = False
                for token in self._trailing:
                    if response.endswith(token):
                        response, stripped = response[: -len(token)], True
            split_prompts.append(prompt)
            responses.append(response)
        return split_prompts, responses

    def __call__(self, body: dict) -> dict:
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        queries = _string_list(body, "query")
        prompts = _string_list(body, "prompts", len(queries)) if body.get("prompts") is not None else None
        normalize = body.get("normalize", self.normalize)
        if normalize and self.normalization is None:
            raise RequestError("this model has no stored reward normalisation (reward_normalization.json)")
        with_tokens = bool(body.get("token_rewards", False))
        split_prompts, responses = self.split(queries, prompts)
        if not queries:
            return {"rewards": [], "scores": [], "extra_logs": {"raw_score": []}}
        if any(not r.strip() for r in responses):
            raise RequestError(f"query {[not r.strip() for r in responses].index(True)} has an empty response")
        options = {"prefix_rewards": True} if with_tokens and isinstance(self.scorer, BTRewardModel) else {}
        with self.lock:
            results = self.scorer.score(split_prompts, responses, **options)
        raw = [float(getattr(r, self.scoring)) for r in results]
        mean, std = (self.normalization["mean"], self.normalization["std"]) if normalize else (0.0, 1.0)
        rewards = [(score - mean) / std for score in raw]
        reply = {"rewards": rewards, "scores": rewards, "extra_logs": {"raw_score": raw}}
        if with_tokens:
            reply["token_rewards"] = [[v / std for v in r.token_rewards] for r in results]
            if isinstance(self.scorer, AVARewardModel):
                reply["token_std"] = [[v / std for v in r.reward_std] for r in results]
        return reply


def make_server(service: RewardService, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server for ``service`` (not started: call ``serve_forever``); port 0 picks a free port."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self, status: HTTPStatus, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                self._reply(HTTPStatus.OK, {"status": "ok", "scoring": service.scoring,
                                            "normalization": service.normalization})
            else:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no GET {self.path}; POST JSON to /get_reward"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") not in ("", "/get_reward"):
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no POST {self.path}; use /get_reward"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise RequestError(f"the body is not JSON ({exc})") from None
                self._reply(HTTPStatus.OK, service(body))
            except (RequestError, AvalignError) as exc:  # the request's fault (bad fields, untokenisable text)
                self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            except Exception as exc:  # noqa: BLE001 (the client gets an answer; the server keeps serving)
                self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})

        def log_message(self, format: str, *args) -> None:  # one line per request is noise at PPO's request rate
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
