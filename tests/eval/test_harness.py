"""`lit-swift eval` on lm-eval: same numbers as lm-eval called directly, adapter == merged export, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_swift import cli
from lit_swift.eval import harness


def numbers(results: dict) -> dict[str, float]:
    """Every metric value of lm-eval's results (stderr and aliases left out)."""
    return {
        f"{task}/{key}": value
        for task, metrics in results["results"].items()
        for key, value in metrics.items()
        if "," in key and "stderr" not in key and isinstance(value, int | float)
    }


def test_cli_gives_the_numbers_of_lm_eval_called_directly(tiny_model_dir, tiny_tasks_dir, tmp_path, capsys):
    """5-row tasks of each request type, asked for by their tag; only the generate-until task asks for the
    chat template, so the tag's tasks run as two lm-eval calls."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = tmp_path / "eval"
    cli.main(["eval", "--model", tiny_model_dir, "--tasks", "tiny",
              "--include_path", f"[{tiny_tasks_dir}]", "--device", "cpu", "--output_dir", str(out)])  # fmt: skip
    table = capsys.readouterr().out
    assert "tiny_mc" in table and "word_perplexity" in table and f"results written to {out}" in table
    ours = json.loads((out / "results.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 15
    prompts = {s["task"]: s["arguments"][0][0] for s in samples}
    assert prompts["tiny_gen"].startswith("<|im_start|>system") and "<|im_start|>" not in prompts["tiny_mc"]
    manager = TaskManager(include_path=tiny_tasks_dir, include_defaults=False)
    args = {"pretrained": tiny_model_dir, "device": "cpu", "batch_size": 8}
    direct = lm_eval.simple_evaluate(
        model="hf", model_args=args, tasks=["tiny_mc", "tiny_ppl"], task_manager=manager
    )
    chat = lm_eval.simple_evaluate(
        model="hf", model_args=args, tasks=["tiny_gen"], task_manager=manager, apply_chat_template=True
    )
    expected = {**numbers(direct), **numbers(chat)}
    assert set(expected) == {
        "tiny_mc/acc,none",
        "tiny_gen/exact_match,last-number",
        "tiny_ppl/word_perplexity,none",
    }
    assert numbers(ours) == expected
    assert ours["n-samples"]["tiny_mc"]["effective"] == 5


def test_adapter_folder_and_its_merged_export_score_the_same(tiny_model_dir, tiny_tasks_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    from lit_swift import models

    base = models.load_model(tiny_model_dir)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    adapter = tmp_path / "adapter"
    get_peft_model(base, config).save_pretrained(str(adapter))  # random B: the adapter changes the model
    merged = tmp_path / "merged"
    cli.main(["export", "--checkpoint", str(adapter), "--merge_lora", "true", "--output_dir", str(merged)])
    manager = harness.task_manager([tiny_tasks_dir], ["tiny_mc", "tiny_ppl"])
    lm = harness.hf_model(adapter=str(adapter), model=tiny_model_dir, device="cpu")
    assert isinstance(lm.model, PeftModel)  # loaded by lm-eval with `peft=`
    from_adapter = numbers(harness.run_tasks(lm, "tiny_mc,tiny_ppl", manager=manager))
    from_merged = numbers(
        harness.run_tasks(harness.hf_model(str(merged), device="cpu"), "tiny_mc,tiny_ppl", manager=manager)
    )
    assert from_adapter == pytest.approx(from_merged, rel=1e-4)
    plain = numbers(
        harness.run_tasks(harness.hf_model(tiny_model_dir, device="cpu"), "tiny_ppl", manager=manager)
    )
    assert plain["tiny_ppl/word_perplexity,none"] != pytest.approx(
        from_adapter["tiny_ppl/word_perplexity,none"]
    )


def test_unknown_task_is_a_clear_error(tiny_tasks_dir):
    with pytest.raises(ValueError, match=r"unknown lm-eval task\(s\): 'tiny_nope' \(did you mean tiny_"):
        cli.main(["eval", "--model", "smollm2-135m-instruct", "--tasks", "tiny_nope",
                  "--include_path", f"[{tiny_tasks_dir}]", "--debug"])  # fmt: skip


def test_task_whose_data_is_on_the_hub_fails_fast_offline(tmp_path, monkeypatch):
    """Raised before the model loads; HF_HUB_OFFLINE is set by tests/conftest.py."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "hub_task.yaml").write_text(
        "task: hub_task\ndataset_path: lit-swift-tests/not-cached-anywhere\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: [a, b]\ndoc_to_target: 0\n"
    )
    with pytest.raises(
        ValueError, match="'hub_task' reads its data from the Hugging Face hub.*HF_HUB_OFFLINE is set"
    ):
        cli.main(["eval", "--model", "no-such-model-is-loaded", "--tasks", "hub_task",
                  "--include_path", f"[{tmp_path}]", "--debug"])  # fmt: skip


def test_shipped_tasks_load_offline():
    manager = harness.task_manager(names=["litswift"])
    loaded = harness.load_tasks(["litswift"], manager)
    tasks = {t.config.task: t for t in loaded["litswift"]}
    assert sorted(tasks) == ["litswift_arith", "litswift_arith_mc", "litswift_chitchat"]
    assert [len(t.eval_docs) for t in tasks.values()] == [100, 100, 40]
    assert harness.asks_for_chat([tasks["litswift_arith"]]) and not harness.asks_for_chat(
        [tasks["litswift_arith_mc"]]
    )
    first = tasks["litswift_arith_mc"].eval_docs[0]
    assert first["choices"][first["label"]] == "1"  # "Calculate 8 / 8."


def test_server_evaluation_rejects_log_likelihood_tasks(tiny_tasks_dir):
    lm = harness.server_model("http://127.0.0.1:9", "m")
    assert lm.base_url == "http://127.0.0.1:9/v1/chat/completions"
    with pytest.raises(ValueError, match="tiny_mc score log-likelihoods"):
        harness.run_tasks(
            lm, "tiny_mc", manager=harness.task_manager([tiny_tasks_dir], ["tiny_mc"]), chat_only=True
        )


def test_server_matches_local_greedy_exact_match(tiny_model_dir, tiny_tasks_dir, tmp_path):
    """`lit-swift deploy` of the 2-layer model, scored through lm-eval's chat-completions model, gives the
    local HF model's greedy answers (chat template on both sides) and so the same exact match."""
    from tests.serve.helpers import free_port, start_server, stop_server

    port = free_port()
    server = start_server(["deploy", "--model", tiny_model_dir, "--port", str(port), "--device", "cpu",
                           "--served_model_name", "tiny"], port)  # fmt: skip
    try:
        out = tmp_path / "served"
        assert harness.server_model(f"http://127.0.0.1:{port}/v1", None).model == "tiny"  # from /v1/models
        served = harness.evaluate(tasks="tiny_gen", model="tiny", server=f"http://127.0.0.1:{port}",
                                  include_path=[tiny_tasks_dir], output_dir=str(out))  # fmt: skip
    finally:
        stop_server(server)
    manager = harness.task_manager([tiny_tasks_dir], ["tiny_gen"])
    local = harness.run_tasks(harness.hf_model(tiny_model_dir, device="cpu"), "tiny_gen", manager=manager)
    answers = [[s["resps"], s["filtered_resps"]] for s in local["samples"]["tiny_gen"]]
    assert [[s["resps"], s["filtered_resps"]] for s in served["samples"]["tiny_gen"]] == answers
    assert numbers(served) == numbers(local)


def test_results_json_is_written(tmp_path):
    path = harness.write_results(
        {"results": {"t": {"acc,none": 0.5}}, "samples": {"t": [{"doc_id": 0}]}}, str(tmp_path)
    )
    assert json.loads(Path(path).read_text()) == {"results": {"t": {"acc,none": 0.5}}}
    assert json.loads((tmp_path / "samples.jsonl").read_text()) == {"task": "t", "doc_id": 0}
