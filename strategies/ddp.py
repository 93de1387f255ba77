"""DDP preset: Lightning's `DDPStrategy` with defaults that suit LoRA/full fine-tuning of HF models.

Use as `trainer.strategy: {class_path: lit_swift.strategies.ddp.DDP}` or `configs/trainer/ddp.yaml`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from lightning.pytorch.strategies import DDPStrategy


class DDP(DDPStrategy):
    """One model replica per process; gradients all-reduced in buckets during backward.

    Every trained parameter gets a gradient at every step (LoRA adapters included), so unused-parameter
    detection stays off, and the graph is left dynamic because packing changes shapes between steps.
    Gradient checkpointing works under DDP because `models.py` sets `use_reentrant=False`.

    Args:
        process_group_backend: `nccl` for GPUs, `gloo` for CPU processes; None picks by device.
        find_unused_parameters: search the autograd graph for parameters without gradients each step
            (slow); only needed when some trained weights are skipped by the forward.
        static_graph: tell DDP the graph never changes (faster, but wrong with varying packed shapes).
        gradient_as_bucket_view: gradients alias the all-reduce buckets (saves one gradient copy).
        bucket_cap_mb: size of the all-reduce buckets.
        timeout_minutes: how long a collective may wait before the run fails (slow first checkpoint saves
            on rank 0 count against it).
        start_method: `popen` re-runs the command per device (the `lit-swift fit` script); the others fork
            or spawn from Python.
        **kwargs: passed to `torch.nn.parallel.DistributedDataParallel`.
    """

    def __init__(
        self,
        process_group_backend: str | None = None,
        find_unused_parameters: bool = False,
        static_graph: bool = False,
        gradient_as_bucket_view: bool = True,
        bucket_cap_mb: int = 25,
        timeout_minutes: float = 30.0,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
        **kwargs: Any,
    ):
        super().__init__(
            process_group_backend=process_group_backend,
            timeout=timedelta(minutes=timeout_minutes),
            start_method=start_method,
            find_unused_parameters=find_unused_parameters,
            static_graph=static_graph,
            gradient_as_bucket_view=gradient_as_bucket_view,
            bucket_cap_mb=bucket_cap_mb,
            **kwargs,
        )
