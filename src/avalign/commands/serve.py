"""`avalign serve`: a reward model (AVA or Bradley-Terry) over HTTP, for OpenRLHF's ``--remote_rm_url``.

POST {"query": [...], "prompts": [...]} to http://HOST:PORT/get_reward; the reply is {"rewards": [...], "scores":
[...], "extra_logs": {...}} (see avalign.serve for the whole protocol). GET /health answers {"status": "ok"}.
"""

from __future__ import annotations

import argparse

from ..serve import HH_ASSISTANT


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="avalign serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="An AVA (TQR) or Bradley-Terry reward model.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")
    parser.add_argument("--port", type=int, default=5000, help="Port to listen on (0: a free one, printed).")
    parser.add_argument("--normalize_reward", action="store_true",
                        help="Normalise rewards with the mean and std stored with the model (requests may override "
                             "with \"normalize\": false).")
    parser.add_argument("--scoring", default=None, choices=["last", "sum"],
                        help="Sequence score (default: the model's first, 'last').")
    parser.add_argument("--response_marker", default=HH_ASSISTANT,
                        help="Without 'prompts' in a request, the response is what follows the last marker.")
    parser.add_argument("--max_length", type=int, default=None, help="Truncate each sequence (default: no limit).")
    parser.add_argument("--batch_size", type=int, default=32, help="Responses per forward pass.")
    parser.add_argument("--device", default=None, help="Device of the model (default: where it loads).")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    from ..serve import RewardService, make_server

    args = parse_args(argv)
    service = RewardService.from_pretrained(
        args.model_name_or_path, normalize=args.normalize_reward, scoring=args.scoring,
        response_marker=args.response_marker, max_length=args.max_length, batch_size=args.batch_size,
        device=args.device,
    )
    server = make_server(service, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"avalign serve: {args.model_name_or_path} on http://{host}:{port}/get_reward", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
