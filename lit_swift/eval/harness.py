"""`lit-swift eval`: score a model spec, adapter, checkpoint or OpenAI-compatible server on lm-eval tasks.

lm-evaluation-harness does the work (task format, prompts, metrics, aggregation); this module only turns
a lit-swift model spec into lm-eval's HF model, adds the offline tasks in `lit_swift/eval/tasks/`, turns
unknown tasks and data that would need the hub into clear errors, and writes lm-eval's results JSON.
The only module importing `lm_eval` (extra `lit-swift[eval]`).
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from pathlib import Path
from typing import Any

from lit_swift import models

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
"""lit-swift's offline tasks (tag `litswift`): YAMLs over small JSONL files built by scripts/make_eval_data.py."""


def _lm_eval():
    try:
        import lm_eval
    except ImportError as err:
        raise ImportError("lit-swift eval needs lm-eval: pip install 'lit-swift[eval]'") from err
    return lm_eval


def task_manager(include_path: list[str] | None = None, names: list[str] | None = None):
    """lm-eval's task index over lit-swift's offline tasks and any `include_path` folders of task YAMLs.

    lm-eval's own ~15k task configs are indexed too (tens of seconds) unless every name in `names` is
    found without them.
    """
    _lm_eval()
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR), *(include_path or [])]
    if names is not None:
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(n in local.all_tasks for n in names):
            return local
    return TaskManager(include_path=paths)


def split_tasks(tasks: str | list[str]) -> list[str]:
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError("no task given: pass e.g. --tasks litswift_arith,litswift_chitchat")
    return names


def load_tasks(names: list[str], manager) -> dict[str, Any]:
    """Build every requested task now (before the model loads), so bad names and missing data fail fast.

    Returns the leaf tasks of each requested name (a task, tag or group) as `{name: [Task, ...]}`.
    """
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        ours = sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))
        hints = {n: difflib.get_close_matches(n, manager.all_tasks, n=3) for n in unknown}
        raise ValueError(
            "unknown lm-eval task(s): "
            + "; ".join(
                f"{n!r}" + (f" (did you mean {', '.join(h)}?)" if h else "") for n, h in hints.items()
            )
            + f". Offline tasks shipped with lit-swift: {', '.join(ours)} (tag: litswift); "
            "add your own task YAML folders with --include_path"
        )
    loaded = {}
    for name in names:
        try:
            loaded[name] = list(manager.load(name)["tasks"].values())
        except (ConnectionError, OSError) as err:  # datasets/huggingface_hub raise these when offline
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
            raise ValueError(
                f"lm-eval task {name!r} reads its data from the Hugging Face hub and it is not in the local "
                f"cache ({'HF_HUB_OFFLINE is set' if offline else 'the hub could not be reached'}: {err}). "
                "Run it once with network access to cache the data, or use the offline tasks "
                "(--tasks litswift)"
            ) from err
    return loaded


def asks_for_chat(tasks: list[Any]) -> bool:
    """A task asks for the chat template with `metadata: {chat_template: true}` in its YAML."""
    return all(bool((t.config.metadata or {}).get("chat_template")) for t in tasks)


def hf_model(
    model: str | None = None,
    adapter: str | None = None,
    dtype: models.Dtype = "auto",
    device: str = "auto",
    batch_size: int = 8,
    config_overrides: dict[str, Any] | None = None,
):
    """lm-eval's HF model for a lit-swift model spec.

    An alias, HF folder, merged export or hub id loads by path; an adapter folder loads its base with
    `peft=`; a Lightning `.ckpt` (or anything with `config_overrides`, e.g. a debug run's cut layers) is
    rebuilt by lit-swift and handed to lm-eval as a ready model.
    """
    from lm_eval.models.huggingface import HFLM

    if model is None and adapter is None:
        raise ValueError(
            "give --model (alias, HF folder, merged export) and/or --adapter (adapter folder or .ckpt)"
        )
    device = ("cuda" if _cuda() else "cpu") if device == "auto" else device
    source = Path(adapter or model).expanduser()
    is_adapter = (source / "adapter_config.json").exists()
    if source.suffix == ".ckpt" or source.is_file() or config_overrides is not None:
        return live_model(
            *_rebuild(adapter or model, model if adapter else None, config_overrides, dtype), batch_size
        )
    if adapter is not None and not is_adapter:
        raise ValueError(
            f"--adapter {adapter} is neither a PEFT adapter folder (adapter_config.json) nor a .ckpt"
        )
    args: dict[str, Any] = {"device": device, "dtype": dtype, "batch_size": batch_size}
    if is_adapter:
        base = model if adapter else None
        base, overrides = _adapter_base(source, base)
        if overrides:  # the run cut or changed the base model: rebuild it the way training did
            return live_model(*_rebuild(str(source), base, overrides, dtype), batch_size)
        tokenizer = source if (source / "tokenizer_config.json").exists() else models.resolve(base)
        return HFLM(pretrained=models.resolve(base), peft=str(source), tokenizer=str(tokenizer), **args)
    return HFLM(pretrained=models.resolve(str(model)), **args)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _adapter_base(folder: Path, model: str | None) -> tuple[str, dict | None]:
    """The adapter's base spec and config overrides: `--model`, else the run's config, else the adapter's."""
    from lit_swift.export.merge import CONFIG_NAME, read_config

    init_args = (read_config(folder / CONFIG_NAME).get("model") or {}).get("init_args") or {}
    spec = model or init_args.get("model")
    spec = spec or json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not spec:
        raise ValueError(f"adapter {folder} names no base model; pass it with --model")
    return spec, init_args.get("config_overrides")


def _rebuild(source: str, model: str | None, overrides: dict | None, dtype: models.Dtype):
    from lit_swift.export.merge import load_trained

    trained = load_trained(source, model, None, overrides, dtype)
    return trained.model.to("cuda" if _cuda() else "cpu"), trained.tokenizer


def live_model(model, tokenizer, batch_size: int = 8):
    """lm-eval's HF model around an in-memory transformers/PEFT model (used as is: adapters stay on)."""
    from lm_eval.models.huggingface import HFLM

    # lm-eval may change the tokenizer (padding side); lit-swift shares loaded tokenizers, so give it a copy
    return HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size)


def server_model(url: str, model: str | None, max_gen_toks: int = 256):
    """lm-eval's chat-completions model for an OpenAI-compatible server (`lit-swift deploy` or any other).

    `model` is the served model name; by default the first one the server lists at `/v1/models`.
    """
    from lm_eval.models.openai_completions import LocalChatCompletion

    base = url.rstrip("/").removesuffix("/chat/completions").removesuffix("/v1")
    if model is None:
        import requests

        try:
            model = requests.get(f"{base}/v1/models", timeout=30).json()["data"][0]["id"]
        except (requests.RequestException, KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"could not read the served model's name from {base}/v1/models ({err}); pass --model"
            ) from err
    return LocalChatCompletion(
        base_url=f"{base}/v1/chat/completions", model=model, tokenizer_backend=None, max_gen_toks=max_gen_toks
    )


def run_tasks(
    lm,
    tasks: str | list[str],
    limit: int | float | None = None,
    manager=None,
    chat_template: bool | None = None,
    chat_only: bool = False,
) -> dict[str, Any]:
    """Evaluate `lm` on `tasks` with lm-eval; one `simple_evaluate` per chat-template setting, merged.

    Args:
        manager: lm-eval's `TaskManager` (default: `task_manager(names=...)`).
        chat_template: apply the tokenizer's chat template to every task (True), to none (False), or to
            the tasks whose YAML asks for it (None).
        chat_only: the model only chats (a server): every task must be generate-until.
    """
    lm_eval = _lm_eval()
    names = split_tasks(tasks)
    manager = manager if manager is not None else task_manager(names=names)
    loaded = load_tasks(names, manager)
    if chat_only:
        scored = sorted(
            t.config.task for ts in loaded.values() for t in ts if t.OUTPUT_TYPE != "generate_until"
        )
        if scored:
            raise ValueError(
                f"task(s) {', '.join(scored)} score log-likelihoods, which a chat-completions server cannot "
                "return; evaluate them on the local model, or pick generate-until tasks (e.g. litswift_arith)"
            )
    groups: dict[bool, list[str]] = {}
    for name, leaf_tasks in loaded.items():
        # a tag (e.g. `litswift`) is only a list of tasks: each decides; a group aggregates, so it runs whole
        units = (
            [(name, leaf_tasks)] if name in manager.all_groups else [(t.config.task, [t]) for t in leaf_tasks]
        )
        for unit, unit_tasks in units:
            use = chat_template if chat_template is not None else asks_for_chat(unit_tasks)
            groups.setdefault(bool(use or chat_only), []).append(unit)
    merged: dict[str, Any] = {}
    for use_chat, names in sorted(groups.items()):
        out = lm_eval.simple_evaluate(
            model=lm, tasks=names, limit=limit, task_manager=manager, apply_chat_template=use_chat,
            log_samples=True, bootstrap_iters=1000,
        )  # fmt: skip
        for key, value in out.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            else:
                merged[key] = value
    return merged


def write_results(results: dict[str, Any], output_dir: str) -> Path:
    """lm-eval's results (aggregates, configs, versions) as results.json; per-sample records as samples.jsonl."""
    from lm_eval.utils import handle_non_serializable

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = results.get("samples") or {}
    summary = {k: v for k, v in results.items() if k != "samples"}
    path = out / "results.json"
    path.write_text(json.dumps(summary, indent=2, default=handle_non_serializable, ensure_ascii=False))
    with open(out / "samples.jsonl", "w") as f:
        for task, rows in samples.items():
            for row in rows:
                f.write(
                    json.dumps({"task": task, **row}, default=handle_non_serializable, ensure_ascii=False)
                    + "\n"
                )
    return path


def scores(results: dict[str, Any]) -> dict[str, float]:
    """Flat `{task/metric: value}` of the results (lm-eval's `metric,filter` keys; stderr, sizes left out)."""
    flat = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric = key.split(",")[0]
            if "," not in key or "_stderr" in metric or not isinstance(value, int | float):
                continue
            flat[f"{task}/{metric}"] = float(value)
    return flat


def evaluate(
    *,
    tasks: str,
    model: str | None = None,
    adapter: str | None = None,
    server: str | None = None,
    limit: float | None = None,
    output_dir: str | None = None,
    include_path: list[str] | None = None,
    chat_template: bool | None = None,
    batch_size: int = 8,
    max_gen_toks: int = 256,
    dtype: models.Dtype = "auto",
    device: str = "auto",
    config_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a model on lm-evaluation-harness tasks; print lm-eval's table, write its results JSON.

    Args:
        tasks: comma-separated lm-eval task, tag or group names, e.g. `litswift_arith,litswift_chitchat`
            or `litswift` (lit-swift's offline tasks). Hub tasks (e.g. `gsm8k`) need their data cached.
        model: built-in alias, HF folder, merged export or hub id; or an adapter folder / `.ckpt`. With
            `--server`: the served model's name (default: the first at the server's `/v1/models`).
        adapter: PEFT adapter folder (e.g. `last.hf`) or Lightning `.ckpt` on top of `--model`.
        server: base URL of an OpenAI-compatible server (e.g. `lit-swift deploy`), evaluated through
            lm-eval's chat-completions model (generate-until tasks only; greedy).
        limit: evaluate only the first N documents of each task (a float < 1: that fraction).
        output_dir: where to write `results.json` (lm-eval's results) and `samples.jsonl`.
        include_path: extra folders of lm-eval task YAMLs.
        chat_template: apply the chat template to all tasks (true), none (false), or where the task's
            YAML asks for it (default).
        batch_size: local model batch size.
        max_gen_toks: with `--server`: longest completion when a task sets no `max_gen_toks`.
        dtype: weight dtype of a local model; `auto` keeps the checkpoint's.
        device: `auto` (CUDA when present), `cpu`, `cuda`, `cuda:1`...
        config_overrides: model config fields overriding the run's, e.g. `{num_hidden_layers: 2}`.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    manager = task_manager(include_path, split_tasks(tasks))
    from lm_eval.utils import make_table

    if server is not None:
        if adapter is not None:
            raise ValueError("--server evaluates the served model: --adapter does not apply")
        lm = server_model(server, model, max_gen_toks)
    else:
        load_tasks(split_tasks(tasks), manager)  # bad names and missing data fail before the model loads
        lm = hf_model(model, adapter, dtype, device, batch_size, config_overrides)
    results = run_tasks(lm, tasks, limit, manager, chat_template, chat_only=server is not None)
    print(make_table(results))
    if output_dir is not None:
        print(f"results written to {write_results(results, output_dir)}")
    return results
