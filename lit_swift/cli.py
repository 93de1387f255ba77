"""`lit-swift` entry point: fit/validate/test/predict through LightningCLI, tools through jsonargparse.

`main(args=None)` so tests call it in-process. The objective and the DataModule are chosen by
`class_path`; the model spec is written once (`model.init_args.model`) and linked to the
DataModule's tokenizer.
"""

from __future__ import annotations

import os
import sys

from lightning.pytorch.cli import LightningCLI

from lit_swift import runtime

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")
TOOL_COMMANDS = {
    "data": "Inspect a dataset: `lit-swift data preview --model M --dataset FILE`",
    "export": "Checkpoint -> HF folder: `lit-swift export RUN/checkpoints/last.ckpt --merge_lora true`",
    "infer": "Generate: `lit-swift infer --adapter RUN/checkpoints/last.hf --prompt 'Hi'` (or --interactive)",
    "deploy": "OpenAI-compatible server: `lit-swift deploy --model M [--adapter A] --port 8000`",
    "rollout": "Generation server for GRPO server mode (SGLang API): `lit-swift rollout --model M --port 30000`",
    "eval": "lm-eval tasks: `lit-swift eval --model M [--adapter A] --tasks litswift --limit 20` (or --server URL)",
}


class LitSwiftCLI(LightningCLI):
    """LightningCLI with the model spec linked from the objective to the DataModule."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.model", "data.init_args.tokenizer")

    def _instantiate_trainer(self, config: dict, callbacks: list):
        """CSV logging and `HFCheckpoint` (HF folders, atomic writes) unless the YAML configures others."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        from lit_swift.callbacks.hf_checkpoint import HFCheckpoint

        if config.get("logger") in (None, True):  # CSV by default, even when tensorboard is installed
            from lightning.pytorch.loggers import CSVLogger

            config["logger"] = CSVLogger(save_dir=config.get("default_root_dir") or os.getcwd())
        listed = list(config.get("callbacks") or []) + list(callbacks)
        if config.get("enable_checkpointing") is not False and not any(
            isinstance(c, ModelCheckpoint) for c in listed
        ):
            callbacks = [*callbacks, HFCheckpoint()]
        return super()._instantiate_trainer(config, callbacks)


def trainer_defaults() -> dict:
    return {
        # the DataModule plans each rank's share itself (exact loss normalisation and resume)
        "use_distributed_sampler": False,
    }


def run_trainer(args: list[str] | None, run: bool = True) -> LitSwiftCLI:
    import lightning as L

    from lit_swift.objectives.base import CausalLMObjective

    return LitSwiftCLI(
        CausalLMObjective,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=trainer_defaults(),
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def run_data(args: list[str]) -> None:
    from jsonargparse import CLI

    from lit_swift.data.preview import preview

    def preview_command(**kwargs):
        print(preview(**kwargs))

    preview_command.__signature__ = __import__("inspect").signature(preview)
    preview_command.__doc__ = preview.__doc__
    CLI({"preview": preview_command}, args=args, prog="lit-swift data")


def run_export(args: list[str]) -> None:
    from jsonargparse import CLI

    from lit_swift.export.merge import export

    CLI(export, args=args, prog="lit-swift export")


def run_infer(args: list[str]) -> None:
    from jsonargparse import CLI

    from lit_swift.export.infer import infer

    CLI(infer, args=args, prog="lit-swift infer")


def run_deploy(args: list[str]) -> None:
    from jsonargparse import CLI

    from lit_swift.serve.deploy import deploy

    CLI(deploy, args=args, prog="lit-swift deploy")


def run_rollout(args: list[str]) -> None:
    from jsonargparse import CLI

    from lit_swift.rollout.server import rollout

    CLI(rollout, args=args, prog="lit-swift rollout")


def run_eval(args: list[str]) -> None:
    from jsonargparse import CLI

    from lit_swift.eval.harness import evaluate

    CLI(evaluate, args=args, prog="lit-swift eval")


def usage() -> str:
    lines = ["usage: lit-swift COMMAND [options]", "", "commands:"]
    for name in TRAINER_COMMANDS:
        lines.append(f"  {name:<9} {name} with a LightningCLI YAML: lit-swift {name} --config x.yaml")
    for name, text in TOOL_COMMANDS.items():
        lines.append(f"  {name:<9} {text}")
    lines.append("\nRun `lit-swift COMMAND --help` for a command's options.")
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    from_command_line = args is None
    args = list(sys.argv[1:] if args is None else args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    runtime.fix_mmap_threshold()
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return
    command, rest = args[0], args[1:]
    if command in TRAINER_COMMANDS:
        run_trainer(None if from_command_line else args)  # None: LightningCLI reads sys.argv itself
    elif command == "data":
        run_data(rest)
    elif command == "export":
        run_export(rest)
    elif command == "infer":
        run_infer(rest)
    elif command == "deploy":
        run_deploy(rest)
    elif command == "rollout":
        run_rollout(rest)
    elif command == "eval":
        run_eval(rest)
    else:
        print(f"lit-swift: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
