"""Sweep that chose AVAConfig's defaults (alpha, beta, gamma, lambda, log-sigma clamp, CER form).

One factor at a time around a base setting, each cell trained at the same budget as a Bradley-Terry reward model
(TRL's RewardTrainer) and the Preference Transformer on the same from-scratch backbone (same initial weights per seed), tokenizer, data, steps,
batch size and learning rate. Scores: pairwise accuracy on the prompt-disjoint eval split (ties wrong).
Development data only. Finished cells are cached in the results JSON, so an interrupted sweep resumes.

    python experiments/sweep_defaults.py --dataset synthetic --out docs/results/sweep-synthetic
    python experiments/sweep_defaults.py --dataset ../shared/data/hh-rlhf/helpful-base-test.jsonl.gz --out docs/results/sweep-hh
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from avalign import AVAConfig, AVARewardModel, AVATrainer, TQRModel
from avalign.backbones import build_backbone
from avalign.data.synthetic import synthetic_datasets
from avalign.reward_model import BTRewardModel
from avalign.trainers.baselines import bradley_terry_trainer, bt_config

# The first defaults, pinned: AVAConfig now defaults to a log-sigmoid CER with weight 5 (docs/method.md).
BASE = dict(alpha=1.0, beta=1.0, gamma=1.0, lam=1.0, cer_form="sigmoid", cer_coef=1.0, cer_target="last", log_std_min=-5.0, log_std_max=2.0)
VARIATIONS = [
    {},
    {"cer_form": "logsigmoid"},
    {"alpha": 4.0},
    {"alpha": 16.0},
    {"beta": 0.1},
    {"beta": 10.0},
    {"gamma": 0.9},
    {"lam": 0.1},
    {"lam": 10.0},
    {"log_std_min": -2.0, "log_std_max": 1.0},
]


def load(dataset: str, max_rows: int | None, vocab_size: int):
    if dataset == "synthetic":
        train, eval_set, task = synthetic_datasets("preference", 4000, 500)
        return train, eval_set, task.tokenizer()
    from avalign.data import load_dataset
    from avalign.tokenizer import train_bpe_tokenizer

    loaded = load_dataset(dataset, eval_fraction=0.2, seed=0, max_rows=max_rows)
    texts = [p + c for p, c in zip(loaded.train["prompt"], loaded.train["chosen"])]
    texts += [p + r for p, r in zip(loaded.train["prompt"], loaded.train["rejected"])]
    return loaded.train, loaded.eval, train_bpe_tokenizer(texts, vocab_size)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--out", required=True, help="Prefix of the .json and .md outputs.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--max_rows", type=int, default=None)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--vocab_size", type=int, default=2000)
    parser.add_argument("--only", type=int, nargs="*", default=None, help="Indices of VARIATIONS to run.")
    args = parser.parse_args(argv)

    out_json = Path(args.out + ".json")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    train, eval_set, tokenizer = load(args.dataset, args.max_rows, args.vocab_size)
    # Equal data for both objectives: keep only pairs that fit max_length untruncated.
    def fits(row):
        prompt = len(tokenizer(row["prompt"])["input_ids"])
        return prompt + 1 + max(len(tokenizer(row[k])["input_ids"]) for k in ("chosen", "rejected")) <= args.max_length
    sizes = (len(train), len(eval_set))
    train, eval_set = train.filter(fits), eval_set.filter(fits)
    print(f"pairs that fit max_length={args.max_length}: train {len(train)}/{sizes[0]}, eval {len(eval_set)}/{sizes[1]}")
    common = dict(max_steps=args.steps, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=32,
                  learning_rate=args.learning_rate, warmup_steps=args.steps // 10, logging_steps=50,
                  save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True)
    variations = [VARIATIONS[i] for i in args.only] if args.only is not None else VARIATIONS
    baselines = [(name, {}, s) for name in ("bt", "preftrans") for s in args.seeds]
    cells = baselines + [("ava-p", v, s) for v in variations for s in args.seeds]
    with tempfile.TemporaryDirectory() as tmp:
        for objective, variation, seed in tqdm(cells, desc="sweep"):
            key = json.dumps([objective, variation, seed], sort_keys=True)
            if key in results:
                continue
            backbone_dir = Path(tmp) / f"backbone-{seed}"
            if not backbone_dir.exists():
                build_backbone("gpt2", len(tokenizer), hidden_size=args.hidden_size, num_layers=2, num_heads=4,
                               max_positions=args.max_length, pad_token_id=tokenizer.pad_token_id,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               seed=seed).save_pretrained(backbone_dir)
            if objective == "bt":
                trainer = bradley_terry_trainer(str(backbone_dir), tokenizer, train, None,
                                                bt_config(output_dir=f"{tmp}/bt", seed=seed, max_length=args.max_length, **common))
                trainer.train()
                scorer = BTRewardModel(trainer.model, tokenizer, max_length=args.max_length)
                cell = {"accuracy_last": scorer.evaluate_pairs(eval_set)["accuracy_last"]}
            else:
                config = AVAConfig(output_dir=f"{tmp}/ava", seed=seed, max_length=args.max_length, objective=objective,
                                   **common, **{**BASE, **variation})
                trainer = AVATrainer(TQRModel.from_pretrained(str(backbone_dir), config.tqr_config()), args=config,
                                     train_dataset=train, processing_class=tokenizer)
                trainer.train()
                cell = AVARewardModel(trainer.model, tokenizer, max_length=args.max_length).evaluate_pairs(eval_set)
            results[key] = cell
            out_json.write_text(json.dumps(results, indent=1))
    write_table(results, args, Path(args.out + ".md"))
    return 0


def write_table(results: dict, args, path: Path) -> None:
    rows: dict[str, dict[str, list[float]]] = {}
    for key, cell in results.items():
        objective, variation, _ = json.loads(key)
        name = {"bt": "BT (TRL RewardTrainer)", "preftrans": "Preference Transformer"}.get(objective) or "AVA-p " + (
            ", ".join(f"{k}={v}" for k, v in variation.items()) or "base")
        for metric, value in cell.items():
            if metric.startswith("accuracy"):
                rows.setdefault(name, {}).setdefault(metric, []).append(value)
    fmt = lambda v: f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"
    # Cells are cached, so the command without --only reproduces every row, whichever subsets were run first.
    argv, in_only = [], False
    for arg in sys.argv[1:]:
        in_only = arg == "--only" or (in_only and arg.isdigit())
        if not in_only:
            argv.append(arg)
    lines = [f"Command: `python experiments/sweep_defaults.py {' '.join(argv)}`", "",
             f"Base: {BASE}; {args.steps} steps of {args.batch_size} pairs, lr {args.learning_rate}, "
             f"seeds {args.seeds}; mean ± std over seeds.", "",
             "The Preference Transformer scores with its weighted return, the \"sum\" column; its \"last\" column is "
             "the weighted reward of the final token alone, shown for completeness.", "",
             "| setting | accuracy (last) | accuracy (sum) |", "|---|---|---|"]
    for name, metrics in rows.items():
        lines.append(f"| {name} | {fmt(metrics['accuracy_last'])} | "
                     f"{fmt(metrics['accuracy_sum']) if 'accuracy_sum' in metrics else 'n/a'} |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
