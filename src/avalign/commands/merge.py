"""`avalign merge --model_name_or_path ADAPTER_DIR --output_dir DIR`: fold a LoRA adapter (saved by `avalign train
--use_peft`, any objective) into its base model's weights and write a plain model: a TQR model (backbone in its own
Hugging Face format + heads) for AVA objectives, a plain Hugging Face model for the TRL baselines. The last stdout
line is one JSON object."""

from __future__ import annotations

import argparse
import json
import os


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="avalign merge", description=__doc__)
    parser.add_argument("--model_name_or_path", required=True,
                        help="A directory written by `avalign train --use_peft` (adapter_config.json and the adapter).")
    parser.add_argument("--output_dir", required=True, help="Where to write the merged model and its tokenizer.")
    return parser.parse_args(argv)


def merge(path: str, output_dir: str) -> dict:
    """Load the base model named by the adapter, merge, save to ``output_dir`` with the tokenizer."""
    from transformers import AutoTokenizer

    from ..errors import ConfigError
    from ..modeling import ADAPTER_CONFIG_NAME, TQR_CONFIG_NAME, TQRModel

    if not os.path.isfile(os.path.join(path, ADAPTER_CONFIG_NAME)):
        raise ConfigError(f"{path} holds no PEFT adapter ({ADAPTER_CONFIG_NAME}): nothing to merge")
    if os.path.isfile(os.path.join(path, TQR_CONFIG_NAME)):
        model = TQRModel.from_pretrained(path).merge_and_unload()
    else:  # a TRL baseline: Bradley-Terry (sequence classification, one label) or a causal LM (DPO, SFT)
        from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification, PeftConfig

        if PeftConfig.from_pretrained(path).task_type == "SEQ_CLS":
            model = AutoPeftModelForSequenceClassification.from_pretrained(path, num_labels=1).merge_and_unload()
        else:
            model = AutoPeftModelForCausalLM.from_pretrained(path).merge_and_unload()
    model.save_pretrained(output_dir)
    AutoTokenizer.from_pretrained(path).save_pretrained(output_dir)
    return {"output_dir": output_dir, "model": type(model).__name__}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    print(json.dumps(merge(args.model_name_or_path, args.output_dir), sort_keys=True))
    return 0
