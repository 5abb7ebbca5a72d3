"""Backbone preparation for machines without pretrained weights: causal-LM pretraining of a from-scratch
backbone on the training split's texts, so that AVA's pretrained Q head (Eq. 12) starts from a real language model
instead of a near-uniform one (whose TD errors are ~0 and teach the reward head nothing)."""

from __future__ import annotations

from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments


def pretrain_causal_lm(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], *, output_dir: str,
    max_steps: int, batch_size: int = 16, learning_rate: float = 1e-3, max_length: int = 256, seed: int = 0,
    warmup_ratio: float = 0.05, disable_tqdm: bool = True,
) -> dict:
    """Next-token training of ``model`` on ``texts`` (each + EOS, cut to ``max_length`` tokens) with the Hugging Face
    Trainer; saves model and tokenizer to ``output_dir`` and returns the first and last logged training loss."""
    eos = tokenizer.eos_token_id
    ids = [row[: max_length - 1] + [eos] for row in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    args = TrainingArguments(
        output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=batch_size,
        learning_rate=learning_rate, warmup_steps=int(warmup_ratio * max_steps), lr_scheduler_type="cosine",
        logging_steps=max(1, max_steps // 10), save_strategy="no", report_to="none", seed=seed,
        disable_tqdm=disable_tqdm, use_cpu=not model.device.type == "cuda",
    )
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": ids}),
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.train()
    trainer.save_model(output_dir)
    tokenizer.save_pretrained(output_dir)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"first_loss": losses[0], "last_loss": losses[-1], "texts": len(ids), "steps": max_steps}
