"""The in-process rollout engine: batched, KV-cached sampling with the policy being trained.

It generates with the live model (adapters on, eval mode, no autograd), so it runs on CPU and in
tests. Every completion draws its tokens from its own seeded generator, one uniform number per
token, so its draws do not depend on which other requests share its batch. `completion_logps` is
the trainer-side recompute of the same per-token log-probs (see `Completion`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_swift import tuners
from lit_swift.losses.causal_lm import token_logps
from lit_swift.rollout.engine import Completion, Request, RolloutEngine, SamplingParams

OnToken = Callable[[int, int], bool]
"""(request index, sampled token id) -> end this completion now."""


def rollout_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> dict[str, Tensor]:
    """Prompt (left-padded to P) + completion (right-padded to T) rows for one forward.

    Returns `input_ids`, `attention_mask`, `position_ids` [N, P + T] and `completion_mask` [N, T]; the
    token predicting completion token t sits at column P - 1 + t. Meant for rotary-position models
    (Llama, Qwen, SmolLM2...), see the position comment below.
    """
    width = max(len(p) for p in prompts)
    length = max(1, max(len(c) for c in completions))
    n = len(prompts)
    input_ids = torch.full((n, width + length), pad_id, dtype=torch.long)  # [N, P+T]
    attention_mask = torch.zeros((n, width + length), dtype=torch.long)  # [N, P+T]
    completion_mask = torch.zeros((n, length), dtype=torch.bool)  # [N, T]
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        input_ids[i, width - len(p) : width + len(c)] = torch.tensor(p + c, dtype=torch.long)
        attention_mask[i, width - len(p) : width + len(c)] = 1
        completion_mask[i, : len(c)] = True
    # Column positions, the same in every row: a left-padded prompt is shifted by its padding, which
    # rotary embeddings ignore (they depend on relative positions only). Each row is then one span, so
    # `sdpa_varlen` takes the single masked SDPA call instead of one call per pad position.
    position_ids = torch.arange(width + length).expand(n, -1)  # [N, P+T]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "completion_mask": completion_mask,
    }


def completion_logps(
    model: nn.Module, batch: dict[str, Tensor], temperature: float = 1.0, chunk_size: int = 2048
) -> Tensor:
    """log softmax(logits / temperature) of each completion token under `model` (0 at pads). # [N, T]

    `batch` comes from `rollout_batch` (on the model's device). Only completion positions reach the
    LM head, in chunks; gradients flow when enabled.
    """
    lm = tuners.base_model(model)
    backbone = getattr(lm, lm.base_model_prefix)
    mask = batch["completion_mask"]  # [N, T]
    length = mask.shape[1]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    hidden = backbone(**inputs, use_cache=False).last_hidden_state  # [N, P+T, H]
    width = hidden.shape[1] - length
    hidden = hidden[:, width - 1 : width - 1 + length][mask]  # [M, H]
    targets = batch["input_ids"][:, width : width + length][mask]  # [M]
    head = lm.get_output_embeddings()
    tau = temperature if temperature > 0 else 1.0
    if getattr(head, "bias", None) is None:
        values = token_logps(hidden / tau, head, targets, chunk_size)  # a linear head: W(h/t) = (Wh)/t
    else:
        values = torch.log_softmax(head(hidden).float() / tau, -1).gather(1, targets[:, None])[:, 0]
    out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)  # [N, T]
    return out.masked_scatter(mask, values)


def _penalise(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL repetition penalty (Keskar et al. 2019) on tokens already in each row. # [B, V]"""
    scores = logits.gather(1, seen)
    scores = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits.scatter(1, seen, scores)


def _truncate(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Top-k, then nucleus (top-p) truncation: excluded logits become -inf. # [B, V]"""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, index = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop = (probs.cumsum(-1) - probs) >= top_p
        logits = logits.scatter(1, index, ordered.masked_fill(drop, float("-inf")))
    return logits


class HFEngine(RolloutEngine):
    """Generates with the in-process policy (`sync_weights` binds it; nothing is copied).

    Args:
        max_batch_size: sequences per decoding batch (requests are processed in order, in chunks).
        pad_token_id: id written at pad positions (masked, so any valid id works).
    """

    def __init__(self, max_batch_size: int = 64, pad_token_id: int = 0):
        self.max_batch_size, self.pad_token_id = max_batch_size, pad_token_id
        self.model: nn.Module | None = None

    def sync_weights(self, model: nn.Module) -> None:
        self.model = model

    def generate(
        self, requests: list[Request], sampling: SamplingParams, on_token: OnToken | None = None
    ) -> list[Completion]:
        """`on_token(i, token_id)`, if given, sees each token sampled for request i as it is drawn;
        returning True ends that completion there (serving: streaming, stop strings, gone clients)."""
        assert self.model is not None, "HFEngine.sync_weights(model) binds the policy before generate"
        was_training = self.model.training
        self.model.eval()
        try:
            out = []
            for start in range(0, len(requests), self.max_batch_size):
                hook = None if on_token is None else (lambda i, t, s=start: on_token(s + i, t))
                out += self._generate(requests[start : start + self.max_batch_size], sampling, hook)
            return out
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def _generate(
        self, requests: list[Request], sampling: SamplingParams, on_token: OnToken | None
    ) -> list[Completion]:
        from transformers import DynamicCache

        device = next(self.model.parameters()).device
        batch = rollout_batch([r.prompt_ids for r in requests], [[] for _ in requests], self.pad_token_id)
        width = max(len(r.prompt_ids) for r in requests)
        mask = batch["attention_mask"][:, :width].to(device)  # [B, P]
        ids, positions = batch["input_ids"][:, :width].to(device), batch["position_ids"][:, :width].to(device)
        generators = [torch.Generator().manual_seed(r.seed) for r in requests]
        seen = ids.clone()  # [B, P + t]: prompt and completion so far, for the repetition penalty
        tokens: list[list[int]] = [[] for _ in requests]
        logps: list[list[float]] = [[] for _ in requests]
        entropy = [0.0] * len(requests)
        done = [False] * len(requests)
        stops = set(sampling.stop_token_ids)
        cache = DynamicCache()
        for _ in range(sampling.max_new_tokens):
            logits = (
                self.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                )
                .logits[:, -1]
                .float()
            )  # [B, V]
            chosen, chosen_logps, entropies = self._pick(logits, seen, generators, sampling)
            for b, (token, logp) in enumerate(zip(chosen, chosen_logps, strict=True)):
                if not done[b]:
                    tokens[b].append(token)
                    logps[b].append(logp)
                    entropy[b] += entropies[b]
                    done[b] = token in stops or (on_token is not None and bool(on_token(b, token)))
            if all(done):
                break
            ids = torch.tensor(chosen, device=device)[:, None]  # [B, 1]
            seen = torch.cat([seen, ids], dim=1)
            mask = torch.cat([mask, mask.new_ones(len(requests), 1)], dim=1)
            positions = positions[:, -1:] + 1
        return [
            Completion(t, lp, "stop" if t and t[-1] in stops else "length", {"entropy": e / len(t)})
            for t, lp, e in zip(tokens, logps, entropy, strict=True)
        ]

    @staticmethod
    def _pick(
        logits: Tensor, seen: Tensor, generators: list[torch.Generator], sampling: SamplingParams
    ) -> tuple[list[int], list[float], list[float]]:
        """Each row's next token (greedy, or one seeded uniform draw), its log-prob by `Completion`'s
        definition (full softmax at the temperature, before penalty and truncation) and that
        distribution's entropy."""
        greedy = sampling.temperature <= 0
        full = F.log_softmax(logits / (1.0 if greedy else sampling.temperature), dim=-1)  # [B, V]
        scores = logits
        if sampling.repetition_penalty != 1.0:
            scores = _penalise(scores, seen, sampling.repetition_penalty)
        if greedy:
            chosen = scores.argmax(-1)  # [B]
        else:
            scores = _truncate(scores / sampling.temperature, sampling.top_k, sampling.top_p)
            cdf = scores.softmax(-1).cpu().cumsum(-1)  # [B, V]
            u = torch.stack([torch.rand(1, generator=g, dtype=cdf.dtype) for g in generators])  # [B, 1]
            chosen = torch.searchsorted(cdf, u * cdf[:, -1:], side="right").clamp(max=cdf.shape[1] - 1)[:, 0]
            chosen = chosen.to(logits.device)
        values = full.gather(1, chosen[:, None])[:, 0]
        entropy = -(full.exp() * full).sum(-1)  # [B]
        return chosen.tolist(), values.tolist(), entropy.tolist()
