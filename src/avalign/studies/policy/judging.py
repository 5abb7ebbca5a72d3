"""The judge of a dataset (gold return or held-out reward model) and the judged evaluation samples every cell
records; judge scores as stored in results.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import DataError
from .config import PolicyDatasetSpec, PolicyStudyConfig, _judge_key


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _task(spec: PolicyDatasetSpec):
    """The synthetic task instance of a dataset without a path (its gold reward is the judge)."""
    from ...data.synthetic import SyntheticTask, SyntheticTaskConfig

    return SyntheticTask(SyntheticTaskConfig(seed=spec.synthetic_task_seed))


def _judge_scorer(config: PolicyStudyConfig, spec: PolicyDatasetSpec):
    """The judge as a scorer: gold returns on the synthetic task, the held-out judge's score otherwise."""
    from ...evaluation.judges import gold_scorer, reward_model_scorer

    if spec.judge is None:
        return gold_scorer(_task(spec))
    from ...reward_model import load_reward_model

    path = Path(config.output_dir) / "cache" / _judge_key(spec) / "judge"
    judge = load_reward_model(str(path), max_length=spec.judge.training.max_length,
                              batch_size=spec.judge.training.eval_batch_size, device=_device())
    return reward_model_scorer(judge, "last")


def _stored(scores) -> list:
    """Judge scores for results.json: -inf (a reward model's score of an empty completion) as null."""
    return [None if score == -np.inf else float(score) for score in scores]


def _loaded(scores) -> np.ndarray:
    values = np.array(scores, dtype=float)  # null -> nan
    return np.where(np.isnan(values), -np.inf, values)


def judged_samples(config: PolicyStudyConfig, spec: PolicyDatasetSpec, policy, tokenizer, seed: int, unit: Path,
                   output: Path, n: int = 1) -> list:
    """``n`` samples of ``policy`` per evaluation prompt (written to ``output``), and their judge scores."""
    from ...generation import generate_completions

    prompts = json.loads((unit / "prompts.json").read_text())
    settings = config.generation
    rows = generate_completions(policy, tokenizer, prompts, num_return_sequences=n, seed=seed,
                                max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                batch_size=settings.batch_size)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(json.dumps(row) + "\n" for row in rows))
    scores = np.asarray(_judge_scorer(config, spec)([r["prompt"] for r in rows], [r["completion"] for r in rows]))
    if np.isnan(scores).any():
        raise DataError(f"the judge cannot score {int(np.isnan(scores).sum())} completion(s), e.g. "
                        f"{rows[int(np.argmax(np.isnan(scores)))]['completion']!r:.80}", path=str(output))
    return _stored(scores)
