"""The uncertainty study (issue 13): does AVA's sigma know where its reward mean is wrong, and does optimising
against w*mu - kappa*sigma hold off over-optimisation, next to ensembles of Bradley-Terry models (Coste et al. 2023)?

On gold tasks (the synthetic task, the stories260K task) every unit (task instance x seed) trains, from one
prepared backbone: BT, a 5-model BT ensemble of 5x the budget (BT and four more seeds) and one of the same total
budget (5 models of a fifth of the steps), the Preference Transformer, AVA-p and DPO. Then:

1. **Calibration**: per token and per response, the rank correlation of each method's uncertainty (AVA's sigma,
   the ensemble's spread) with |gold - prediction| after an affine fit of the prediction to gold on one half of the
   evaluation responses (scored on the other half); interval coverage after scaling the uncertainty on the first
   half; and the uncertainty and error on drifted responses (each prompt's best of ``n`` samples under the method's
   own mean score) against plain samples.
2. **Best-of-N curves** (Gao et al. 2022): the expected gold return of the best of N samples under each proxy, for
   N = 1, 2, ..., ``n``, from ``n`` samples per prompt with the unbiased estimator (every N-subset of the samples).
   kappa (AVA) and the lower-bound k (ensembles) are chosen on the development datasets only.
3. **PPO curves**: gold return against KL along PPO runs on each reward (``ppo_rewards``).

Cells are cached like the reward study's: results.json keeps what finished; an interrupted run resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .proxies import ENSEMBLES, MEMBERS, PPO_REWARDS, ensemble_members
from .reward_modeling import StudyConfig, _unit_key, make_pool, prepare_unit, run_cell, run_jobs, set_worker_threads, \
    unit_path
from .uncertainty_report import write_report


@dataclass
class UncertaintyConfig(StudyConfig):
    """A reward-study config (objectives: bt, preftrans, ava-p, dpo) plus what this study needs."""

    dev_datasets: list[str] = field(default_factory=list)  # datasets that only choose kappa and k
    candidates: dict = field(default_factory=lambda: {"prompts": 48, "n": 256, "max_new_tokens": 24,
                                                      "batch_size": 64})
    kappas: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5, 1.0, 2.0])
    ensemble_ks: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    ppo: dict = field(default_factory=dict)  # PPOConfig fields
    ppo_rewards: list[str] = field(default_factory=lambda: list(PPO_REWARDS))
    ppo_datasets: list[str] | None = None  # default: every test dataset
    ppo_seeds: list[int] | None = None  # default: every seed

    @classmethod
    def from_yaml(cls, path: str, **overrides: Any) -> "UncertaintyConfig":
        config = super().from_yaml(path, **overrides)
        names = [spec.name for spec in config.datasets]
        for name in config.dev_datasets + (config.ppo_datasets or []):
            if name not in names:
                raise ConfigError(f"{path}: dataset '{name}' is not under datasets {names}")
        unknown = set(config.ppo_rewards) - set(PPO_REWARDS)
        if unknown:
            raise ConfigError(f"{path}: unknown ppo_rewards {sorted(unknown)}; expected some of {list(PPO_REWARDS)}")
        return config

    def __post_init__(self):
        # Every trained model of a unit: name -> (objective, seed offset). Ensemble member m trains with seed
        # + 1000 m (its own head initialisation and data order); the members besides BT are variants of BT, which
        # run_cell trains, the same-budget ensemble's with a fifth of the steps.
        self.members = {name: (name, 0) for name in self.objectives}
        steps = max(1, self.training.max_steps // MEMBERS)
        for ensemble in ENSEMBLES:
            for m, name in enumerate(ensemble_members(ensemble)):
                self.members[name] = ("bt", 1000 * m)
                if name != "bt":
                    budget = {} if ENSEMBLES[ensemble] == MEMBERS else {"max_steps": steps}
                    self.variants[name] = {"objective": "bt", **budget}


# -- gold, samples and scores of one unit -------------------------------------------------------------------------


def _task_of(spec, tokenizer):
    """The gold task of a dataset spec (the stories table spans the unit's tokenizer)."""
    from ..data.synthetic import SyntheticTask, SyntheticTaskConfig

    if spec.gold_task is None:
        return SyntheticTask(SyntheticTaskConfig(seed=spec.synthetic_task_seed))
    from ..data.stories_gold import StoriesGoldConfig, StoriesGoldTask

    return StoriesGoldTask(len(tokenizer), StoriesGoldConfig(seed=spec.synthetic_task_seed))


def sample_candidates(backbone_path: str, tokenizer, prompts: list[list[int]], n: int, max_new_tokens: int,
                      batch_size: int, seed: int) -> list[list[int]]:
    """``n`` responses per prompt (token ids, each ending with EOS unless cut at ``max_new_tokens``) sampled from the
    backbone at temperature 1 without truncation, prompt after prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(backbone_path).eval()
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    responses = []
    with torch.no_grad():
        for prompt in prompts:
            for start in range(0, n, batch_size):
                generated = model.generate(
                    input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                    do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=max_new_tokens,
                    num_return_sequences=min(batch_size, n - start), pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=eos)[:, len(prompt):].tolist()
                responses += [tokens[:tokens.index(eos) + 1] if eos in tokens else tokens for tokens in generated]
    return responses


def _load_scorers(config: UncertaintyConfig, unit: Path, prep: dict, names: list[str] | None = None,
                  kappa: float = 0.0) -> dict:
    """The unit's trained models (``names``, default all) as scorers, AVA's under ``kappa``; DPO's reference is the
    unit's backbone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..reward_model import AVARewardModel, BTRewardModel, DPOImplicitRewardModel
    from ..trainers.ava_config import AVAConfig

    settings = config.training
    kwargs = dict(max_length=settings.max_length, batch_size=settings.eval_batch_size)
    scorers = {}
    for name, (objective, _) in config.members.items():
        path = str(unit / "models" / name)
        if names is not None and name not in names:
            continue
        if objective == "bt":
            scorers[name] = BTRewardModel.from_pretrained(path, **kwargs)
        elif objective == "dpo":
            reference = AutoModelForCausalLM.from_pretrained(unit_path(unit, prep["backbone_path"]))
            scorers[name] = DPOImplicitRewardModel(AutoModelForCausalLM.from_pretrained(path), reference,
                                                   AutoTokenizer.from_pretrained(path),
                                                   beta=AVAConfig.__dataclass_fields__["dpo_beta"].default, **kwargs)
        else:
            scorers[name] = AVARewardModel.from_pretrained(path, kappa=kappa, **kwargs)
    return scorers


def token_values(scorers: dict, features: list[dict]) -> dict[str, list[np.ndarray]]:
    """Per response token (EOS included), for every model: ``<bt name>`` prefix differences (they sum to the
    response's score less the prompt's) and ``<bt name>/score`` (its score, one value), ``ava-p``/``preftrans`` w*mu,
    ``<name>/sigma`` and ``<name>/weight``, ``dpo`` the implicit reward. One array per row of ``features``."""
    from ..reward_model import AVARewardModel, BTRewardModel, token_rewards

    values: dict[str, list[np.ndarray]] = {}
    for name, scorer in scorers.items():
        rows, sigmas, weights, scores = [], [], [], []
        for start in range(0, len(features), scorer.batch_size):
            chunk = features[start:start + scorer.batch_size]
            if isinstance(scorer, BTRewardModel):  # one forward: every prefix's score, the last the response's
                prefixes = scorer.prefix_scores(chunk)
                rows += [p.diff().numpy() for p in prefixes]
                scores += [p[-1:].numpy() for p in prefixes]
            elif isinstance(scorer, AVARewardModel):
                out = scorer.forward_features(chunk)
                for m, s, w, valid in zip(token_rewards(out), out.reward_log_std.exp(), out.reward_weights, out.mask):
                    rows.append(m[valid].float().cpu().numpy())
                    sigmas.append(s[valid].float().cpu().numpy())
                    weights.append(w[valid].float().cpu().numpy())
            else:
                rows += [r.numpy() for r in scorer.token_readings(chunk)["implicit"]]
        values[name] = rows
        if sigmas:
            values[f"{name}/sigma"], values[f"{name}/weight"] = sigmas, weights
        if scores:
            values[f"{name}/score"] = scores
    return values


def bon_curve(proxy: np.ndarray, gold: np.ndarray, sizes: list[int]) -> dict[str, list[float]]:
    """Expected gold return and proxy score of the best of N samples under ``proxy``, averaged over prompts, for
    each N in ``sizes``: exact over every N-subset of each prompt's n samples (the sample of rank i, in ascending
    proxy order, is the best of a random N-subset with probability C(i-1, N-1) / C(n, N)). [prompts, n] inputs."""
    from scipy.special import gammaln

    n = proxy.shape[1]
    order = np.argsort(proxy, axis=1, kind="stable")
    gold_sorted, proxy_sorted = np.take_along_axis(gold, order, 1), np.take_along_axis(proxy, order, 1)
    rank = np.arange(1, n + 1)
    curve: dict[str, list[float]] = {"gold": [], "proxy": []}
    for size in sizes:
        log_weight = np.full(n, -np.inf)
        ok = rank >= size
        log_weight[ok] = (gammaln(rank[ok]) - gammaln(size) - gammaln(rank[ok] - size + 1)
                          - (gammaln(n + 1) - gammaln(size + 1) - gammaln(n - size + 1)))
        weight = np.exp(log_weight)
        curve["gold"].append(float((gold_sorted @ weight).mean()))
        curve["proxy"].append(float((proxy_sorted @ weight).mean()))
    return curve


def aggregate(scores: np.ndarray, ensemble: str, k: float = 1.0) -> np.ndarray:
    """An ensemble's score from its members' [members, n]: the library's ``aggregate_scores``."""
    import torch

    from ..reward_model import aggregate_scores

    return aggregate_scores(torch.as_tensor(scores, dtype=torch.float64), ensemble, k).numpy()


def calibration(prediction: list, gold: list, uncertainty: list, fit: np.ndarray, coverage: float = 0.9) -> dict:
    """How well ``uncertainty`` tracks the error of ``prediction`` against ``gold`` (flat arrays, one entry per
    token or response). On the rows where ``fit`` is true: an affine map of the prediction to gold (a reward model's
    scale and offset are arbitrary) and one scale c, so that |gold - fitted| <= c * uncertainty holds for
    ``coverage`` of them. On the others: the Spearman correlation of uncertainty with |error|, and the coverage."""
    from ..evaluation.dense import spearman

    prediction, gold, uncertainty = (np.asarray(v, dtype=float) for v in (prediction, gold, uncertainty))
    slope, intercept = np.polyfit(prediction[fit], gold[fit], 1)
    error = np.abs(gold - (slope * prediction + intercept))
    scale = float(np.quantile(error[fit] / np.maximum(uncertainty[fit], 1e-12), coverage))
    held = ~fit
    return {"spearman": spearman(uncertainty[held], error[held]),
            "coverage": float((error[held] <= scale * uncertainty[held]).mean()),
            "mean_uncertainty": float(uncertainty[held].mean()), "mean_error": float(error[held].mean()),
            "fit": [float(slope), float(intercept), scale], "n": int(held.sum())}


def apply_calibration(fitted: dict, prediction, gold, uncertainty) -> dict:
    """``calibration``'s affine map and scale, fitted elsewhere, on new rows (drifted responses)."""
    slope, intercept, scale = fitted["fit"]
    prediction, gold, uncertainty = (np.asarray(v, dtype=float) for v in (prediction, gold, uncertainty))
    error = np.abs(gold - (slope * prediction + intercept))
    return {"coverage": float((error <= scale * uncertainty).mean()), "mean_uncertainty": float(uncertainty.mean()),
            "mean_error": float(error.mean()), "n": len(error)}


def _posteriors(values: dict, n_rows: int) -> dict[str, tuple[list, list]]:
    """Per method with an uncertainty, per row: (token predictions, token uncertainties) over the response tokens
    without the final position (EOS, or the appended EOS: no gold reward), plus the sequence pair under key
    ``<method>/sequence``: (sum of predictions, uncertainty of the sum). AVA: w*mu and sigma; the return's sigma is
    sqrt(sum w^2 sigma^2) (independent token posteriors, Eq. 19's weights). Ensembles: the members' mean and spread
    (population std) of prefix differences and of their sums."""
    out = {}
    if "ava-p/sigma" in values:
        mean, sigma, weight = values["ava-p"], values["ava-p/sigma"], values["ava-p/weight"]
        out["ava-p"] = ([m[:-1] for m in mean], [s[:-1] for s in sigma])
        out["ava-p/sequence"] = ([m.sum() for m in mean], [np.sqrt(((w * s) ** 2).sum()) for w, s in zip(weight, sigma)])
    for ensemble in ENSEMBLES:
        names = ensemble_members(ensemble)
        if not all(name in values for name in names):
            continue
        tokens = [np.stack([values[name][row] for name in names]) for row in range(n_rows)]
        out[ensemble] = ([t.mean(0)[:-1] for t in tokens], [t.std(0)[:-1] for t in tokens])
        sums = [t.sum(1) for t in tokens]
        out[f"{ensemble}/sequence"] = ([s.mean() for s in sums], [s.std() for s in sums])
    return out


def sequence_scores(values: dict, kappas: list[float], ks: list[float]) -> dict[str, np.ndarray]:
    """Every proxy's sequence score of the rows ``values`` covers: each model's sum of token values (BT: its own
    score when given); AVA at each kappa, sum(w mu - kappa sigma) (``token_rewards``); each ensemble's mean, worst
    and mean - k std (``aggregate_scores``, as ``EnsembleRewardModel``) at each k."""
    scores = {name: np.array([v.sum() for v in values.get(f"{name}/score", rows)]) for name, rows in values.items()
              if "/" not in name}
    if "ava-p/sigma" in values:
        sigma_sums = np.array([s.sum() for s in values["ava-p/sigma"]])
        for kappa in kappas:
            scores[f"ava-p@{kappa:g}"] = scores["ava-p"] - kappa * sigma_sums
    for ensemble in ENSEMBLES:
        members = np.stack([scores[m] for m in ensemble_members(ensemble)])
        scores[f"{ensemble}-mean"] = aggregate(members, "mean")
        scores[f"{ensemble}-worst"] = aggregate(members, "worst")
        for k in ks:
            scores[f"{ensemble}-lcb@{k:g}"] = aggregate(members, "lcb", k)
    return scores


def analyse_unit(config: UncertaintyConfig, spec, seed: int, directory: str) -> dict:
    """Calibration and best-of-N curves of one trained unit (see the module docstring)."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from ..evaluation.dense import _gold_rows, _response_features
    from ..rl.rewards import GoldRewards

    set_worker_threads(config.workers)
    unit = Path(directory)
    prep = json.loads((unit / "prep.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(unit / "tokenizer"))
    scorers = _load_scorers(config, unit, prep)
    began = time.perf_counter()
    # the evaluation responses (the training distribution), chosen and rejected of each pair, halves by pair
    eval_ids, eval_gold = load_from_disk(str(unit / "eval_ids")), load_from_disk(str(unit / "eval_gold"))
    features = _response_features(eval_ids)
    gold_rows = _gold_rows(eval_gold)
    values = token_values(scorers, features)
    fit_rows = np.repeat(np.arange(len(features) // 2) % 2 == 0, 2)
    # the candidates: n samples of the backbone for each of the first distinct evaluation prompts
    c = config.candidates
    prompts = list(dict.fromkeys(tuple(p) for p in eval_ids["prompt_ids"]))[:c["prompts"]]
    responses = sample_candidates(unit_path(unit, prep["backbone_path"]), tokenizer, [list(p) for p in prompts],
                                  c["n"], c["max_new_tokens"], c["batch_size"], seed)
    prompt_of = [list(p) for p in prompts for _ in range(c["n"])]
    eos = tokenizer.eos_token_id
    with_eos = [r if r and r[-1] == eos else r + [eos] for r in responses]
    candidate_features = [{"prompt_ids": p, "completion_ids": r} for p, r in zip(prompt_of, with_eos)]
    candidate_values = token_values(scorers, candidate_features)  # the scorers run without gradients
    gold_source = GoldRewards(_task_of(spec, tokenizer), tokenizer)
    candidate_gold = [g.numpy()[:-1] for g in gold_source.token_rewards(prompt_of, with_eos)]
    gold_return = np.array([g.sum() for g in candidate_gold]).reshape(len(prompts), c["n"])
    scores = sequence_scores(candidate_values, config.kappas, config.ensemble_ks)
    sizes = [2 ** i for i in range(int(np.log2(c["n"])) + 1)]
    result: dict[str, Any] = {
        "sizes": sizes, "prompts": len(prompts), "empty_candidates": int(sum(len(r) <= 1 for r in with_eos)),
        "bon": {name: bon_curve(score.reshape(len(prompts), c["n"]), gold_return, sizes)
                for name, score in scores.items()},
        "calibration": {},
    }
    result["bon"]["gold"] = bon_curve(gold_return, gold_return, sizes)
    # calibration on the evaluation responses, and the same fit on drifted ones (best of n under the mean)
    posteriors, candidate_posteriors = _posteriors(values, len(features)), _posteriors(candidate_values,
                                                                                       len(candidate_features))
    token_fit = np.concatenate([np.full(min(len(g), len(p)), f) for g, p, f in
                                zip(gold_rows, posteriors.get("ava-p", posteriors["bt-ens"])[0], fit_rows)])
    for method in [m for m in posteriors if "/" not in m]:
        mean_score = {"ava-p": "ava-p", "bt-ens": "bt-ens-mean", "bt-ens-small": "bt-ens-small-mean"}[method]
        picks = scores[mean_score].reshape(len(prompts), c["n"]).argmax(1) + np.arange(len(prompts)) * c["n"]
        plain = np.arange(len(prompts)) * c["n"]  # each prompt's first sample: the undrifted policy
        entry = {}
        for level in ("token", "sequence"):
            key = method if level == "token" else f"{method}/sequence"
            prediction, uncertainty = posteriors[key]
            cand_prediction, cand_uncertainty = candidate_posteriors[key]
            if level == "token":
                flat = lambda rows, golds: np.concatenate([r[:len(g)] for r, g in zip(rows, golds)])  # noqa: E731
                fitted = calibration(flat(prediction, gold_rows), flat(gold_rows, prediction),
                                     flat(uncertainty, gold_rows), token_fit)
                drift = {name: apply_calibration(fitted, np.concatenate([cand_prediction[i] for i in rows]),
                                                 np.concatenate([candidate_gold[i] for i in rows]),
                                                 np.concatenate([cand_uncertainty[i] for i in rows]))
                         for name, rows in (("picked", picks), ("plain", plain))}
            else:
                fitted = calibration(prediction, [sum(g) for g in gold_rows], uncertainty, fit_rows)
                drift = {name: apply_calibration(fitted, [cand_prediction[i] for i in rows],
                                                 [candidate_gold[i].sum() for i in rows],
                                                 [cand_uncertainty[i] for i in rows])
                         for name, rows in (("picked", picks), ("plain", plain))}
            entry[level] = {**fitted, "drift": drift}
        result["calibration"][method] = entry
    result["seconds"] = round(time.perf_counter() - began, 1)
    return result


def ppo_rewards(scorers: dict, reward: str, pessimism: float, tokenizer):
    """The library's PPO token-reward source for one of ``PPO_REWARDS``: its model (an AVA model already carries
    its kappa), or an ensemble of its members under the chosen k, placed as the reward says."""
    from ..reward_model import EnsembleRewardModel
    from ..rl.rewards import RewardModelRewards

    model, placement, _ = PPO_REWARDS[reward]
    if model in ENSEMBLES:
        members = ensemble_members(model)
        k = pessimism if placement == "lcb" else 1.0  # mean and worst have no k
        source = EnsembleRewardModel([scorers[m] for m in members], placement, k, names=members)
        return RewardModelRewards(source, tokenizer, reward="last")
    return RewardModelRewards(scorers[model], tokenizer, reward=placement)


def ppo_models(reward: str) -> list[str]:
    model = PPO_REWARDS[reward][0]
    return ensemble_members(model) if model in ENSEMBLES else [model]


def ppo_cell(config: UncertaintyConfig, spec, reward: str, pessimism: float, seed: int, directory: str,
             work_dir: str) -> dict:
    """PPO from the unit's backbone on its training prompts with one reward; per update: KL, gold and proxy."""
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from ..rl import GoldRewards, PPOConfig, PPOTrainer

    set_worker_threads(config.workers)
    set_seed(seed)
    unit = Path(directory)
    prep = json.loads((unit / "prep.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(unit / "tokenizer"))
    kappa = pessimism if PPO_REWARDS[reward][2] == "kappa" else 0.0
    rewards = ppo_rewards(_load_scorers(config, unit, prep, ppo_models(reward), kappa=kappa), reward, pessimism,
                          tokenizer)
    prompts = list(dict.fromkeys(tokenizer.decode(p, skip_special_tokens=True)
                                 for p in load_from_disk(str(unit / "train_pairs"))["prompt_ids"]))
    policy = AutoModelForCausalLM.from_pretrained(unit_path(unit, prep["backbone_path"]))
    ppo = PPOConfig(**{**config.ppo, "seed": seed, "output_dir": work_dir, "disable_tqdm": True})
    began = time.perf_counter()
    history = PPOTrainer(policy, tokenizer, prompts, rewards, ppo,
                         gold=GoldRewards(_task_of(spec, tokenizer), tokenizer)).train()
    return {"seconds": round(time.perf_counter() - began, 1), "pessimism": pessimism,
            "curve": [[h["objective/kl"], h["gold/reward"], h["objective/scores"], h["response/empty"]]
                      for h in history]}


# -- the study ---------------------------------------------------------------------------------------------------


def choose_pessimism(config: UncertaintyConfig, analysis: dict) -> dict[str, float]:
    """kappa (AVA) and k (each ensemble's lower bound) with the highest mean best-of-n gold return at the largest N
    over the development datasets' units: the only place the test datasets' settings come from."""
    dev = [a for key, a in analysis.items() if key.split("|")[0] in config.dev_datasets]
    if not dev:
        raise ConfigError("choosing kappa and k needs dev_datasets with analysed units")
    chosen = {}
    for name, grid in (("ava-p", config.kappas), *((e + "-lcb", config.ensemble_ks) for e in ENSEMBLES)):
        final = {value: np.mean([a["bon"][f"{name}@{value:g}"]["gold"][-1] for a in dev]) for value in grid}
        chosen[name] = float(max(final, key=final.get))
    return chosen


def _key(spec, backbone, name: str, seed: int) -> str:
    return f"{spec.name}|{backbone.name}|{name}|{seed}"


def run_study(config: UncertaintyConfig, progress: bool = True, command: str | None = None) -> dict:
    """Prepare units, train every model, analyse each unit, choose kappa and k on the development units, run the
    PPO cells, and write results.json, results.md and the plots."""
    out = Path(config.output_dir)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for part in ("prep", "cells", "analysis", "ppo"):
        results.setdefault(part, {})
    units = [(spec, backbone, seed) for spec in config.datasets for backbone in config.backbones
             for seed in config.seeds if spec.backbones is None or backbone.name in spec.backbones]
    directory = {(s.name, b.name, seed): out / "cache" / _unit_key(config, s, b, seed) for s, b, seed in units}

    def save():
        results_path.write_text(json.dumps(results, indent=1))

    with make_pool(config.workers) as pool:
        jobs = {}
        for spec, backbone, seed in units:
            unit = directory[spec.name, backbone.name, seed]
            if not (unit / "prep.json").exists() or not (unit / "train_text").exists():
                unit.mkdir(parents=True, exist_ok=True)
                jobs[unit.name] = (prepare_unit, str(unit / "log.txt"), config, spec, backbone, seed, str(unit))
        run_jobs(pool, jobs, results["prep"], save, "preparing", progress)
        jobs = {}
        for spec, backbone, seed in units:
            unit = directory[spec.name, backbone.name, seed]
            for name, (_, offset) in config.members.items():
                key = _key(spec, backbone, name, seed)
                if key not in results["cells"] or not (unit / "models" / name).exists():
                    work = out / "work" / key.replace("|", "-")
                    jobs[key] = (run_cell, str(work / "log.txt"), config, name, seed + offset, str(unit), str(work),
                                 str(unit / "models" / name))
        run_jobs(pool, jobs, results["cells"], save, "training", progress)
        jobs = {}
        for spec, backbone, seed in units:
            key = _key(spec, backbone, "analysis", seed)
            if key not in results["analysis"]:
                unit = directory[spec.name, backbone.name, seed]
                jobs[key] = (analyse_unit, str(unit / "analysis-log.txt"), config, spec, seed, str(unit))
        run_jobs(pool, jobs, results["analysis"], save, "analysing", progress)
        results["chosen"] = chosen = choose_pessimism(config, results["analysis"])
        jobs = {}
        for spec, backbone, seed in units:
            if spec.name in config.dev_datasets or spec.name not in (config.ppo_datasets or [spec.name]) \
                    or seed not in (config.ppo_seeds or config.seeds):
                continue
            for reward in config.ppo_rewards:
                pessimism = {"kappa": chosen["ava-p"], "k": chosen["bt-ens-lcb"], None: 0.0}[PPO_REWARDS[reward][2]]
                key = _key(spec, backbone, reward, seed)
                # a cell run with another kappa or k (the development units changed) is run again
                if results["ppo"].get(key, {}).get("pessimism") != pessimism:
                    work = out / "work" / f"ppo-{key.replace('|', '-')}"
                    jobs[key] = (ppo_cell, str(work / "log.txt"), config, spec, reward, pessimism, seed,
                                 str(directory[spec.name, backbone.name, seed]), str(work))
        run_jobs(pool, jobs, results["ppo"], save, "ppo", progress)
    save()
    write_report(config, results, out, command)
    return results
