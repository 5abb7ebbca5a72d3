"""Every family parsed from its real file in ../shared/data: counts as SOURCES.md states them, TRL format, splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trl.data_utils import is_conversational, maybe_extract_prompt

from avalign.data import load_dataset
from avalign.data.cleaning import DUPLICATE, EMPTY_RESPONSE, SAME_RESPONSES
from avalign.data.families import PROMPT_MISMATCH
from avalign.data.formats import ASSISTANT, HUMAN, Record
from avalign.data.splits import group_key, split_by_prompt
from avalign.errors import DataError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def real(relative: str) -> str:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"real data not found at {path} (see shared/data/SOURCES.md)")
    return str(path)


def rows_of(loaded) -> list[dict]:
    return loaded.train.to_list() + (loaded.eval.to_list() if loaded.eval is not None else [])


def assert_trl(rows: list[dict], kind: str, conversational: bool) -> None:
    """Rows are in TRL's format: TRL's own helpers recognise them, and the prompt is explicit already."""
    columns = {"prompt", "chosen", "rejected"} if kind == "preference" else {"prompt", "completion"}
    for row in rows:
        assert set(row) == columns
        assert is_conversational(row) == conversational
        if kind == "preference":
            assert maybe_extract_prompt(row) == row
        if conversational:
            assert all(len(row[name]) == 1 and row[name][0]["role"] == "assistant" for name in columns - {"prompt"})
        else:
            assert all(row[name].startswith(" ") for name in columns - {"prompt"})


# --- HH-RLHF -------------------------------------------------------------------------------------------------------

# rows, chosen == rejected (SOURCES.md), prompts differing before the last turn (SOURCES.md), empty responses
HH_FILES = {
    "helpful-base-test.jsonl.gz": (2354, 2, 9, 4),
    "helpful-online-test.jsonl.gz": (1137, 2, 0, 3),
    "helpful-rejection-sampled-test.jsonl.gz": (2749, 32, 3, 0),
}


@pytest.mark.parametrize("name", HH_FILES)
def test_hh_rlhf_counts_match_sources(name):
    rows, same, mismatched, empty = HH_FILES[name]
    loaded = load_dataset(real(f"hh-rlhf/{name}"))
    assert loaded.family == "hh-rlhf" and loaded.kind == "preference"
    assert loaded.report.rows_in == rows
    assert loaded.report.dropped.get(SAME_RESPONSES, 0) == same
    assert loaded.report.dropped.get(PROMPT_MISMATCH, 0) == mismatched
    assert loaded.report.dropped.get(EMPTY_RESPONSE, 0) == empty
    assert loaded.report.rows_out == len(loaded.train) + len(loaded.eval) == rows - same - mismatched - empty


def test_hh_rlhf_standard_and_conversational_forms():
    path = real("hh-rlhf/helpful-base-test.jsonl.gz")
    standard = rows_of(load_dataset(path, eval_fraction=0.0))
    assert_trl(standard, "preference", conversational=False)
    assert all(row["prompt"].startswith(HUMAN) and row["prompt"].endswith(ASSISTANT) for row in standard)
    messages = rows_of(load_dataset(path, eval_fraction=0.0, conversational=True))
    assert_trl(messages, "preference", conversational=True)
    assert len(messages) == len(standard)
    for text, chat in zip(standard, messages):
        turns = [message["content"] for message in chat["prompt"]]
        assert chat["prompt"][0]["role"] == "user" and chat["prompt"][-1]["role"] == "user"
        assert text["prompt"].count(HUMAN) + text["prompt"].count(ASSISTANT) - 1 == len(turns)
        assert chat["chosen"][0]["content"] == text["chosen"].strip()


def test_hh_rlhf_directory_concatenates_the_three_files():
    loaded = load_dataset(real("hh-rlhf"))
    assert loaded.family == "hh-rlhf" and loaded.report.rows_in == sum(rows for rows, *_ in HH_FILES.values())
    assert load_dataset(real("hh-rlhf"), max_rows=100).report.rows_in == 100  # max_rows caps the whole split


# --- the prompt-grouped split, on real HH-RLHF ---------------------------------------------------------------------


def test_split_is_prompt_disjoint_reproducible_and_about_the_fraction():
    path = real("hh-rlhf/helpful-base-test.jsonl.gz")
    first = load_dataset(path, eval_fraction=0.2, seed=3)
    train_keys = {group_key(prompt) for prompt in first.train["prompt"]}
    eval_keys = {group_key(prompt) for prompt in first.eval["prompt"]}
    assert not train_keys & eval_keys
    assert not set(first.train["prompt"]) & set(first.eval["prompt"])
    # Branches of one conversation share their first human turn: grouping by it keeps them together.
    assert len(train_keys) + len(eval_keys) < len(first.train) + len(first.eval)
    assert 0.16 < len(eval_keys) / (len(train_keys) + len(eval_keys)) < 0.24

    again = load_dataset(path, eval_fraction=0.2, seed=3)
    assert again.eval["prompt"] == first.eval["prompt"] and again.train["prompt"] == first.train["prompt"]
    other_seed = load_dataset(path, eval_fraction=0.2, seed=4)
    assert set(other_seed.eval["prompt"]) != set(first.eval["prompt"])
    # The conversational form of the same data splits the same way.
    chat = load_dataset(path, eval_fraction=0.2, seed=3, conversational=True)
    assert len(chat.eval) == len(first.eval)


def test_split_does_not_depend_on_which_other_rows_exist():
    rows = [Record("x", i, {"prompt": f"prompt {i % 50}", "completion": " c"}) for i in range(200)]
    _, evaluation = split_by_prompt(rows, 0.3, seed=1)
    _, evaluation_of_half = split_by_prompt(rows[::2], 0.3, seed=1)
    assert {r.row for r in evaluation_of_half} == {r.row for r in evaluation} & {r.row for r in rows[::2]}


# --- summarize-from-feedback ---------------------------------------------------------------------------------------


def test_tldr_comparisons():
    path = real("summarize-from-feedback/batch13.jsonl")
    loaded = load_dataset(path, eval_fraction=0.0)
    assert loaded.family == "tldr" and loaded.report.rows_in == 1097
    assert loaded.report.dropped == {DUPLICATE: 166}  # the same comparison, labelled alike by several workers
    rows = rows_of(loaded)
    assert_trl(rows, "preference", conversational=False)
    with open(path) as file:
        raw = json.loads(file.readline())
    info, choice = raw["info"], raw["choice"]
    assert rows[0] == {
        "prompt": f"SUBREDDIT: r/{info['subreddit']}\n\nTITLE: {info['title']}\n\n"
                  f"POST: {info['post'].strip()}\n\nTL;DR:",
        "chosen": " " + raw["summaries"][choice]["text"].strip(),
        "rejected": " " + raw["summaries"][1 - choice]["text"].strip(),
    }


def test_cnndm_comparisons():
    loaded = load_dataset(real("summarize-from-feedback/cnndm0.jsonl"), conversational=True)
    assert loaded.report.rows_in == 437
    assert loaded.report.dropped == {DUPLICATE: 126, EMPTY_RESPONSE: 12}
    rows = rows_of(loaded)
    assert_trl(rows, "preference", conversational=True)
    assert all(row["prompt"][0]["content"].startswith("Article:\n") for row in rows)
    assert len({group_key(row["prompt"]) for row in rows}) == 45  # SOURCES.md: 45 articles


# --- GSM8K ---------------------------------------------------------------------------------------------------------


def test_gsm8k_directory_uses_its_train_and_test_files():
    loaded = load_dataset(real("gsm8k"))
    assert loaded.family == "gsm8k" and (len(loaded.train), len(loaded.eval)) == (7473, 1319)
    assert_trl(loaded.train.to_list()[:500], "demonstration", conversational=False)
    first = loaded.eval[0]
    assert first["prompt"].startswith("Question: Janet") and first["prompt"].endswith("\nAnswer:")
    assert first["completion"].endswith("#### 18")


def test_gsm8k_pairs_rule():
    loaded = load_dataset(real("gsm8k/example_model_solutions.jsonl"), eval_fraction=0.0)
    assert loaded.family == "gsm8k-pairs"
    # One pair per incorrect sample: 4 x 1,319 samples minus 286 + 515 + 458 + 742 correct ones (SOURCES.md).
    assert loaded.report.rows_in == 4 * 1319 - (286 + 515 + 458 + 742)
    assert loaded.report.dropped == {DUPLICATE: 1}
    rows = rows_of(loaded)
    assert_trl(rows, "preference", conversational=False)
    # Janet's ducks: only 175b_verification is correct, so it is the chosen side of the three pairs.
    janet = [row for row in rows if row["prompt"].startswith("Question: Janet’s ducks")]
    assert len(janet) == 3 and {row["chosen"] for row in janet} == {janet[0]["chosen"]}
    assert janet[0]["chosen"].startswith(" Janet eats 3 duck eggs") and janet[0]["chosen"].endswith("A: 18")


def test_gsm8k_pairs_refuse_to_be_evaluated_on_gsm8k_test():
    with pytest.raises(DataError, match=r"refusing to build GSM8K pairs.*\(3274 of 3274 training rows share"):
        load_dataset(real("gsm8k/example_model_solutions.jsonl"), eval_name_or_path=real("gsm8k/test.jsonl"))
    with pytest.raises(DataError, match="refusing"):
        load_dataset(real("gsm8k/example_model_solutions.jsonl"), eval_name_or_path=real("gsm8k"))


# --- AlpacaEval and Self-Instruct ----------------------------------------------------------------------------------


def test_alpaca_eval_demonstrations_and_pairs():
    demos = load_dataset(real("alpaca_eval/gpt4_model_outputs.json"), eval_fraction=0.0)
    assert demos.family == "alpaca-eval" and demos.report.rows_in == 805
    rows = rows_of(demos)
    assert_trl(rows, "demonstration", conversational=False)
    assert rows[0]["prompt"].startswith("### Instruction:\n") and rows[0]["prompt"].endswith("\n\n### Response:")

    pairs = load_dataset(real("alpaca_eval"), family="alpaca-eval-pairs", eval_fraction=0.0)
    assert pairs.report.rows_in == 805
    assert pairs.report.dropped == {SAME_RESPONSES: 8}  # both models gave the same answer
    pair_rows = rows_of(pairs)
    assert_trl(pair_rows, "preference", conversational=False)
    gpt4 = {row["prompt"]: row["completion"] for row in rows}
    assert all(gpt4[row["prompt"]] == row["chosen"] for row in pair_rows)


def test_alpaca_eval_pairs_need_two_generators():
    with pytest.raises(DataError, match="needs outputs of generator 'gpt4' and of at least one other"):
        load_dataset(real("alpaca_eval/alpaca-7b_model_outputs.json"), family="alpaca-eval-pairs")


@pytest.mark.parametrize("name, rows", [("seed_tasks.jsonl", 175), ("user_oriented_instructions.jsonl", 252)])
def test_self_instruct(name, rows):
    loaded = load_dataset(real(f"self-instruct/{name}"), eval_fraction=0.0)
    assert loaded.family == "self-instruct" and loaded.report.rows_in == rows and not loaded.report.dropped
    assert_trl(rows_of(loaded), "demonstration", conversational=False)


def test_self_instruct_prompts_are_the_alpaca_eval_selfinstruct_prompts():
    """AlpacaEval built its instructions as instruction + blank line + input; the shared template reproduces that,
    so the 252 overlapping tasks (SOURCES.md) have identical prompts and the overlap is visible."""
    tasks = {row["prompt"] for row in rows_of(load_dataset(real("self-instruct/user_oriented_instructions.jsonl")))}
    alpaca = {row["prompt"] for row in rows_of(load_dataset(real("alpaca_eval/gpt4_model_outputs.json")))}
    assert len(tasks & alpaca) == 252


# --- round trip ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conversational", [False, True])
def test_output_round_trips_through_the_trl_family(tmp_path, conversational):
    loaded = load_dataset(real("hh-rlhf/helpful-online-test.jsonl.gz"), conversational=conversational, max_rows=200)
    loaded.train.to_json(tmp_path / "out.jsonl")
    again = load_dataset(str(tmp_path / "out.jsonl"), eval_fraction=0.0)
    assert again.family == "trl" and not again.report.dropped
    assert again.train.to_list() == loaded.train.to_list()
