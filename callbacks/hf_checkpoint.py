"""Checkpointing that writes atomically and puts an HF-format folder beside every `.ckpt`.

`x.ckpt` (Lightning, for exact resume) gets a sibling `x.hf/`: a PEFT adapter folder for LoRA runs
or a safetensors model folder for full fine-tuning, with tokenizer files and the run's resolved
config. Both are staged and committed as one `lit_swift.atomic` transaction, so after a kill at any
point of a save the pair is either the previous or the new one, never a mix, and the next save or
`ckpt_path: last` first finishes or undoes the interrupted one. Under sharding strategies (FSDP,
DeepSpeed ZeRO-3) every rank first takes part in gathering the weights (`lit_swift.strategies.gather`),
then rank 0 writes the folder from them. SIGTERM and SIGINT during training save a checkpoint at the
next optimizer-step boundary and exit with 128 + the signal number.
"""

from __future__ import annotations

import inspect
import signal
import sys
import threading
from pathlib import Path
from typing import Literal

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only
from lit_swift.strategies.gather import gather_state_dict, shards_weights

from lit_swift import atomic

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""Signals that stop training gracefully (pre-emption, Ctrl-C): checkpoint at the next step boundary, exit."""


def hf_folder(ckpt_path: str | Path) -> Path:
    """The HF-format folder that belongs to a Lightning checkpoint file."""
    path = Path(ckpt_path)
    return path.with_name(path.stem + ".hf")


class HFCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` (same arguments: `save_top_k`, `every_n_train_steps`, `monitor`, ...) plus HF folders.

    Args:
        save_hf: also write the HF-format folder next to each checkpoint.
        save_last: also keep `last.ckpt` (what `--ckpt_path last` resumes from); on by default.
        **kwargs: passed to `ModelCheckpoint`.
    """

    def __init__(self, save_hf: bool = True, save_last: bool | Literal["link"] | None = True, **kwargs):
        # An explicit parameter, not `kwargs.setdefault`: jsonargparse passes every ModelCheckpoint
        # default (save_last=None) when the callback comes from YAML, which would switch it off.
        super().__init__(save_last=save_last, **kwargs)
        self.save_hf = save_hf
        self._signal: int | None = None
        self._step_before = 0
        self._dirpath_given = kwargs.get("dirpath") is not None

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self._writes_hf(pl_module):
            check_can_save_hf(trainer.strategy, pl_module)  # fail before training, not at the first save

    def _writes_hf(self, pl_module) -> bool:
        return self.save_hf and hasattr(pl_module, "save_hf")

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        if trainer.is_global_zero:
            atomic.recover(filepath)  # a save this one replaces may have been killed mid-way
        trainer.strategy.barrier()
        tmp = str(atomic.staging(filepath))
        super()._save_checkpoint(trainer, tmp)
        config = Path(trainer.log_dir or "") / "config.yaml"  # a collective under DDP: every rank asks
        module = trainer.lightning_module
        state = None
        if self._writes_hf(module):
            adapter = getattr(getattr(module, "tuner", None), "is_adapter", False)
            state = gather_state_dict(trainer.strategy, trainable_only=adapter)  # a collective when sharded
        if trainer.is_global_zero:
            with atomic.transaction(filepath) as staged:
                staged.append(Path(filepath))
                if self._writes_hf(module):
                    extra = {} if state is None else {"state_dict": state}
                    module.save_hf(hf_folder(filepath), config, **extra)
        trainer.strategy.barrier()
        self._last_checkpoint_saved = filepath

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Also save `last` when `max_steps` ends the run mid-epoch, or when a stop signal came.

        Lightning's own save after that point happens at epoch end and marks the epoch finished, so a
        resume with a larger `max_steps` would skip the rest of the epoch; a batch-end save resumes
        at exactly the next batch (the epoch-end save then sees this step saved and skips).
        """
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        reached = 0 < trainer.max_steps <= trainer.global_step
        if reached and self.save_last:
            self._save_now(trainer)
        stepped = trainer.global_step > self._step_before
        if (
            stepped
            and not reached
            and trainer.strategy.reduce_boolean_decision(self._signal is not None, all=False)
        ):
            self._stop(trainer)

    # ----- SIGTERM / SIGINT: save at the next optimizer-step boundary, then exit -----
    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        # after Lightning's own SIGTERM handler, which would stop mid-accumulation without a checkpoint
        self._signal, self._previous = None, {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_before = trainer.global_step

    def _on_signal(self, signum: int, frame) -> None:
        if self._signal is not None:  # asked twice: stop now, without a checkpoint
            self._restore_handlers()
            raise KeyboardInterrupt
        self._signal = signum
        print(
            f"lit-swift: {signal.Signals(signum).name} received: saving a checkpoint after this optimizer "
            "step, then stopping (send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def _save_now(self, trainer) -> None:
        """Save this step (as `last`, and under its own name when `last` is a link or off), unless saved."""
        if self._last_global_step_saved == trainer.global_step:
            return
        candidates = self._monitor_candidates(trainer)
        if self.save_last is not True:  # a `link` would point `last` at an earlier step
            self._save_checkpoint(trainer, self.format_checkpoint_name(candidates))
        if self.save_last:
            self._save_last_checkpoint(trainer, candidates)

    def _stop(self, trainer) -> None:
        self._save_now(trainer)
        signum = self._signal or signal.SIGTERM  # a rank without the signal stops with the ones that got it
        rank_zero_info(
            f"stopped by {signal.Signals(signum).name} at step {trainer.global_step}; checkpoint "
            f"{self._last_checkpoint_saved}: continue with `--ckpt_path last`"
        )
        raise SystemExit(128 + signum)  # the shell's code for a process ended by that signal

    def _restore_handlers(self) -> None:
        for sig, handler in getattr(self, "_previous", {}).items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_handlers()
        super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()
        super().on_exception(trainer, pl_module, exception)

    def _find_last_checkpoints(self, trainer) -> set[str]:
        """Every complete checkpoint of this run's folders; Lightning resumes `ckpt_path: last` from the newest.

        Not only `last.ckpt`: a kill between a step's save and its `last` save leaves `last.ckpt` a save
        behind. Without an explicit `dirpath` the folders are `<logger root>/version_*/checkpoints` (a
        resumed run logs to a new version). Rank 0 first finishes or undoes interrupted saves there.
        """
        folders = {Path(p).parent for p in super()._find_last_checkpoints(trainer)}
        if self.dirpath is not None:
            folders.add(Path(self.dirpath))
        if not self._dirpath_given and trainer.loggers and trainer.loggers[0].root_dir:
            folders |= set(Path(trainer.loggers[0].root_dir).glob("*/checkpoints"))
        if rank_zero_only.rank == 0:
            for folder in folders:
                atomic.recover_folder(folder)
        return {str(p) for folder in folders for p in folder.glob(f"*{self.FILE_EXTENSION}")}

    def _remove_checkpoint(self, trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            atomic.remove(hf_folder(filepath))


def check_can_save_hf(strategy, pl_module) -> None:
    """Whether `pl_module.save_hf` can write its folder under `strategy`.

    Raises:
        ValueError: the strategy shards the weights and `save_hf` cannot write from gathered weights
            (it has no `state_dict` argument).
    """
    if shards_weights(strategy) and "state_dict" not in inspect.signature(pl_module.save_hf).parameters:
        raise ValueError(
            f"{type(pl_module).__name__}.save_hf cannot write from gathered weights, which "
            f"{type(strategy).__name__} needs (each rank holds only a shard). Set `save_hf: false` on the "
            "checkpoint callback (the .ckpt is still saved) or train with DDP."
        )
