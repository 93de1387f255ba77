"""`deploy`'s hf backend loading: an adapter is merged in and names the served model."""

from __future__ import annotations

import asyncio

import torch

from lit_swift import models, tuners
from lit_swift.serve.deploy import load_backend
from lit_swift.serve.openai_api import ChatRequest, chat_prompt, complete, plan

SMOLLM2 = "smollm2-135m-instruct"
TWO_LAYERS = {"num_hidden_layers": 2}


def test_adapter_is_merged_and_names_the_model(tmp_path):
    torch.manual_seed(0)
    model = tuners.LoRA(r=4, alpha=8, dropout=0.0).apply(
        models.load_model(SMOLLM2, config_overrides=TWO_LAYERS)
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    folder = tmp_path / "my-run.hf"
    model.save_pretrained(str(folder))
    backend = load_backend(SMOLLM2, str(folder), None, None, None, 4, 50.0, "float32", TWO_LAYERS, "cpu")
    try:
        assert backend.name == "my-run" and not tuners.is_peft(backend.generator.model)
        request = ChatRequest(
            model="my-run", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
        )
        ids = chat_prompt(backend, request)
        out = asyncio.run(complete(backend, plan(backend, request, ids, 4), ids, chat=True))
        reference = tuners.load_adapter(models.load_model(SMOLLM2, config_overrides=TWO_LAYERS), str(folder))
        with torch.no_grad():
            expected = reference.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)[
                0, len(ids) :
            ]
        text = backend.decode([t for t in expected.tolist() if t not in backend.generator.stop_ids])
        assert out["choices"][0]["message"]["content"] == text
    finally:
        backend.batcher.close()
