"""The reward-modeling study's methods: what each trains with, its label in reports and the score it ranks by.

Shared by the study (reward_modeling) and its report, which both import it and not each other."""

from __future__ import annotations

# objective id -> (trainer objective, AVAConfig switches, training data)
OBJECTIVES: dict[str, tuple[str, dict, str]] = {
    "bt": ("bt", {}, "pairs"),
    "preftrans": ("preftrans", {}, "pairs"),
    "ava-p": ("ava-p", {}, "pairs"),
    "ava-p-no-rwt": ("ava-p", {"use_reward_weights": False}, "pairs"),
    "ava-p-no-neg": ("ava-p", {"use_negative": False}, "pairs"),
    "ava-p-no-irl": ("ava-p", {"use_irl": False}, "pairs"),
    "ava-p-no-cer": ("ava-p", {"use_cer": False}, "pairs"),
    "ava-p-no-ptq": ("ava-p", {"pretrained_q": False}, "pairs"),
    "ava-d": ("ava-d", {}, "chosen"),
    "afd-bt": ("bt", {}, "afd"),
    "afd-preftrans": ("preftrans", {}, "afd"),
    "afd-ava-p": ("ava-p", {}, "afd"),
    "dpo": ("dpo", {}, "text"),  # TRL's DPOTrainer; scored by its implicit reward (DPOImplicitRewardModel)
    "oracle-probe": ("probe", {}, "none"),  # no training: a gold-supervised linear probe (gold tasks only)
}
LABELS = {
    "bt": "BT", "preftrans": "PrefTrans", "ava-p": "AVA-p", "ava-p-no-rwt": "AVA-p w/o rwt",
    "ava-p-no-neg": "AVA-p w/o neg", "ava-p-no-irl": "AVA-p w/o irl", "ava-p-no-cer": "AVA-p w/o cer",
    "ava-p-no-ptq": "AVA-p w/o ptq", "ava-d": "AVA-d (chosen only)", "afd-bt": "AfD + BT",
    "afd-preftrans": "AfD + PrefTrans", "afd-ava-p": "AfD + AVA-p", "dpo": "DPO (implicit reward)",
    "oracle-probe": "Oracle: linear probe on gold",
}
# The score each baseline is trained to rank with: BT's single output, the Preference Transformer's weighted return
# (Eq. 19 "sum") and DPO's implicit return. AVA's is its resolved AVAConfig.scoring (report.native_scoring).
NATIVE_SCORING = {"bt": "last", "preftrans": "sum", "dpo": "sum"}
