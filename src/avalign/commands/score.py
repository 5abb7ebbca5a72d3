"""`avalign score`: score a file of responses with a reward model (AVA or Bradley-Terry), to JSONL; the last
stdout line is one JSON object.

Input: TRL rows, prompt/completion or prompt/chosen/rejected (both sides scored; chosen/rejected with the prompt
inside works too), standard or conversational. Each output row is the input row plus, per response, ``score`` (the
sequence score `avalign evaluate` ranks by), ``tokens`` (the response tokens as text, EOS included) and
``token_rewards`` (the reward PPO optimises, w_t mu_t); AVA models add ``token_mean``, ``token_std`` (sigma_t) and
``token_weight``; preference rows prefix each field with ``chosen_`` / ``rejected_``. Rows are streamed in and out.

--html writes a self-contained page (each response coloured token by token; hover for mu, sigma, w), --png a heatmap
for papers, both of the first --report_rows rows. --compute_normalization stores the mean and std of the scores
with the model (reward_normalization.json), which `avalign serve` applies on request.
"""

from __future__ import annotations

import argparse
import json
import os


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="avalign score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True,
                        help="A reward model: an AVA (TQR) directory or a Bradley-Terry (sequence-classification) one.")
    parser.add_argument("--dataset_name", required=True,
                        help="Local .jsonl/.json (streamed), .csv/.parquet, a directory, a saved dataset, a hub id, or "
                             "'synthetic' (the evaluation pairs of the embedded task, as `avalign evaluate` uses).")
    parser.add_argument("--output_file", default=None, help="Scored rows as JSONL (needed unless only reports are asked).")
    parser.add_argument("--scoring", default=None, choices=["last", "sum"],
                        help="Sequence score written as 'score' (default: the model's first, 'last', as evaluate).")
    parser.add_argument("--bt_prefix_rewards", action="store_true",
                        help="Bradley-Terry models: token_rewards = r(y_1..t) - r(y_1..t-1), the score of every prefix "
                             "minus the one before.")
    parser.add_argument("--html", default=None, help="Write a self-contained HTML page of per-token rewards here.")
    parser.add_argument("--png", default=None, help="Write a PNG heatmap of per-token rewards here (needs matplotlib).")
    parser.add_argument("--png_field", default="token_rewards", choices=["token_rewards", "token_mean", "token_std"],
                        help="What the PNG's cells show: the token reward, or an AVA model's mu or sigma.")
    parser.add_argument("--report_rows", type=int, default=50, help="Rows drawn in --html / --png (the first ones).")
    parser.add_argument("--compute_normalization", action="store_true",
                        help="Store the mean and std of the scores of all responses with the model, for `avalign serve`.")
    parser.add_argument("--max_rows", type=int, default=None, help="Score at most this many rows.")
    parser.add_argument("--max_length", type=int, default=None, help="Truncate each sequence (default: no limit).")
    parser.add_argument("--batch_size", type=int, default=32, help="Rows per forward pass.")
    args = parser.parse_args(argv)
    if not (args.output_file or args.html or args.png or args.compute_normalization):
        parser.error("nothing to write: pass --output_file, --html, --png or --compute_normalization")
    if args.report_rows < 1:
        parser.error("--report_rows must be at least 1")
    return args


def _records(args: argparse.Namespace):
    from ..data.loading import iter_records
    from ..data.synthetic import SYNTHETIC, synthetic_datasets

    if args.dataset_name != SYNTHETIC:
        return iter_records(args.dataset_name, args.max_rows)
    from ..data.formats import Record

    pairs = synthetic_datasets("preference", 0, args.max_rows or 500)[1].select_columns(["prompt", "chosen", "rejected"])
    return (Record(SYNTHETIC, index, row) for index, row in enumerate(pairs, 1))


def main(argv: list[str]) -> int:
    from ..evaluation.scoring import ScoreStatistics, scored_rows
    from ..reward_model import load_reward_model, save_normalization

    args = parse_args(argv)
    scorer = load_reward_model(args.model_name_or_path, max_length=args.max_length, batch_size=args.batch_size)
    rows = scored_rows(scorer, _records(args), scoring=args.scoring,
                       prefix_rewards=args.bt_prefix_rewards, progress=True)
    kept: list[dict] = []  # the first --report_rows rows, for the reports
    statistics = ScoreStatistics()
    summary: dict = {"rows": 0}
    with open(args.output_file or os.devnull, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            statistics.add(row)
            if len(kept) < args.report_rows:
                kept.append(row)
            summary["rows"] += 1
    summary.update(statistics.summary())
    title = f"{args.model_name_or_path} on {args.dataset_name}"
    if args.html:
        from ..evaluation.token_report import write_html

        write_html(args.html, kept, title=title)
        summary["html"] = args.html
    if args.png:
        from ..evaluation.token_report import write_png

        write_png(args.png, kept, title=title, field=args.png_field)
        summary["png"] = args.png
    if args.compute_normalization:
        summary["normalization"] = save_normalization(args.model_name_or_path, args.scoring or scorer.scorings[0],
                                                      summary["score_mean"], summary["score_std"], summary["responses"])
    if args.output_file:
        summary["output_file"] = args.output_file
    print(json.dumps(summary, sort_keys=True))
    return 0

