"""Checks a `lit-swift fit|validate|test|predict` command line can pass before torch and Lightning load.

Importing torch, transformers and Lightning takes 6 s or more, so a missing config file, a mistyped
data path, a malformed JSON line or a model folder that does not exist would otherwise surface only
after that. `check(args)` reads the YAML configs named by `--config` and the `--model.*`/`--data.*`
overrides on the command line with nothing but the standard library, PyYAML and `lit_swift.data.sources`
(the same readers the DataModules use), and raises one `ValueError` listing every problem. It only
refuses what the real run would refuse; everything else (types, unknown keys, hub ids, aliases) is left
to the LightningCLI parser and the run itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lit_swift.data import sources

MAX_LISTED = 10
CHECKED_BYTES = 256 * 2**20
"""Local data files up to this size are read record by record (JSON syntax); larger ones are only found."""
SKIP_FLAGS = ("-h", "--help", "--print_config", "--print-config")
DATA_KEYS = ("dataset", "val_dataset")


def check(args: list[str]) -> None:
    """Raise `ValueError` naming every config, data or model path problem of a trainer command line.

    Args:
        args: the arguments after the command (`fit`, ...), as LightningCLI receives them.
    """
    if any(a in SKIP_FLAGS or a.startswith(tuple(f + "=" for f in SKIP_FLAGS)) for a in args):
        return
    problems: list[str] = []
    config: dict[str, Any] = {}
    for path in _config_files(args):
        merge(config, _read_config(path, problems))
    for key, value in _overrides(args):
        section, _, field = key.partition(".")
        field = field.removeprefix("init_args.")
        if section in ("data", "model") and "." not in field:
            init = config.setdefault(section, {}).setdefault("init_args", {})
            init[field] = _yaml_value(value)
    model = _init_args(config, "model").get("model")
    if isinstance(model, str):
        problems += _model_problems(model)
    data = _init_args(config, "data")
    for key in DATA_KEYS:
        value = data.get(key)
        for path in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            if isinstance(path, str):
                problems += _data_problems(f"data.init_args.{key}", path)
    if problems:
        raise ValueError("\n".join(problems))


def _config_files(args: list[str]) -> list[str]:
    files = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _overrides(args: list[str]) -> list[tuple[str, str]]:
    """`(key, value)` of `--model.x V`, `--data.x=V` style arguments."""
    out = []
    for i, arg in enumerate(args):
        if not arg.startswith(("--model.", "--data.")):
            continue
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            out.append((key, value))
        elif i + 1 < len(args):
            out.append((arg[2:], args[i + 1]))
    return out


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _read_config(path: str, problems: list[str]) -> dict[str, Any]:
    if not Path(path).is_file():
        problems.append(f"--config {path}: no such file")
        return {}
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problems.append(f"{where}: invalid YAML: {getattr(err, 'problem', err)}")
        return {}
    if loaded is not None and not isinstance(loaded, dict):
        problems.append(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
        return {}
    return loaded or {}


def merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Merge `other` into `into` key by key (later configs win, as with repeated `--config`)."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def _init_args(config: dict[str, Any], section: str) -> dict[str, Any]:
    part = config.get(section)
    if not isinstance(part, dict):
        return {}
    init = part.get("init_args")
    return {k: v for k, v in part.items() if k not in ("class_path", "init_args")} | (
        init if isinstance(init, dict) else {}
    )


def _model_problems(spec: str) -> list[str]:
    """Only path-like specs are checked here (aliases and hub ids are resolved by the run)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            return [
                f"model.init_args.model {spec}: folder has no config.json (not a Hugging Face model folder)"
            ]
        return []
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        return [f"model.init_args.model {spec}: no such folder"]
    return []


def _data_problems(key: str, path: str) -> list[str]:
    try:
        spec = sources.DatasetSpec(path)
        if not Path(spec.path).is_file():
            sources.iter_records(spec)  # raises for a missing local-looking path; hub ids are left alone
            return []
        if Path(spec.path).stat().st_size > CHECKED_BYTES or spec.path.lower().endswith(".parquet"):
            return []
        bad = [
            r
            for r in sources.iter_records(sources.DatasetSpec(spec.path))
            if isinstance(r, sources.BadRecord)
        ]
    except (ValueError, OSError, UnicodeDecodeError) as err:
        return [f"{key}: {err}"]
    listed = [f"{key}: {b.where}: {b.reason}" for b in bad[:MAX_LISTED]]
    return listed + (
        [f"{key}: ... and {len(bad) - MAX_LISTED} more bad records"] if len(bad) > MAX_LISTED else []
    )


TRAINER_COMMANDS = ("fit", "validate", "test", "predict")


def main(args: list[str] | None = None) -> None:
    """The `lit-swift` console entry: `check` a trainer command line, then hand over to `lit_swift.cli.main`.

    A failed check exits with status 2 (as an argument error) before torch or Lightning is imported.
    """
    import sys

    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in TRAINER_COMMANDS:
        try:
            check(argv[1:])
        except ValueError as err:
            for problem in str(err).splitlines():  # the same `error: where: what` lines as lit_swift.cli
                print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(2) from None
    from lit_swift.cli import main as cli_main

    cli_main(args)
