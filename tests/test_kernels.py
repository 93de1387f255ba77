"""Kernel switches: GPU-only ones fail clearly on CPU; `compile` compiles the backbone in place."""

from __future__ import annotations

import pytest
import torch

from lit_swift.objectives.sft import SFT

SMALL = {"model": "smollm2-135m-instruct", "config_overrides": {"num_hidden_layers": 1}}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_liger_on_cpu_is_a_clear_error():
    with pytest.raises(ValueError, match="liger"):
        SFT(**SMALL, liger_kernels=True).configure_model()


def test_compile_wraps_the_backbone_forward_and_keeps_state_dict_keys():
    plain, compiled = SFT(**SMALL), SFT(**SMALL, compile=True)
    plain.configure_model()
    compiled.configure_model()
    assert compiled.backbone._compiled_call_impl is not None and plain.backbone._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(plain.state_dict())


@pytest.mark.slow
def test_compiled_backbone_gives_the_same_hidden_states():
    plain, compiled = SFT(**SMALL), SFT(**SMALL, compile=True)
    for module in (plain, compiled):
        module.configure_model()
        module.eval()
    batch = {"input_ids": torch.tensor([[1, 9690, 198, 19556, 905]]), "position_ids": torch.arange(5)[None]}
    with torch.no_grad():
        torch.testing.assert_close(
            compiled.hidden_states(batch), plain.hidden_states(batch), rtol=1e-4, atol=1e-4
        )


def test_gradient_checkpointing_gives_the_same_gradients():
    from lit_swift.data.collate import collate_padded
    from lit_swift.tuners import LoRA
    from lit_swift.types import EncodedSample

    batch = collate_padded(
        [EncodedSample([1, 9690, 198, 19556, 905, 2], [-100, -100, -100, 19556, 905, 2])], 2
    )
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        module = SFT(**SMALL, tuner=LoRA(dropout=0.0), gradient_checkpointing=checkpointing)
        module.configure_model()
        for name, param in module.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.02)  # B starts at zero: give A a gradient too
        loss, _ = module.nll_sum(batch)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6)
