"""Reward functions: the plugin contract (user files, names, weights), clear errors, built-ins by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lit_swift.rewards.base import RewardSet, load_reward
from lit_swift.rewards.model import RewardModelScorer
from lit_swift.rewards.shaping import CosineLength, Format, Repetition, SoftOverlong
from lit_swift.rewards.verifiable import ExactMatch, MathAccuracy, ReasoningGymScore

PLUGIN = """
def starts_with_yes(completions, **kwargs):
    return [float(c.startswith("yes")) for c in completions]

class SolutionLength:
    def __call__(self, completions, solution, **kwargs):
        return [float(len(s)) for s in solution]
"""


def test_plugin_file_functions_and_classes_with_weights(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(PLUGIN)
    rewards = RewardSet([f"{path}:starts_with_yes", f"{path}:SolutionLength", "exact_match"], [1.0, 0.5, 2.0])
    total, per = rewards.score(["yes 12", "no"], {"solution": ["12", "7"], "prompts": ["a", "b"]})
    assert list(per) == ["starts_with_yes", "SolutionLength", "ExactMatch"]
    assert per["SolutionLength"].tolist() == [2.0, 1.0]
    torch.testing.assert_close(total, torch.tensor([1.0 + 1.0 + 0.0, 0.0 + 0.5 + 0.0]))


def test_dotted_path_and_unknown_names(tmp_path):
    assert isinstance(load_reward("lit_swift.rewards.shaping.Format"), Format)
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        load_reward("nope")
    with pytest.raises(ValueError, match="does not exist"):
        load_reward(str(tmp_path / "missing.py") + ":f")
    (tmp_path / "r.py").write_text(PLUGIN)
    with pytest.raises(ValueError, match="has no attribute 'other'"):
        load_reward(f"{tmp_path / 'r.py'}:other")
    with pytest.raises(ValueError, match="2 entries for 1 reward functions"):
        RewardSet(["format"], [1.0, 2.0])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("raise KeyError('solution')", "reward function 'bad' raised KeyError"),
        ("return [1.0]", "reward function 'bad' returned 1 rewards for 2 completions"),
        ("return [1.0, float('nan')]", "reward function 'bad' returned nan for completion 1"),
        ("return [1.0, None]", "reward function 'bad' returned None for completion 1"),
        ("return 3.0", "reward function 'bad' returned float, not a list"),
    ],
)
def test_bad_reward_output_is_a_clear_error(body, message):
    def bad(completions, **kwargs):
        exec(body.replace("return", "out =") if body.startswith("return") else body, {}, scope := {})
        return scope["out"]

    with pytest.raises(RuntimeError, match=message):
        RewardSet([bad]).score(["a", "b"], {})


def test_math_accuracy_with_math_verify_and_plain_number_fallback():
    acc = MathAccuracy()
    completions = ["3 + 4 = 7", "<answer>\\frac{1}{2}</answer>", "eight", "<answer>0.5</answer>"]
    solutions = ["7", "0.5", "8", "1/2"]
    assert acc(completions, solution=solutions) == [1.0, 1.0, 0.0, 1.0]
    # restating the question is not an answer, whatever the expression evaluates to
    restated = ["5 - 9 = ?", "To calculate 7 + 10, simply add", "7 - 8 equals 3, which is 7 - 8 is"]
    assert acc(restated, solution=["-4", "17", "-1"]) == [0.0, 0.0, 0.0]
    assert acc(["1 - 6 = -5", "7 + 10 = 17 is right"], solution=["-5", "17"]) == [1.0, 1.0]
    acc.math_verify = None  # as without the package: the last plain number decides
    assert acc(["3 + 4 = 7", "so 12,000", "none"], solution=["7", "12000", "1"]) == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="'solution' column"):
        acc(["1"])


def test_exact_match_and_reasoning_gym_score():
    import reasoning_gym

    entry = reasoning_gym.create_dataset(
        "basic_arithmetic", size=1, seed=1, min_terms=2, max_terms=2, max_digits=1
    )[0]
    answer, meta = entry["answer"], json.dumps(entry["metadata"])
    out = ReasoningGymScore()(
        [answer, f"<answer>{answer}</answer>", "wrong"], solution=[answer] * 3, metadata=[meta] * 3
    )
    assert out[:2] == [1.0, 1.0] and out[2] < 1.0
    assert ExactMatch()([answer, f" {answer}\n", f"x = {answer}"], solution=[answer] * 3) == [1.0, 1.0, 0.0]


def test_format_cosine_repetition_soft_overlong_by_hand():
    assert Format()(["<think>a</think> <answer>1</answer>", "<answer>1</answer>"]) == [1.0, 0.0]
    assert Format(r"\d+")(["42", "4 2"]) == [1.0, 0.0]
    # cosine, max_length 10: correct at L=0 -> 1.0, at L=10 -> 0.5, at L=5 -> 0.75; wrong at L=5 -> -0.25
    cos = CosineLength(max_length=10)
    ids = [[0] * 0, [0] * 10, [0] * 5, [0] * 5]
    got = cos(["7", "7", "7", "6"], solution=["7"] * 4, completion_ids=ids)
    assert got == pytest.approx([1.0, 0.5, 0.75, -0.25])
    # "a b c a b c": 4 trigrams, 3 distinct -> -1 * (1 - 3/4) = -0.25
    assert Repetition()(["a b c a b c", "a b", "a b c d"]) == [-0.25, 0.0, 0.0]
    # max 10, cache 4: <= 6 -> 0; 8 -> (6 - 8) / 4 = -0.5; 11 -> -1
    soft = SoftOverlong(max_length=10, cache_length=4)
    assert soft(["", "", ""], completion_ids=[[0] * 6, [0] * 8, [0] * 11]) == [0.0, -0.5, -1.0]


def test_reward_model_scorer_reads_an_exported_folder(tmp_path, smollm2_tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=smollm2_tokenizer.pad_token_id,
    )  # fmt: skip
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    smollm2_tokenizer.save_pretrained(tmp_path)
    scorer = RewardModelScorer(str(tmp_path))
    prompts = ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"] * 2
    scores = scorer(["Hello!", "Go away."], prompts=prompts)
    ids = smollm2_tokenizer(
        prompts[0] + "Hello!" + smollm2_tokenizer.eos_token, add_special_tokens=False, return_tensors="pt"
    )
    with torch.no_grad():
        expected = model(input_ids=ids.input_ids).logits[0, 0].item()
    assert scores[0] == pytest.approx(expected, abs=1e-5) and scores[0] != scores[1]
    assert all(math.isfinite(s) for s in scores)
