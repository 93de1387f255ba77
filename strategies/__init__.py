"""Distributed-strategy presets (installed as `lit_swift.strategies`): `ddp.DDP`, `fsdp.FSDP` and
`deepspeed.DeepSpeedZeRO`, each usable as `trainer.strategy` by class_path or via `configs/trainer/*.yaml`.

Submodules are imported by path only, so `deepspeed.py` (the one optional backend) loads on demand.
"""
