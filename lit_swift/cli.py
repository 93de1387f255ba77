"""`lit-swift` entry point: fit/validate/test/predict through LightningCLI, tools through jsonargparse.

`main(args=None)` so tests call it in-process. The objective and the DataModule are chosen by
`class_path`; the model spec is written once (`model.init_args.model`) and linked to the
DataModule's tokenizer. Every tool command takes `--flag value` options only: its function's
signature is its schema (`TOOL_TARGETS`). A user error (bad row, missing file, unknown name, bad
option) prints one `error: ...` line and exits 2; `--debug` or `LIT_SWIFT_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI

from lit_swift import runtime

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")
TOOL_COMMANDS = {
    "data": "Inspect a dataset: `lit-swift data preview --model M --dataset FILE`",
    "export": "Checkpoint -> HF folder: `lit-swift export --checkpoint RUN/checkpoints/last.ckpt --merge_lora true`",
    "infer": "Generate: `lit-swift infer --adapter RUN/checkpoints/last.hf --prompt 'Hi'` (or --interactive)",
    "deploy": "OpenAI-compatible server: `lit-swift deploy --model M [--adapter A] --port 8000`",
    "rollout": "Generation server for GRPO server mode (SGLang API): `lit-swift rollout --model M --port 30000`",
    "eval": "lm-eval tasks: `lit-swift eval --model M [--adapter A] --tasks litswift --limit 20` (or --server URL)",
}
TOOL_TARGETS: dict[str, str | dict[str, str]] = {
    "data": {"preview": "lit_swift.data.preview:preview_command"},
    "export": "lit_swift.export.merge:export",
    "infer": "lit_swift.export.infer:infer",
    "deploy": "lit_swift.serve.deploy:deploy",
    "rollout": "lit_swift.rollout.server:rollout",
    "eval": "lit_swift.eval.harness:evaluate",
}
"""Each tool command's function (`module:function`), or its sub-commands' functions; a new command adds a
row here and in `TOOL_COMMANDS`. The function's type hints and `Args:` docstring are its `--help`."""
DEBUG_ENV = "LIT_SWIFT_DEBUG"
"""Set to 1 to get tracebacks instead of one-line user errors (same as `--debug`)."""
RUN_FILES = {"config.yaml", "hparams.yaml", "metrics.csv"}
"""What a run folder holds before its first step; a run that fails then leaves no folder behind."""


class LitSwiftCLI(LightningCLI):
    """LightningCLI with the model spec linked from the objective to the DataModule.

    Args:
        parse_only: parse and validate the arguments, then stop (no model, data or trainer is built).
    """

    def __init__(self, *args, parse_only: bool = False, **kwargs) -> None:
        self.parse_only = parse_only
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.model", "data.init_args.tokenizer")

    def instantiate_classes(self) -> None:
        if not self.parse_only:
            super().instantiate_classes()

    def _run_subcommand(self, subcommand: str) -> None:
        if self.parse_only:
            return
        made_root = not Path(self.trainer.default_root_dir).exists()
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            remove_unstarted_run(self.trainer, made_root)
            raise

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


def remove_unstarted_run(trainer, made_root: bool) -> None:
    """Delete the run folder of a run that failed before its first optimizer step, and its empty parents.

    Only a folder holding nothing but `RUN_FILES` goes (Lightning creates it, and the resolved config,
    before the data is read), so a failed start leaves no `lightning_logs/version_N` to confuse the next.
    Parents are removed up to `default_root_dir`, which goes too when this run created it (`made_root`).
    """
    if trainer is None or trainer.global_step > 0 or trainer.global_rank != 0 or trainer.log_dir is None:
        return
    run, root = Path(trainer.log_dir).resolve(), Path(trainer.default_root_dir).resolve()
    if not run.is_dir() or not run.is_relative_to(root):
        return
    if any(p.is_dir() or p.name not in RUN_FILES for p in run.iterdir()):
        return
    for path in run.iterdir():
        path.unlink()
    for folder in [run, *run.parents]:
        if (folder == root and not made_root) or not folder.is_relative_to(root) or any(folder.iterdir()):
            break
        folder.rmdir()


def trainer_defaults() -> dict:
    return {
        # the DataModule plans each rank's share itself (exact loss normalisation and resume)
        "use_distributed_sampler": False,
    }


def run_trainer(args: list[str] | None, run: bool = True, parse_only: bool = False) -> LitSwiftCLI:
    import lightning as L

    from lit_swift.objectives.base import CausalLMObjective
    from lit_swift.precision import Trainer

    return LitSwiftCLI(
        CausalLMObjective,
        L.LightningDataModule,
        trainer_class=Trainer,  # Lightning's, plus `precision: auto`
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=trainer_defaults(),
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False},
        args=args,
        run=run,
        auto_configure_optimizers=False,
        parse_only=parse_only,
    )


def _function(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def run_tool(command: str, args: list[str], parse_only: bool = False) -> Any:
    """Run (or only parse) a tool command: `--flag value` options from its function's signature."""
    from jsonargparse import CLI, capture_parser

    target = TOOL_TARGETS[command]
    component = _function(target) if isinstance(target, str) else {k: _function(v) for k, v in target.items()}
    kwargs = {"as_positional": False, "exit_on_error": False, "prog": f"lit-swift {command}"}
    if parse_only:
        parser = capture_parser(lambda: CLI(component, args=args, **kwargs))
        return parser.parse_args(args)
    return CLI(component, args=args, **kwargs)


def usage() -> str:
    lines = ["usage: lit-swift COMMAND [options] [--debug]", "", "commands:"]
    for name in TRAINER_COMMANDS:
        lines.append(f"  {name:<9} {name} with a LightningCLI YAML: lit-swift {name} --config x.yaml")
    for name, text in TOOL_COMMANDS.items():
        lines.append(f"  {name:<9} {text}")
    lines.append("\nRun `lit-swift COMMAND --help` for a command's options.")
    lines.append(f"Errors print one line; `--debug` (or {DEBUG_ENV}=1) shows the traceback.")
    return "\n".join(lines)


def main(args: list[str] | None = None, parse_only: bool = False) -> Any:
    """Run a `lit-swift` command line (default `sys.argv[1:]`).

    Args:
        args: the command line after `lit-swift`.
        parse_only: parse and validate the options of any command without running it (tests check every
            documented command this way); returns the LightningCLI or the tool's parsed namespace.
    """
    from_command_line = args is None
    args = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    if from_command_line:
        sys.argv[1:] = args  # LightningCLI reads sys.argv itself (and records it as the command line)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    runtime.fix_mmap_threshold()
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return None
    try:
        return _dispatch(args, from_command_line, parse_only)
    except user_errors() as err:
        if debug:
            raise
        print(f"error: {one_line(err, args)}", file=sys.stderr)
        raise SystemExit(2) from None


def _dispatch(args: list[str], from_command_line: bool, parse_only: bool) -> Any:
    command, rest = args[0], args[1:]
    if command in TRAINER_COMMANDS:
        return run_trainer(None if from_command_line else args, parse_only=parse_only)
    if command in TOOL_TARGETS:
        return run_tool(command, rest, parse_only)
    print(f"lit-swift: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
    raise SystemExit(2)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the input is wrong (not lit-swift): shown as one line without traceback."""
    from jsonargparse import ArgumentError

    return (ValueError, FileNotFoundError, ArgumentError)


def one_line(err: BaseException, args: list[str]) -> str:
    """The error as one line; option errors are cut to the innermost reason and located in the YAML."""
    from jsonargparse import ArgumentError

    if not isinstance(err, ArgumentError):
        return str(err)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = _plain(_innermost(lines))
    key = re.search(r"""(?:[Kk]ey|option) ["']([\w.]+)["']""", " ".join(lines))
    where = _locate(key.group(1) if key else "", reason, args)
    fix = f"see `lit-swift {args[0]} --help`" + (" or --print_config" if args[0] in TRAINER_COMMANDS else "")
    return f"{where}{reason} ({fix})"


def _innermost(lines: list[str]) -> str:
    """The most specific part of a nested jsonargparse message (the problem inside a class_path)."""
    for i, line in enumerate(lines):
        if line.startswith("- Problem with given class_path"):
            cls = re.search(r"class_path '([\w.]+)'", line)
            inner = []
            for nested in lines[i + 1 :]:
                if nested.startswith("- "):
                    break
                inner.append(nested)
            return f"{cls.group(1).rsplit('.', 1)[-1] + ': ' if cls else ''}{' '.join(inner)}"
    text = " ".join(
        line for line in lines if not line.startswith(("Given value", "- Expected a <class 'NoneType'>"))
    )
    if text.startswith("unrecognized arguments:") and not text.split()[2:3][0].startswith("-"):
        text += "; options are given as `--name value`"
    return text


def _plain(reason: str) -> str:
    """jsonargparse's wording made readable: `max_length: expected int, got 'abc'`."""
    reason = re.sub(r"""Parser key ["'](\w+)["']:\s*""", r"\1: ", reason)
    reason = re.sub(r"Expected a <class '([\w.]+)'>\. Got value: (.*)", r"expected \1, got '\2'", reason)
    return reason


def _locate(key: str, reason: str, args: list[str]) -> str:
    """Where the offending option was set: `--option` on the command line, or the YAML's `file:line`."""
    option = re.search(r"Option '(\w+)'", reason) or re.search(r"(\w+): expected", reason)
    name = option.group(1) if option else key.rsplit(".", 1)[-1]
    if not name:
        return ""
    for arg in reversed(args):
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and (flag[2:] == name or flag.endswith("." + name)):
            return f"{flag} (command line): "
    configs = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")]
    for path in reversed(configs):  # a later --config wins
        try:
            text = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line_no, line in enumerate(text, 1):
            if re.match(rf"\s*(?:{re.escape(name)}\s*:|.*[{{,]\s*{re.escape(name)}\s*:)", line):
                return f"{path}:{line_no}: "
    return ""
