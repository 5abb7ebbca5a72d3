"""Cost of one training step of AVA against DPO, Bradley-Terry and SFT, each through its own Trainer.

All methods start from the same randomly initialised backbone (built once, saved, and loaded in every
measurement), see the same batch of preference pairs at every step, and run the real
``transformers.Trainer`` loop with the same settings (AdamW, batch size, seed, precision, no gradient
checkpointing, no evaluation, no saving):

* ``ava-p``            avalign.AVATrainer(objective="ava-p") on the pairs (TQRModel);
* ``ava-d``            avalign.AVATrainer(objective="ava-d") on the pairs' chosen responses (TQRModel);
* ``ava-p-triton``     ava-p with q_kernel="triton": the Q op's fused Triton kernels (CUDA presets only);
* ``ava-p-packed``     ava-p with padding_free=True: the batch's sequences in one row, no padding, attention
                       kept per sequence by the preset's ``packed_attention`` implementation;
* ``dpo-live``         trl.DPOTrainer with a live reference model (one more no-grad forward per step);
* ``dpo-precomputed``  trl.DPOTrainer(precompute_ref_log_probs=True): reference log-probs computed at init;
* ``bt``               trl.RewardTrainer (Bradley-Terry) on AutoModelForSequenceClassification(num_labels=1);
* ``sft``              trl.SFTTrainer on prompt+chosen and prompt+rejected as 2B prompt/completion rows.

A step is what the Trainer does between its ``on_step_begin`` and ``on_step_end`` callbacks: forward,
backward, gradient clipping, AdamW step, scheduler step and zero_grad (data loading is outside). Every
method runs in its own subprocess so that memory peaks do not mix:

* CPU: peak RSS (VmHWM of /proc/self/status; the kernel's high-water mark is reset when training starts) and the
  RSS just before training starts; the table shows their difference, the JSON both;
* CUDA: torch.cuda.max_memory_allocated and the memory allocated when training starts.

A second, smaller section measures reward scoring: avalign.AVARewardModel.score against the same backbone
scored as an AutoModelForSequenceClassification, on the same texts.

    python benchmarks/train_step.py --preset cpu --markdown out.md --json out.json
    python benchmarks/train_step.py --preset gpu --methods ava-p dpo-live sft
    python benchmarks/train_step.py --preset gpu --dry-run       # settings and model size only
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    TrainerCallback,
    set_seed,
)
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling modules, however this one is loaded
from common import (  # noqa: E402
    current_rss, machine_info, peak_rss, reset_peak_rss, run_command, synchronize, versions)

from avalign import AVAConfig, AVARewardModel, AVATrainer, TQRModel
from avalign.backbones import build_backbone
from avalign.data.synthetic import SPECIAL_TOKENS
from avalign.trainers.baselines import bradley_terry_trainer, bt_config

MIB = 2**20
SEED = 0


# -- presets ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    description: str
    arch: str  # build_backbone architecture
    vocab_size: int  # model and tokenizer vocabulary (a word-level tokenizer of that size)
    hidden_size: int
    num_layers: int
    num_heads: int
    prompt_words: tuple[int, int]  # inclusive ranges of words (one token each)
    response_words: tuple[int, int]
    max_length: int  # of every trainer; must exceed the longest prompt + response + EOS
    batch_pairs: int = 8
    warmup_steps: int = 2
    measured_steps: int = 8
    bf16: bool = False
    device: str = "cpu"
    scoring_sequences: int = 64
    scoring_batch_size: int = 16
    # torch intra-op threads per process (None: torch's default, one per core). The cpu preset uses 1: on a shared
    # machine, a second process makes 2-thread OpenMP regions wait for a descheduled thread at every op, which
    # inflated a 0.44 s step to 5.5 s on 2 cores and made step times count ops rather than work.
    threads: int | None = None
    # Attention implementation of ava-p-packed: with sdpa a packed row attends over all of its tokens (masked),
    # flex_attention skips the blocks between sequences.
    packed_attention: str = "sdpa"
    # Seconds one method's process may take before it is recorded as failed and the next one starts.
    method_timeout_s: int | None = None
    # Exact config values where build_backbone's fixed ratios (intermediate = 2 x hidden, KV heads = heads / 2)
    # do not give the wanted shape.
    config_overrides: dict = field(default_factory=dict)


PRESETS = {
    "cpu": Preset(
        description="tiny Llama (build_backbone), fp32 on CPU; the whole run takes a few minutes on 2 cores",
        arch="llama", vocab_size=4096, hidden_size=256, num_layers=4, num_heads=4,
        prompt_words=(24, 48), response_words=(64, 160), max_length=256, threads=1,
    ),
    "gpu": Preset(
        description="Qwen2-0.5B shape with random weights, bf16 mixed precision on one CUDA device",
        arch="qwen2", vocab_size=151_936, hidden_size=896, num_layers=24, num_heads=14,
        prompt_words=(128, 256), response_words=(512, 766), max_length=1024,
        warmup_steps=3, measured_steps=10, bf16=True, device="cuda", scoring_sequences=256, scoring_batch_size=32,
        packed_attention="flex_attention", method_timeout_s=120,
        config_overrides=dict(intermediate_size=4864, num_key_value_heads=2, max_position_embeddings=32_768,
                              rope_parameters={"rope_theta": 1_000_000.0, "rope_type": "default"}),
    ),
    "smoke": Preset(
        description="for tests only: a few seconds per method",
        arch="llama", vocab_size=96, hidden_size=32, num_layers=1, num_heads=2,
        prompt_words=(2, 5), response_words=(3, 8), max_length=16, batch_pairs=2, warmup_steps=1, measured_steps=2,
        scoring_sequences=8, scoring_batch_size=4, threads=1,
    ),
}


# -- model, tokenizer and data: deterministic functions of the preset -------------------------------------
def pseudo_words(count: int) -> list[str]:
    """``count`` distinct lowercase pseudo-words (consonant-vowel syllables), shortest first."""
    syllables = ["".join(p) for p in itertools.product("bdfgklmnprstvz", "aeiou")]
    words = (("".join(s) for s in itertools.product(syllables, repeat=n)) for n in itertools.count(1))
    return list(itertools.islice(itertools.chain.from_iterable(words), count))


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer like the synthetic task's (avalign.data.synthetic), with ``vocab_size`` tokens."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS.values())}
    vocab.update({word: len(vocab) + i for i, word in enumerate(pseudo_words(vocab_size - len(vocab)))})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=SPECIAL_TOKENS["pad"], bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"], unk_token=SPECIAL_TOKENS["unk"],
    )


def build_model(preset: Preset, tokenizer: PreTrainedTokenizerFast, device: str | torch.device = "cpu"):
    """The backbone every method starts from: build_backbone, plus the preset's exact config values if any."""
    kwargs = dict(
        hidden_size=preset.hidden_size, num_layers=preset.num_layers, num_heads=preset.num_heads,
        max_positions=max(preset.max_length, 256), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, seed=SEED,
    )
    if not preset.config_overrides and str(device) != "meta":
        return build_backbone(preset.arch, preset.vocab_size, **kwargs)
    with torch.device("meta"):  # only the config is wanted here
        config = build_backbone(preset.arch, preset.vocab_size, **kwargs).config
    for key, value in preset.config_overrides.items():
        setattr(config, key, value)
    torch.manual_seed(SEED)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config)


def make_pairs(preset: Preset, tokenizer: PreTrainedTokenizerFast, num_pairs: int, seed: int = SEED) -> list[dict]:
    """Preference rows in TRL's standard format: random words of the tokenizer, one token per word."""
    words = [w for w in tokenizer.get_vocab() if w not in SPECIAL_TOKENS.values()]
    rng = np.random.default_rng(seed)

    def text(length_range):
        return " ".join(rng.choice(words, size=int(rng.integers(*length_range, endpoint=True))))

    return [
        {"prompt": text(preset.prompt_words), "chosen": " " + text(preset.response_words),
         "rejected": " " + text(preset.response_words)}
        for _ in range(num_pairs)
    ]


def pair_token_counts(pairs: list[dict], tokenizer) -> dict[str, int]:
    """Tokens of a batch counted from the text: prompt + chosen + EOS and prompt + rejected + EOS per pair."""
    def n(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    chosen = [n(p["prompt"]) + n(p["chosen"]) + 1 for p in pairs]
    rejected = [n(p["prompt"]) + n(p["rejected"]) + 1 for p in pairs]
    return {"pair_tokens": sum(chosen) + sum(rejected), "chosen_tokens": sum(chosen),
            "longest_sequence": max(chosen + rejected)}


# -- one method in one process ----------------------------------------------------------------------------
class StepRecorder(TrainerCallback):
    """Times each optimizer step (on_step_begin .. on_step_end) and records memory from the start of training."""

    def __init__(self, device: torch.device):
        self.device, self.step_seconds, self.memory = device, [], {}
        self._start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.memory["baseline_bytes"] = torch.cuda.memory_allocated(self.device)
        else:
            self.memory["peak_reset"] = reset_peak_rss()
            self.memory["baseline_bytes"] = current_rss()

    def on_step_begin(self, args, state, control, **kwargs):
        synchronize(self.device)
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize(self.device)
        self.step_seconds.append(time.perf_counter() - self._start)

    def on_train_end(self, args, state, control, **kwargs):
        synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else peak_rss()
        self.memory["peak_abs_bytes"] = peak
        self.memory["peak_bytes"] = peak - self.memory["baseline_bytes"]


def training_args(preset: Preset, output_dir: str, batch_size: int) -> dict:
    """TrainingArguments shared by every method (each config class gets exactly these)."""
    return dict(
        output_dir=output_dir, seed=SEED, max_steps=preset.warmup_steps + preset.measured_steps,
        per_device_train_batch_size=batch_size, learning_rate=1e-5, bf16=preset.bf16, fp16=False,
        activation_checkpointing=False, report_to="none", disable_tqdm=True, logging_strategy="no",
        save_strategy="no", eval_strategy="no", dataloader_num_workers=0, use_cpu=preset.device == "cpu",
    )


def _ava(objective, padding_free=False, q_kernel="torch"):
    def build(model_dir, tokenizer, pairs, preset, output_dir):
        args = AVAConfig(objective=objective, max_length=preset.max_length, padding_free=padding_free,
                         q_kernel=q_kernel, **training_args(preset, output_dir, preset.batch_pairs))
        attention = {"attn_implementation": preset.packed_attention} if padding_free else {}
        model = TQRModel.from_pretrained(model_dir, args.tqr_config(), **attention)
        # ava-d: AVATrainer keeps the chosen responses of preference rows as its demonstrations.
        return AVATrainer(model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer)
    return build


def _dpo(precompute):
    def build(model_dir, tokenizer, pairs, preset, output_dir):
        args = DPOConfig(precompute_ref_log_probs=precompute, max_length=preset.max_length,
                         **training_args(preset, output_dir, preset.batch_pairs))
        model = AutoModelForCausalLM.from_pretrained(model_dir)  # the live reference is loaded from the same path
        return DPOTrainer(model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer)
    return build


def _bt(model_dir, tokenizer, pairs, preset, output_dir):
    args = bt_config(max_length=preset.max_length, **training_args(preset, output_dir, preset.batch_pairs))
    return bradley_terry_trainer(model_dir, tokenizer, Dataset.from_list(pairs), None, args)


def _sft(model_dir, tokenizer, pairs, preset, output_dir):
    rows = [{"prompt": p["prompt"], "completion": p[key]} for key in ("chosen", "rejected") for p in pairs]
    args = SFTConfig(max_length=preset.max_length, **training_args(preset, output_dir, 2 * preset.batch_pairs))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return SFTTrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


METHODS = {
    "ava-p": _ava("ava-p"),
    "ava-d": _ava("ava-d"),
    "dpo-live": _dpo(False),
    "dpo-precomputed": _dpo(True),
    "bt": _bt,
    "sft": _sft,
    "ava-p-triton": _ava("ava-p", q_kernel="triton"),
    "ava-p-packed": _ava("ava-p", padding_free=True),  # last: on a GPU it compiles flex attention first
}
CUDA_ONLY = ("ava-p-triton",)  # the kernels run on CPU only in Triton's (slow) interpreter


def batch_tokens(batch: dict) -> dict[str, int]:
    """Real (non-pad) and padded token counts of one collated batch."""
    ids = batch["input_ids"]
    mask = batch["attention_mask"] if "attention_mask" in batch else torch.ones_like(ids)
    return {"tokens_per_step": int(mask.sum()), "padded_tokens_per_step": ids.numel(), "rows_per_step": ids.shape[0]}


def measure(method: str, preset: Preset, model_dir: str) -> dict:
    """One method's training steps, in this process. The dataset is exactly one batch, so every step trains
    on the same tokens (the sampler only reorders rows within it)."""
    set_seed(SEED)
    device = torch.device("cuda" if preset.device == "cuda" else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = make_pairs(preset, tokenizer, preset.batch_pairs)
    recorder = StepRecorder(device)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = METHODS[method](model_dir, tokenizer, pairs, preset, output_dir)
        trainer.add_callback(recorder)
        counts = batch_tokens(next(iter(trainer.get_train_dataloader())))
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
        checkpointing = any(getattr(m, "is_activation_checkpointing", False) for m in trainer.model.modules())
    measured = recorder.step_seconds[preset.warmup_steps:]
    step_s = statistics.median(measured)
    return {
        "step_s": step_s,
        "tokens_per_s": counts["tokens_per_step"] / step_s,
        **recorder.memory,
        **counts,
        "step_times_s": recorder.step_seconds,
        "warmup_steps": preset.warmup_steps,
        "train_seconds": train_seconds,
        "activation_checkpointing": checkpointing,
    }


def _score_classifier(model, tokenizer, prompts, responses, batch_size, device):
    scores = []
    texts = [p + r + tokenizer.eos_token for p, r in zip(prompts, responses)]
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], padding=True, add_special_tokens=False,
                          return_tensors="pt")
        scores += model(**batch.to(device)).logits[:, 0].float().tolist()
    return scores


def measure_scoring(preset: Preset, model_dir: str, repeats: int = 3) -> dict:
    """Sequences/s of AVARewardModel.score and of a sequence classifier on the same (prompt, response) texts.
    Both times include tokenisation, batching and the forward; median over ``repeats`` after one warm-up."""
    set_seed(SEED)
    device = torch.device("cuda" if preset.device == "cuda" else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = make_pairs(preset, tokenizer, preset.scoring_sequences, seed=SEED + 1)
    prompts, responses = [p["prompt"] for p in pairs], [p["chosen"] for p in pairs]
    ava = AVARewardModel(TQRModel.from_pretrained(model_dir), tokenizer, max_length=preset.max_length,
                         batch_size=preset.scoring_batch_size, device=device)
    classifier = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1).to(device).eval()
    classifier.config.pad_token_id = tokenizer.pad_token_id
    scorers = {
        "avalign.AVARewardModel.score": lambda n: ava.score(prompts[:n], responses[:n]),
        "AutoModelForSequenceClassification": lambda n: _score_classifier(
            classifier, tokenizer, prompts[:n], responses[:n], preset.scoring_batch_size, device),
    }
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=preset.bf16)
    results = {}
    with torch.no_grad(), autocast:
        for name, score in scorers.items():
            score(preset.scoring_batch_size)  # warm-up
            seconds = []
            for _ in range(repeats):
                synchronize(device)
                start = time.perf_counter()
                score(len(prompts))
                synchronize(device)
                seconds.append(time.perf_counter() - start)
            results[name] = {"seconds": statistics.median(seconds), "sequences": len(prompts),
                             "sequences_per_s": len(prompts) / statistics.median(seconds)}
    results["batch_size"] = preset.scoring_batch_size
    return results


def measure_matmul(preset: Preset, repeats: int = 20) -> dict:
    """Measured dense matmul rate in the training precision (bf16 on CUDA, float32 on CPU)."""
    device = torch.device("cuda" if preset.device == "cuda" else "cpu")
    dtype = torch.bfloat16 if preset.bf16 else torch.float32
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    seconds = (time.perf_counter() - start) / repeats
    return {"flops_per_s": 2 * n**3 / seconds, "n": n, "dtype": str(dtype).replace("torch.", "")}


# -- driver -----------------------------------------------------------------------------------------------
def run_in_subprocess(task: str, preset_name: str, model_dir: str, env: dict, threads: int | None,
                      timeout: int | None = None) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--preset", preset_name, "--worker", task,
               "--model-dir", model_dir]
    if threads is not None:
        command += ["--threads", str(threads)]
    return run_command(command, env, timeout)


def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def render(report: dict) -> str:
    s, m, t = report["settings"], report["machine"], report["tokens"]
    methods = report["methods"]
    ok = {name: r for name, r in methods.items() if "error" not in r}

    def ref(name, key):
        return ok[name][key] if name in ok else None

    load = {when: " / ".join(f"{x:.2f}" for x in values) for when, values in report["load_average"].items()}
    checkpointing = [n for n, r in ok.items() if r["activation_checkpointing"]]
    memory_kind = ("torch.cuda.max_memory_allocated minus the memory allocated when training starts"
                   if s["device"] == "cuda" else
                   "peak RSS (VmHWM, high-water mark reset when training starts) minus the RSS then")
    lines = [
        f"# Training step: AVA vs DPO, Bradley-Terry and SFT (preset `{report['preset']}`)",
        "",
        f"- date: {report['date']}; command: `{report['command']}`",
        f"- machine: {m['cpu_model']}, nproc {m['nproc']}, {m['machine']}"
        + (f", GPU {m['gpu']}" if "gpu" in m else "") + f"; device {s['device']}; torch threads per process: "
        + (str(s["threads"]) if s.get("threads") else "torch default"),
        f"- load average at start (1/5/15 min): {load['start']}; at end: {load['end']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- model: {s['model']}, {s['parameters']:,} parameters, random weights (seed {SEED}),"
        f" {'bf16 mixed precision' if s['bf16'] else 'float32'}; the same saved weights for every method",
        f"- batch: {s['batch_pairs']} pairs, the same batch at every step; {t['pair_tokens']:,} tokens per step "
        f"= prompt+chosen+EOS and prompt+rejected+EOS over the batch; longest sequence {t['longest_sequence']}"
        f" < max_length {s['max_length']} of every trainer, so nothing is truncated",
        f"- step: the Trainer's own step between on_step_begin and on_step_end (forward, backward, grad clipping,"
        f" {s['optim']} step, zero_grad); median of {s['measured_steps']} steps after {s['warmup_steps']}"
        " warm-up steps",
        f"- peak memory: {memory_kind}; each method in its own process",
        "",
        "| method | median step (s) | min-max (s) | tokens / step | tokens/s | peak mem delta (MiB) "
        "| peak mem abs (MiB) | step time / SFT | tokens/s vs DPO-live | tokens/s vs DPO-precomputed "
        "| peak mem / SFT |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in methods.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'].splitlines()[-1][:120]} |" + " |" * 10)
            continue
        measured = r["step_times_s"][r["warmup_steps"]:]
        cells = [
            name, f"{r['step_s']:.3f}", f"{min(measured):.2f}-{max(measured):.2f}", f"{r['tokens_per_step']:,}",
            f"{r['tokens_per_s']:,.0f}",
            f"{r['peak_bytes'] / MIB:,.0f}", f"{r['peak_abs_bytes'] / MIB:,.0f}",
            ratio(r["step_s"], ref("sft", "step_s")), ratio(r["tokens_per_s"], ref("dpo-live", "tokens_per_s")),
            ratio(r["tokens_per_s"], ref("dpo-precomputed", "tokens_per_s")),
            ratio(r["peak_bytes"], ref("sft", "peak_bytes")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    same = sorted(n for n, r in ok.items() if r["tokens_per_step"] == t["pair_tokens"])
    lines += [
        "",
        f"- tokens / step: real (non-pad) tokens of the collated batch each trainer trains on, counted from its own"
        f" dataloader. Equal to the {t['pair_tokens']:,} pair tokens for: {', '.join(same) or 'none'}; so tokens/s"
        f" compares the same tokens. ava-d trains on the chosen responses only ({t['chosen_tokens']:,} tokens), so its"
        f" tokens/s is over half the batch. dpo-live also runs a no-grad reference forward over the same tokens"
        f" (not counted twice); dpo-precomputed did that once, before training (not timed).",
        "- activation checkpointing: "
        + (f"on in {', '.join(checkpointing)}" if checkpointing else "off in every trainer (checked after training)")
        + "; min-max: fastest and slowest measured step.",
        "- peak mem delta: above the memory held when training starts (model, reference model, data); it contains"
        " gradients, AdamW state, activations and temporaries. peak mem abs also holds the weights (and"
        " dpo-live's reference model)"
        + ("." if s["device"] == "cuda" else " and the Python, torch and library code and data (RSS)."),
    ]
    mfu = report.get("mfu", {})
    if "ava-p" in mfu:
        lines.append(
            f"- matmul rate measured in this run: {report['matmul']['flops_per_s'] / 1e12:.3f} TFLOP/s"
            f" ({report['matmul']['dtype']}, {report['matmul']['n']}^3); model FLOPs utilisation of ava-p"
            f" = 6 x {s['parameters']:,} parameters x {t['pair_tokens']:,} tokens / step time / that rate"
            f" = {mfu['ava-p']:.1%}"
        )
    scoring = report.get("scoring")
    if scoring:
        lines += ["", "## Reward scoring throughput", ""]
        if "error" in scoring:
            lines.append(f"failed: {scoring['error'].splitlines()[-1]}")
        else:
            lines += [
                f"Same backbone weights, {next(iter(scoring.values()))['sequences']} (prompt, response) texts,"
                f" batch size {scoring['batch_size']}, no gradients; time includes tokenisation and batching;"
                " median of 3 passes after a warm-up.",
                "",
                "| scorer | seconds | sequences/s |",
                "|---|---:|---:|",
            ]
            lines += [f"| {name} | {r['seconds']:.3f} | {r['sequences_per_s']:,.1f} |"
                      for name, r in scoring.items() if isinstance(r, dict)]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="model shape, data and device")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS),
                        help="subset to run (default: all; on CPU all but " + ", ".join(CUDA_ONLY) + ")")
    parser.add_argument("--no-scoring", action="store_true", help="skip the reward scoring section")
    parser.add_argument("--markdown", metavar="FILE", help="also write the markdown report here")
    parser.add_argument("--json", metavar="FILE", help="write the raw measurements here")
    parser.add_argument("--dry-run", action="store_true", help="print settings and model size, measure nothing")
    parser.add_argument("--threads", type=int, help="torch threads per process (default: the preset's)")
    # Internal: run one measurement in this process and print it as JSON.
    parser.add_argument("--worker", choices=[*METHODS, "scoring", "matmul"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    if args.methods is None:
        args.methods = [m for m in METHODS if preset.device == "cuda" or m not in CUDA_ONLY]
    if args.threads is not None:
        preset = dataclasses.replace(preset, threads=args.threads)
    if args.worker:
        if preset.threads is not None:
            torch.set_num_threads(preset.threads)
        if args.worker == "scoring":
            result = measure_scoring(preset, args.model_dir)
        elif args.worker == "matmul":
            result = measure_matmul(preset)
        else:
            result = measure(args.worker, preset, args.model_dir)
        print(json.dumps(result))
        return

    load_start = os.getloadavg()
    if preset.device == "cuda" and not torch.cuda.is_available() and not args.dry_run:
        sys.exit(f"preset {args.preset} needs a CUDA device")
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + sys.argv[1:])
    tokenizer = word_tokenizer(preset.vocab_size)
    tokens = pair_token_counts(make_pairs(preset, tokenizer, preset.batch_pairs), tokenizer)
    if tokens["longest_sequence"] >= preset.max_length:
        sys.exit(f"longest sequence {tokens['longest_sequence']} does not fit max_length {preset.max_length}")
    model = build_model(preset, tokenizer, device="meta" if args.dry_run else "cpu")
    config = model.config
    settings = {
        **{k: v for k, v in dataclasses.asdict(preset).items() if k != "config_overrides"},
        "model": f"{config.model_type}, hidden {config.hidden_size}, {config.num_hidden_layers} layers,"
                 f" {config.num_attention_heads} heads ({config.num_key_value_heads} KV),"
                 f" intermediate {config.intermediate_size}, vocab {config.vocab_size},"
                 f" tied embeddings {config.tie_word_embeddings}",
        "config": {k: v for k, v in config.to_diff_dict().items() if isinstance(v, (int, float, str, bool))},
        "parameters": sum(p.numel() for p in model.parameters()),
        "optim": getattr(AVAConfig(output_dir=tempfile.gettempdir(), report_to="none").optim, "value", None),
        "learning_rate": 1e-5,
        "methods": args.methods,
    }
    if args.dry_run:
        print(json.dumps({"preset": args.preset, "settings": settings, "tokens": tokens}, indent=2, default=str))
        return

    report = {"preset": args.preset, "date": datetime.date.today().isoformat(), "command": command,
              "machine": machine_info(), "versions": versions(), "settings": settings, "tokens": tokens}
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = os.path.join(workdir, "model")
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        del model
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "TQDM_DISABLE": "1", "HF_DATASETS_CACHE": os.path.join(workdir, "datasets-cache")}
        report["methods"] = {}
        for method in args.methods:
            print(f"[train_step] {method} ...", file=sys.stderr, flush=True)
            report["methods"][method] = run_in_subprocess(method, args.preset, model_dir, env, preset.threads,
                                                          preset.method_timeout_s)
            write(report, args.json)  # what is measured so far survives a run stopped from outside
        # The matmul rate and MFU right after the step timings, and both files written: scoring comes last.
        report["matmul"] = run_in_subprocess("matmul", args.preset, model_dir, env, preset.threads)
        if "flops_per_s" in report["matmul"]:
            report["mfu"] = {
                name: 6 * settings["parameters"] * r["tokens_per_step"] / r["step_s"] / report["matmul"]["flops_per_s"]
                for name, r in report["methods"].items() if "step_s" in r
            }
        report["load_average"] = {"start": load_start, "end": os.getloadavg()}
        write(report, args.json, args.markdown)
        if not args.no_scoring:
            print("[train_step] scoring ...", file=sys.stderr, flush=True)
            report["scoring"] = run_in_subprocess("scoring", args.preset, model_dir, env, preset.threads)
    report["load_average"]["end"] = os.getloadavg()
    write(report, args.json, args.markdown)
    print(render(report))


def write(report: dict, json_path: str | None, markdown_path: str | None = None) -> None:
    """Write the report as it stands: the JSON, and the markdown table when asked."""
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2, default=str)
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(render(report))

if __name__ == "__main__":
    main()
