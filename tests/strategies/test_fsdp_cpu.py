"""Two gloo processes shard a LoRA SFT objective with real FSDP on CPU; the gathered weights are whole.

Lightning's `FSDPStrategy` cannot run here (it requires a CUDA accelerator, and torch's FSDP1 needs an
explicit CPU `device_id` that Lightning does not pass), so each process wraps the objective itself, the
way the strategies do: torch's activation-checkpoint wrapper on every decoder layer (the
`_checkpoint_wrapped_module.` names of `FSDP(activation_checkpointing=True)`), then one FSDP unit per
decoder layer plus the root. Both FSDP2 (`fully_shard`, every rank holds a `Shard(0)` DTensor) and FSDP1
(flat parameters, `_fsdp_wrapped_module.` names) are checked. Per kind, every rank:

- checks that it holds about half of the weights (the run really is sharded),
- gathers the adapters with `fsdp.full_state_dict(trainable_only=True)` and the whole model without
  it, and compares them with the unsharded objective (same seed, exact equality),
- runs `on_save_checkpoint` over the gathered state (what Lightning hands it): exactly the adapters stay,
- (FSDP1) asks the `FSDP` preset for its checkpoint weights and `gather_state_dict` for the HF folder's:
  both are exactly the adapters,
- (rank 0) writes the HF adapter folder from the gathered adapters with `save_hf(state_dict=...)`.

A full fine-tuning objective sharded with FSDP1 writes a whole-model folder the same way. The test
process then reloads the adapter folders with PEFT onto the base model (adapter weights equal to the
unsharded objective's) and the full folder with transformers (weights equal to the base model's).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
SEED = 3


def build_objective(model_dir: str, full: bool = False):
    """An SFT objective on the tiny model: LoRA with random (not zero) LoRA B so the adapters matter, or
    full fine-tuning."""
    from lit_swift import tuners
    from lit_swift.objectives.sft import SFT

    torch.manual_seed(SEED)
    tuner = tuners.Full() if full else tuners.LoRA(r=4, alpha=8, dropout=0.0)
    objective = SFT(model_dir, tuner=tuner, attn_implementation="sdpa")
    objective.configure_model()
    for name, param in objective.named_parameters():
        if "lora_" in name:
            param.data.normal_(std=0.02)
    return objective


class FakeTrainer:
    """What `on_save_checkpoint` reads from the trainer."""

    datamodule = None
    accumulate_grad_batches = 1
    world_size = 2


def shard(objective, kind: str) -> torch.nn.Module:
    """Wrap the objective as the FSDP strategies do; returns the root module to gather from.

    Activation checkpointing goes inside FSDP2's units (applied first) and around FSDP1's units
    (applied after wrapping, as Lightning's `FSDPStrategy` does).
    """
    from lit_swift.strategies.fsdp import decoder_layer_classes
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    layers = objective.backbone.layers
    (layer_class,) = decoder_layer_classes(objective.model)
    if kind == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        apply_activation_checkpointing(objective, check_fn=lambda m: isinstance(m, layer_class))
        mesh = init_device_mesh("cpu", (2,))
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(objective, mesh=mesh)
        return objective
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    root = FullyShardedDataParallel(
        objective, auto_wrap_policy=ModuleWrapPolicy({layer_class}), device_id=torch.device("cpu"),
        use_orig_params=True,
    )  # fmt: skip
    apply_activation_checkpointing(root, check_fn=lambda m: isinstance(m, layer_class))
    return root


def worker(rank: int, model_dir: str, out: Path) -> None:
    import torch.distributed as dist
    from lit_swift.strategies.fsdp import FSDP, full_state_dict
    from lit_swift.strategies.gather import gather_state_dict

    from lit_swift.objectives.base import clean_name

    dist.init_process_group("gloo", rank=rank, world_size=2)
    report = {}
    for kind in ("fsdp2", "fsdp1"):
        objective = build_objective(model_dir)
        reference = {k: v.detach().clone() for k, v in objective.state_dict().items()}
        adapters = {k for k, p in objective.named_parameters() if p.requires_grad}
        root = shard(objective, kind)
        names = [n for n, _ in objective.named_parameters()]
        # FSDP2 parameters are DTensors; FSDP1's are views of this rank's part of the flat parameter
        local = sum((p.to_local() if kind == "fsdp2" else p).numel() for p in objective.parameters())
        lora = full_state_dict(root, trainable_only=True, rank0_cpu=False)
        whole = full_state_dict(root, trainable_only=False, rank0_cpu=False)
        checkpoint = {"state_dict": dict(whole)}
        if kind == "fsdp1":  # what Lightning asks the FSDP preset for at a checkpoint, and HFCheckpoint
            strategy = FSDP()
            strategy.model, strategy._lightning_module = root, objective
            strategy.parallel_devices = [torch.device("cpu")] * 2
            preset_state = strategy.lightning_module_state_dict()
            hf_state = gather_state_dict(strategy, trainable_only=True)
        objective._trainer = FakeTrainer()  # `on_save_checkpoint` records the batch layout
        objective.on_save_checkpoint(checkpoint)
        report[kind] = {
            "wrapped_names": sum("_checkpoint_wrapped_module." in n for n in names),
            "fsdp1_names": sum("_fsdp_wrapped_module." in n for n in names),
            "local_numel": local,
            "numel": sum(reference[clean_name(n)].numel() for n in names),
            "lora_keys_equal": set(lora) == adapters,
            "lora_values_equal": all(torch.equal(lora[k], reference[k]) for k in adapters),
            "whole_keys_equal": set(whole) == set(reference),
            "whole_values_equal": all(torch.equal(whole[k], reference[k]) for k in reference),
            "lean_keys_equal": set(checkpoint["state_dict"]) == adapters,
        }  # fmt: skip
        if kind == "fsdp1":
            report[kind]["preset_checkpoint_is_the_adapters"] = set(preset_state) == adapters and all(
                torch.equal(preset_state[k], reference[k]) for k in adapters
            )
            report[kind]["hf_gather_is_the_adapters"] = set(hf_state) == adapters
        if rank == 0:
            objective.save_hf(out / f"{kind}-adapter.hf", state_dict=lora)
            torch.save(reference, out / "reference.pt")
        dist.barrier()
    # full fine-tuning under FSDP1 (Lightning's FSDPStrategy): the HF folder is a whole model
    objective = build_objective(model_dir, full=True)
    whole = full_state_dict(shard(objective, "fsdp1"), trainable_only=False, rank0_cpu=False)
    if rank == 0:
        objective.save_hf(out / "full.hf", state_dict=whole)
    dist.barrier()
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp_on_two_cpu_processes_gathers_whole_adapters_and_writes_the_hf_folder(tiny_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE), str(rank), tiny_dir, str(tmp_path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for rank in (0, 1)
    ]
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for p in procs:
                os.killpg(p.pid, 9)
            raise
        assert proc.returncode == 0, out[-6000:]

    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for kind, checks in report.items():
            assert checks["wrapped_names"] > 0, kind  # parameters carry the activation-checkpoint prefix
            assert (checks["fsdp1_names"] > 0) == (kind == "fsdp1"), kind
            assert checks["local_numel"] < 0.6 * checks["numel"], kind  # this rank holds about half
            equal = [k for k in checks if k.endswith(("_equal", "_adapters"))]
            assert len(equal) == (7 if kind == "fsdp1" else 5)
            for check in equal:
                assert checks[check], f"{kind} rank {rank}: {check}"

    # the objective's keys are `model.` + the PeftModel's
    reference = {k.removeprefix("model."): v for k, v in torch.load(tmp_path / "reference.pt").items()}
    adapters = {k for k in reference if "lora_" in k}
    assert len(adapters) == 2 * 7 * 2  # layers x all-linear x (A, B)
    for kind in ("fsdp2", "fsdp1"):
        folder = tmp_path / f"{kind}-adapter.hf"
        state = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_dir), str(folder)
        ).state_dict()
        assert adapters <= set(state), kind
        for key in adapters:
            torch.testing.assert_close(state[key], reference[key], rtol=0, atol=0, msg=f"{kind}: {key}")
        assert (folder / "tokenizer_config.json").exists()

    # the full model folder equals the initial weights (same seed, no training)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "full.hf").state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    assert saved.keys() == base.keys()
    for key, value in base.items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=0, msg=key)


if __name__ == "__main__":
    worker(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
