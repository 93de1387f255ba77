"""Evaluation on lm-evaluation-harness: `harness` (model specs -> lm-eval models, runs, results) and the
offline task YAMLs + data in `tasks/`. Needs the `eval` extra (`pip install 'lit-swift[eval]'`)."""
