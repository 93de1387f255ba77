"""Generate answers with a trained or exported model: one prompt, an interactive chat, or a JSONL file.

Prompts are rendered with the run's chat template (`ChatEncoder`) and generation stops on its
end-of-turn token; batches are left-padded.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lit_swift import models
from lit_swift.data.template import ChatEncoder
from lit_swift.export.merge import load_trained
from lit_swift.types import Message


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; `temperature: 0` is greedy decoding.

    Args:
        max_new_tokens: most tokens generated per answer.
        temperature: softmax temperature; 0 picks the most likely token (deterministic).
        top_p: nucleus sampling mass (sampling only).
        top_k: sample among the k most likely tokens; 0 disables the cut (sampling only).
        repetition_penalty: CTRL-style penalty (> 1) on tokens already present.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:  # also overrides sampling defaults from the model's generation_config.json
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


class Generator:
    """A model with its tokenizer and chat encoder that answers batches of conversations.

    Args:
        model: a causal LM (plain or with PEFT adapters), already on its device.
        tokenizer: the model's tokenizer.
        encoder: renders conversations into prompt ids and knows the end-of-turn tokens.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, encoder: ChatEncoder):
        self.model, self.tokenizer, self.encoder = model, tokenizer, encoder
        self.stop_ids = sorted({*encoder.stop_token_ids, tokenizer.eos_token_id} - {None})
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        # end-of-turn texts that are not one token (e.g. "\n### "): generate stops on them as strings
        single = {tokenizer.decode([i]) for i in self.stop_ids}
        self.stop_strings = [s for s in encoder.stop_strings if s and s not in single]

    @torch.inference_mode()
    def generate_ids(
        self, conversations: list[list[Message]], sampling: Sampling, streamer=None
    ) -> list[list[int]]:
        """New token ids per conversation, cut before the first end-of-turn token."""
        prompts = [self.encoder.prompt_ids(messages) for messages in conversations]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts])  # [B, T]
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])  # [B, T]
        device = next(self.model.parameters()).device
        out = self.model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            streamer=streamer,
            **({"stop_strings": self.stop_strings, "tokenizer": self.tokenizer} if self.stop_strings else {}),
            **sampling.generate_kwargs(),
        )  # [B, T + new]
        rows = [row.tolist() for row in out[:, width:]]
        return [row[: next((i for i, t in enumerate(row) if t in self.stop_ids), len(row))] for row in rows]

    def answer(self, conversations: list[list[Message]], sampling: Sampling, streamer=None) -> list[str]:
        """One answer text per conversation."""
        texts = [
            self.tokenizer.decode(row, skip_special_tokens=True)
            for row in self.generate_ids(conversations, sampling, streamer)
        ]
        for stop in self.stop_strings:
            texts = [text.split(stop)[0] for text in texts]
        return [text.strip() for text in texts]


def load_generator(
    model: str | None = None,
    adapter: str | None = None,
    template: str | None = None,
    system: str | None = None,
    dtype: models.Dtype = "auto",
    config_overrides: dict[str, Any] | None = None,
    device: str = "auto",
) -> Generator:
    """Load a model (optionally with an adapter or from a `.ckpt`) and its chat template.

    `template` and `system` default to the ones the run trained with when its config is known.
    """
    if model is None and adapter is None:
        raise ValueError(
            "give --model (spec, HF folder or export) and/or --adapter (adapter folder or .ckpt)"
        )
    trained = load_trained(adapter or model, model if adapter else None, None, config_overrides, dtype)
    data_args = (trained.config.get("data") or {}).get("init_args") or {}
    template = template if template is not None else data_args.get("template")
    system = system if system is not None else data_args.get("system")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = ChatEncoder(trained.tokenizer, template=template, system=system)
    return Generator(trained.model.to(device).eval(), trained.tokenizer, encoder)


def read_conversations(path: Path) -> list[tuple[dict, list[Message]]]:
    """JSONL rows with `messages` (a trailing assistant turn is the reference, not prompted) or
    `prompt`/`query` (+ optional `system`); every bad row is reported at once."""
    if not path.is_file():
        raise ValueError(f"input file {path} does not exist")
    rows, problems = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append((row, conversation_of(row)))
        except (ValueError, TypeError, AttributeError) as err:
            problems.append(f"{path}:{number}: {err}")
    if problems:
        raise ValueError(f"{len(problems)} bad input rows:\n" + "\n".join(problems[:20]))
    return rows


def conversation_of(row: dict) -> list[Message]:
    if isinstance(row.get("messages"), list) and row["messages"]:
        messages = list(row["messages"])
        return messages[:-1] if messages[-1].get("role") == "assistant" else messages
    text = row.get("prompt", row.get("query"))
    if not isinstance(text, str):
        raise ValueError(f"row has neither `messages` nor a `prompt`/`query` string (keys: {sorted(row)})")
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return [*system, {"role": "user", "content": text}]


def answer_file(
    generator: Generator, input_file: Path, output_file: Path, sampling: Sampling, batch_size: int
) -> int:
    """Answer every row of `input_file`, writing it with a `response` field to `output_file`."""
    from tqdm import tqdm

    rows = read_conversations(input_file)
    answers: list[str | None] = [None] * len(rows)
    # longest prompts first: batches of similar lengths waste less padding, and memory errors show early
    order = sorted(range(len(rows)), key=lambda i: -len(generator.encoder.prompt_ids(rows[i][1])))
    with tqdm(total=len(rows), desc="infer", unit="row") as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for i, text in zip(chunk, generator.answer([rows[i][1] for i in chunk], sampling), strict=True):
                answers[i] = text
            bar.update(len(chunk))
    output_file.parent.mkdir(parents=True, exist_ok=True)
    with output_file.open("w") as f:
        for (row, _), text in zip(rows, answers, strict=True):
            f.write(json.dumps({**row, "response": text}, ensure_ascii=False) + "\n")
    return len(rows)


def chat(generator: Generator, sampling: Sampling) -> None:
    """Interactive multi-turn chat on stdin/stdout with streamed answers; `clear` resets, `exit` or EOF ends."""
    from transformers import TextStreamer

    history: list[Message] = []
    while True:
        print("user> ", end="", flush=True)
        line = sys.stdin.readline()
        text = line.strip()
        if not line or text in ("exit", "quit"):
            print()
            return
        if text == "clear":
            history = []
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        print("assistant> ", end="", flush=True)
        streamer = TextStreamer(generator.tokenizer, skip_prompt=True, skip_special_tokens=True)
        [answer] = generator.answer([history], sampling, streamer=streamer)
        history.append({"role": "assistant", "content": answer})


def infer(
    model: str | None = None,
    adapter: str | None = None,
    prompt: str | None = None,
    messages: str | None = None,
    interactive: bool = False,
    input_file: str | None = None,
    output_file: str | None = None,
    batch_size: int = 8,
    template: str | None = None,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    dtype: models.Dtype = "auto",
    config_overrides: dict[str, Any] | None = None,
    device: str = "auto",
    images: list[str] | None = None,
) -> list[str] | None:
    """Answer a prompt, a conversation, a JSONL file, or chat interactively.

    Args:
        model: model spec (alias, hub id), HF folder (e.g. a merged export) or base of `adapter`.
        adapter: PEFT adapter folder or Lightning `.ckpt`; its run config supplies the base model.
        prompt: one user message to answer.
        messages: a conversation as a JSON list of `{role, content}` to answer.
        interactive: chat on stdin with streamed answers until EOF or `exit`.
        input_file: JSONL rows with `messages` or `prompt`/`query` to answer in batches.
        output_file: where the rows go with a `response` field (default `<input_file>.out.jsonl`).
        batch_size: rows generated together (left-padded) for `input_file`.
        template: named chat template; default: the run's, else the tokenizer's own.
        system: system prompt for conversations without one; default: the run's.
        max_new_tokens: most tokens generated per answer.
        temperature: sampling temperature; 0 is greedy (deterministic).
        top_p: nucleus sampling mass.
        top_k: sample among the k most likely tokens; 0 disables.
        repetition_penalty: penalty (> 1) on tokens already present.
        seed: random seed for sampling.
        dtype: weight dtype; `auto` keeps the checkpoint's.
        config_overrides: model config fields overriding the run's, e.g. `{num_hidden_layers: 2}`.
        device: `auto` (CUDA when available), `cpu`, `cuda`, `cuda:1`, ...
        images: image files (or base64) for `--prompt`/`--messages` to a vision-language model; `<image>`
            tags place them, else they go before the first user message (see docs/multimodal.md).
    """
    chosen = [bool(prompt), bool(messages), interactive, bool(input_file)]
    if sum(chosen) != 1:
        raise ValueError("give exactly one of --prompt, --messages, --interactive true, --input_file")
    conversation = json.loads(messages) if messages else [{"role": "user", "content": prompt}]
    if messages and not (isinstance(conversation, list) and all(isinstance(m, dict) for m in conversation)):
        raise ValueError(f"--messages must be a JSON list of {{role, content}} objects, got {messages!r}")
    sampling = Sampling(max_new_tokens, temperature, top_p, top_k, repetition_penalty)
    generator = load_generator(model, adapter, template, system, dtype, config_overrides, device)
    torch.manual_seed(seed)
    if images:
        if interactive or input_file:
            raise ValueError("--images goes with --prompt or --messages")
        from lit_swift.multimodal.evaluate import answer_with_images

        answers = [answer_with_images(generator, conversation, images, sampling.generate_kwargs())]
        print(answers[0])
        return answers
    if interactive:
        return chat(generator, sampling)
    if input_file:
        out = Path(output_file) if output_file else Path(input_file).with_suffix(".out.jsonl")
        count = answer_file(generator, Path(input_file), out, sampling, batch_size)
        print(f"wrote {count} answers to {out}")
        return None
    answers = generator.answer([conversation], sampling)
    print(answers[0])
    return answers
