"""Next-token cross-entropy computed only where targets exist, in chunks of the LM head.

With a frozen head (LoRA, freeze tuning) the gradient with respect to the hidden states is computed
chunk by chunk during the forward (`_FrozenHeadNLL`), so no [N, vocab] tensor outlives its chunk:
the memory of a fused linear cross-entropy, in plain torch, with no extra FLOPs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def _chunk_nll(hidden: Tensor, head: nn.Module, targets: Tensor) -> Tensor:
    logits = head(hidden).float()  # [n, V]
    return F.cross_entropy(logits, targets, reduction="none")  # [n]


class _FrozenHeadNLL(torch.autograd.Function):
    """Per-token NLL through a frozen linear head; d(nll)/d(hidden) is built in forward, chunk by chunk.

    d nll_n / d h_n = (softmax(z_n) - onehot(t_n)) @ W, so backward only scales row n by the
    incoming gradient g_n: any weighting of the tokens downstream (means, DPO's per-sequence sums)
    stays exact. The head's weight gets no gradient, which is why it must be frozen.
    """

    @staticmethod
    def forward(
        ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk: int
    ) -> Tensor:
        nll = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)  # [N]
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None  # [N, H]
        for start in range(0, hidden.shape[0], chunk):
            end = min(start + chunk, hidden.shape[0])
            logits = F.linear(hidden[start:end], weight, bias).float()  # [n, V]
            t = targets[start:end, None]  # [n, 1]
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # [n, 1]
            nll[start:end] = (lse - logits.gather(1, t)).squeeze(1)
            if grad is not None:
                probs = logits.sub_(lse).exp_()  # softmax, in place of the logits
                probs.scatter_add_(1, t, probs.new_full(t.shape, -1.0))
                grad[start:end] = probs.to(weight.dtype) @ weight
        ctx.save_for_backward(grad)
        return nll

    @staticmethod
    def backward(ctx, grad_nll: Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_nll[:, None].to(grad.dtype), None, None, None, None


def _frozen_linear(head: nn.Module) -> bool:
    bias = getattr(head, "bias", None)
    return (
        type(head) is nn.Linear and not head.weight.requires_grad and (bias is None or not bias.requires_grad)
    )


def token_nll(
    hidden: Tensor, head: nn.Module, targets: Tensor, chunk_size: int = 2048, recompute: bool = False
) -> Tensor:
    """Per-token negative log-likelihood without full-vocabulary logits for ignored positions.

    Args:
        hidden: final hidden states at target positions only. # [N, H]
        head: the LM head (vocabulary projection).
        targets: token ids to predict at those positions. # [N]
        chunk_size: rows of logits materialised at once.
        recompute: recompute each chunk's logits in backward instead of keeping them (less memory);
            a frozen plain `nn.Linear` head needs neither (see `_FrozenHeadNLL`).

    Returns:
        the NLL of each target. # [N]
    """
    if hidden.shape[0] and torch.is_grad_enabled() and hidden.requires_grad and _frozen_linear(head):
        return _FrozenHeadNLL.apply(hidden, head.weight, head.bias, targets, chunk_size)
    pieces = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if recompute and torch.is_grad_enabled():
            pieces.append(checkpoint(_chunk_nll, h, head, t, use_reentrant=False))
        else:
            pieces.append(_chunk_nll(h, head, t))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0)


def token_logps(
    hidden: Tensor, head: nn.Module, targets: Tensor, chunk_size: int = 2048, recompute: bool = False
) -> Tensor:
    """Per-token log-probabilities of `targets` (the negative of `token_nll`). # [N]"""
    return -token_nll(hidden, head, targets, chunk_size, recompute)
