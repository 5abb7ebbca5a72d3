"""Load test of `avalign serve`: many concurrent clients posting OpenRLHF-style requests over loopback.

Starts `avalign serve --port 0` as a subprocess (on a given model, or on a tiny AVA model built from a config on
the synthetic task's tokenizer, random heads), then C client threads send R requests in all (each request holds Q
queries of synthetic prompt + response text, with their prompts). Every reply is checked: status 200, one reward
per query, and the reward equal to the one a lone request for the same query got beforehand (so no reply is lost
or crossed between clients). Reports answered / lost / wrong counts, p50 / p99 / max latency and throughput.

    python benchmarks/serve_load.py --requests 200 --clients 20 --queries 4 --json out.json

Only loopback traffic (127.0.0.1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def tiny_model(directory: str) -> str:
    import torch

    from avalign.backbones import build_backbone
    from avalign.data.synthetic import SyntheticTask
    from avalign.modeling import TQRModel

    tokenizer = SyntheticTask().tokenizer()
    backbone = build_backbone("gpt2", len(tokenizer), hidden_size=64, num_layers=2, pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, seed=0)
    torch.manual_seed(0)
    model = TQRModel(backbone)
    torch.nn.init.normal_(model.reward_head.weight, std=0.5)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def post(url: str, body: dict) -> tuple[int, dict, float]:
    start = time.perf_counter()
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        reply = json.loads(response.read())
        return response.status, reply, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=None, help="Default: a tiny AVA model built from a config.")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--queries", type=int, default=4, help="Queries per request.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--json", default=None, help="Write the figures here too.")
    args = parser.parse_args()

    from avalign.data.synthetic import synthetic_datasets

    pairs = synthetic_datasets("preference", 0, 64)[1]
    prompts = [f"\n\nHuman: {p}\n\nAssistant:" for p in pairs["prompt"]]
    queries = [p + r for p, r in zip(prompts, pairs["chosen"])]
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model_name_or_path or tiny_model(scratch)
        server = subprocess.Popen(
            [sys.executable, "-m", "avalign.cli", "serve", "--model_name_or_path", model, "--port", "0",
             "--batch_size", str(args.batch_size)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        try:
            line = server.stdout.readline()  # "avalign serve: ... on http://127.0.0.1:PORT/get_reward"
            url = line.split(" on ")[-1].strip()
            reference = {i: post(url, {"query": [queries[i]], "prompts": [prompts[i]]})[1]["rewards"][0]
                         for i in range(len(queries))}

            def request(r: int):
                picked = [(r * args.queries + j) % len(queries) for j in range(args.queries)]
                try:
                    status, reply, seconds = post(url, {"query": [queries[i] for i in picked],
                                                        "prompts": [prompts[i] for i in picked]})
                except OSError as exc:
                    return "lost", str(exc), None
                rewards = reply.get("rewards", [])
                right = status == 200 and len(rewards) == len(picked) and np.allclose(
                    rewards, [reference[i] for i in picked], atol=1e-4)
                return "answered" if right else "wrong", status, seconds

            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(request, range(args.requests)))
            wall = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait(timeout=30)
    latencies = np.array([seconds for outcome, _, seconds in results if seconds is not None]) * 1000
    figures = {
        "requests": args.requests, "clients": args.clients, "queries_per_request": args.queries,
        "answered": sum(outcome == "answered" for outcome, _, _ in results),
        "lost": sum(outcome == "lost" for outcome, _, _ in results),
        "wrong": sum(outcome == "wrong" for outcome, _, _ in results),
        "latency_ms_p50": float(np.percentile(latencies, 50)), "latency_ms_p99": float(np.percentile(latencies, 99)),
        "latency_ms_max": float(latencies.max()), "wall_s": wall, "queries_per_s": args.requests * args.queries / wall,
        "model": args.model_name_or_path or "tiny AVA (gpt2, hidden 64, 2 layers; built from a config)",
        "cpu_threads": os.environ.get("OMP_NUM_THREADS", "default"),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
