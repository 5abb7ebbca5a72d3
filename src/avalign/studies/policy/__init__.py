"""The policy study (the paper's Tables 2-5): AVA against its baselines as policies, in win / tie / lose rates.

One preparation per (dataset, seed) unit, cached on disk: the data split (fixed, shared by every seed and the judge),
the tokenizer, a from-scratch backbone LM-pretrained on the training texts, SFT of it on the chosen responses (the
initial policy), AfD pairs (chosen against a sample of the SFT policy) and the evaluation prompts. Then two rounds of
cells, each kept in results.json as it finishes (a rerun resumes):

1. ``sft``: one sample of the SFT policy per evaluation prompt, drawn as every other policy's is, and N candidates,
   all judged; any first N' candidates hold a best-of-N' sample (the first alone: plain sampling). From the SFT
   policy: the reward models AVA-p, BT and PrefTrans, and the policies DPO, AfD + DPO and AfD + AVA-p; from the
   pretrained LM (the start of SFT, with SFT's budget): AVA-d. The AVA-p reward model is also the AVA-p policy: with
   the pretrained Q its backbone is a language model.
2. With those reward models: best-of-N over the ``sft`` candidates, and PPO from the SFT policy.

A seed gives every system the same initial policy, data and sampling seed, so every comparison is paired by prompt.
Judges: the synthetic task's gold return, or on real data a Bradley-Terry judge trained once per dataset on more data
than the systems saw (their training split plus ``judge.paths``, minus any row whose prompt is an evaluation prompt).

The stages live in this package's modules: config (systems, tables, the YAML configuration), preparation, judging,
cells (SFT samples, training, best-of-N, PPO), study (running it all, resumably) and report."""

from .cells import best_index, run_cell
from .config import BON, PPO, TABLES, TRAINED, PolicyStudyConfig
from .report import compare, summarize, system_scores, write_report
from .study import run_study

__all__ = ["BON", "PPO", "TABLES", "TRAINED", "PolicyStudyConfig", "best_index", "compare", "run_cell", "run_study",
           "summarize", "system_scores", "write_report"]
