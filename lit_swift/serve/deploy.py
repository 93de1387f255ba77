"""`lit-swift deploy`: serve a model, export or adapter over an OpenAI-compatible HTTP API.

`--backend hf` loads the model in this process and batches concurrent requests through the HF
rollout engine; `--backend sglang` resolves the model (and adapter) into HF folders and hands over
to SGLang's own server.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Literal

from lit_swift import models


def load_backend(
    model: str | None,
    adapter: str | None,
    template: str | None,
    system: str | None,
    name: str | None,
    max_batch_size: int,
    batch_wait_ms: float,
    dtype: models.Dtype,
    config_overrides: dict[str, Any] | None,
    device: str,
):
    """The generator (adapter merged), its HF engine and the batcher in front of it."""
    from lit_swift import tuners
    from lit_swift.export.infer import load_generator
    from lit_swift.rollout.hf import HFEngine
    from lit_swift.serve.batcher import Batcher
    from lit_swift.serve.openai_api import Backend

    generator = load_generator(model, adapter, template, system, dtype, config_overrides, device)
    if tuners.is_peft(generator.model):
        generator.model = tuners.merge(generator.model).eval()
    config = generator.model.config
    context = getattr(config, "max_position_embeddings", None) or generator.tokenizer.model_max_length
    engine = HFEngine(max_batch_size, pad_token_id=generator.pad_id)
    engine.sync_weights(generator.model)
    name = name or served_name(model, adapter)
    return Backend(name, generator, Batcher(engine, max_batch_size, batch_wait_ms / 1000), int(context))


def served_name(model: str | None, adapter: str | None) -> str:
    """The name clients pass as `model`: the model spec, or the adapter folder's name."""
    if adapter:
        return Path(adapter).expanduser().resolve().name.removesuffix(".hf").removesuffix(".ckpt")
    assert model is not None
    return model if not Path(model).expanduser().is_dir() else Path(model).expanduser().resolve().name


def deploy(
    model: str | None = None,
    adapter: str | None = None,
    template: str | None = None,
    system: str | None = None,
    backend: Literal["hf", "sglang"] = "hf",
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    served_model_name: str | None = None,
    max_batch_size: int = 32,
    batch_wait_ms: float = 50.0,
    dtype: models.Dtype = "auto",
    config_overrides: dict[str, Any] | None = None,
    device: str = "auto",
    sglang_args: list[str] | None = None,
) -> None:
    """Serve a model over the OpenAI API: /v1/chat/completions, /v1/completions, /v1/models, /health.

    Args:
        model: model spec (alias, hub id) or HF folder (e.g. a merged export); base of `adapter`.
        adapter: PEFT adapter folder or Lightning `.ckpt` (the run's config supplies the base model).
        template: named chat template (hf backend); default: the run's, else the tokenizer's own.
        system: system prompt for conversations without one (hf backend); default: the run's.
        backend: `hf` (this process, CPU or GPU, dynamic batching) or `sglang` (SGLang's own server, GPU).
        host: interface to listen on.
        port: TCP port to listen on.
        api_key: require `Authorization: Bearer <api_key>` on every route but /health.
        served_model_name: the `model` name clients use (default: the model spec or adapter folder name).
        max_batch_size: most completions generated together (hf backend).
        batch_wait_ms: how long a batch that is not full waits for one more request (hf backend).
        dtype: weight dtype; `auto` keeps the checkpoint's.
        config_overrides: model config fields overriding the run's, e.g. `{num_hidden_layers: 2}`.
        device: `auto` (CUDA when available), `cpu`, `cuda`, `cuda:1`, ... (hf backend).
        sglang_args: extra arguments for SGLang's server, e.g. `[--mem-fraction-static, "0.8"]`.
    """
    if backend == "sglang":
        from lit_swift.rollout import sglang

        sglang.require()
        sglang.exec_server(
            sglang.server_args(model, adapter, template, host, port, api_key, served_model_name, sglang_args)
        )
    from lit_swift.serve.http import serve
    from lit_swift.serve.openai_api import make_app

    loaded = load_backend(
        model,
        adapter,
        template,
        system,
        served_model_name,
        max_batch_size,
        batch_wait_ms,
        dtype,
        config_overrides,
        device,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        loaded.batcher.close()

    print(
        f"lit-swift deploy: serving {loaded.name!r} on http://{host}:{port}/v1 (pid {os.getpid()})",
        flush=True,
    )
    serve(make_app(loaded, api_key, lifespan), host, port)
