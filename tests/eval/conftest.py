"""Eval fixtures: SmolLM2 cut to 2 layers saved as an HF folder, and 5-row lm-eval tasks in a temp folder."""

from __future__ import annotations

import json

import pytest

from lit_swift import models
from lit_swift.eval.harness import TASKS_DIR

SMOLLM2 = "smollm2-135m-instruct"

TINY_TASKS = {
    "tiny_mc": """
tag: [tiny]
task: tiny_mc
dataset_path: json
dataset_kwargs: {{data_files: {{test: "{data}"}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
""",
    "tiny_gen": """
tag: [tiny]
task: tiny_gen
dataset_path: json
dataset_kwargs: {{data_files: {{test: "{data}"}}}}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}} Give the final answer as a number."
doc_to_target: "{{{{answer}}}}"
generation_kwargs: {{until: ["<|im_end|>", "\\n\\n"], max_gen_toks: 8, do_sample: false, temperature: 0.0}}
filter_list:
  - name: last-number
    filter:
      - {{function: regex, regex_pattern: "(-?[0-9]+)", group_select: -1}}
      - {{function: take_first}}
metric_list:
  - {{metric: exact_match, aggregation: mean, higher_is_better: true}}
metadata: {{chat_template: true}}
""",
    "tiny_ppl": """
tag: [tiny]
task: tiny_ppl
dataset_path: json
dataset_kwargs: {{data_files: {{test: "{data}"}}}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - {{metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}}
""",
}
SOURCES = {"tiny_mc": "litswift_arith_mc", "tiny_gen": "litswift_arith", "tiny_ppl": "litswift_chitchat"}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """The real SmolLM2 weights cut to 2 layers, saved as a plain HF folder (what a merged export is)."""
    out = tmp_path_factory.mktemp("smollm2-2layers")
    models.load_model(SMOLLM2, config_overrides={"num_hidden_layers": 2}).save_pretrained(str(out))
    models.load_tokenizer(SMOLLM2).save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="session")
def tiny_tasks_dir(tmp_path_factory) -> str:
    """Three 5-row tasks (multiple choice, generate-until, rolling perplexity) over lit-swift's shipped rows."""
    out = tmp_path_factory.mktemp("tiny-tasks")
    for name, text in TINY_TASKS.items():
        rows = (TASKS_DIR / f"{SOURCES[name]}.jsonl").read_text().splitlines()[:5]
        if name == "tiny_ppl":  # short dialogues keep the test fast
            rows = [json.dumps({"text": json.loads(r)["text"][:200]}) for r in rows]
        data = out / f"{name}.jsonl"
        data.write_text("\n".join(rows) + "\n")
        (out / f"{name}.yaml").write_text(text.format(data=data))
    return str(out)
