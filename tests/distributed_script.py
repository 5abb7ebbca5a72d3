"""Run under torchrun by tests/test_distributed.py: a few AVA-p steps and an evaluation on 2 CPU processes."""

import json
import os
import sys

import torch.distributed as dist

from avalign import AVAConfig, AVATrainer, TQRModel
from avalign.data.collator import TQRCollator
from avalign.data.synthetic import synthetic_datasets

sys.path.insert(0, os.path.dirname(__file__))
from conftest import tiny_backbone  # noqa: E402


class RecordingCollator(TQRCollator):
    """Remembers the prompts of every batch this rank collates."""

    seen: list = []

    def __call__(self, features):
        self.seen.extend(tuple(f["prompt_ids"]) for f in features)
        return super().__call__(features)


def main(out_dir: str) -> None:
    train, eval_set, task = synthetic_datasets("preference", num_train=32, num_eval=20)
    tokenizer = task.tokenizer()
    args = AVAConfig(output_dir=out_dir, per_device_train_batch_size=4, per_device_eval_batch_size=3, max_steps=2,
                     logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                     ddp_backend="gloo", learning_rate=1e-3, max_length=64)
    trainer = AVATrainer(TQRModel(tiny_backbone("gpt2", tokenizer)), args=args, train_dataset=train,
                         eval_dataset=eval_set, processing_class=tokenizer,
                         data_collator=RecordingCollator(tokenizer.pad_token_id))
    trainer.train()
    seen_in_training = list(RecordingCollator.seen)
    metrics = trainer.evaluate()
    record = {"rank": dist.get_rank(), "world_size": dist.get_world_size(), "train_prompts": seen_in_training,
              "eval": metrics, "eval_rows_this_rank": len(RecordingCollator.seen) - len(seen_in_training)}
    with open(os.path.join(out_dir, f"rank{dist.get_rank()}.json"), "w") as handle:
        json.dump(record, handle)
    dist.barrier()
    dist.destroy_process_group()  # a clean shutdown; leaving it to interpreter exit can abort in gloo's threads


if __name__ == "__main__":
    main(sys.argv[1])
    # Skip interpreter teardown: under load, torch 2.13's CPU process group threads have aborted there
    # ("terminate called without an active exception") after all work was done and written.
    sys.stdout.flush()
    os._exit(0)
