"""Export a trained run: Lightning `.ckpt` or adapter folder -> merged HF model folder or PEFT adapter folder.

`load_trained` rebuilds the model from whatever a run left behind; `infer` shares it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from lit_swift import atomic, models, tuners
from lit_swift.multimodal import folders

CONFIG_NAME = "lit_swift_config.yaml"
"""The run's resolved LightningCLI config, copied next to every HF folder and export."""


@dataclass
class Trained:
    """A model rebuilt from a run, with its tokenizer and the run's resolved config (empty if unknown)."""

    model: torch.nn.Module
    tokenizer: Any
    config: dict[str, Any] = field(default_factory=dict)
    config_file: Path | None = None
    objective: Any = None
    """The run's objective (`.ckpt` sources): its `write_export_files(folder)`, if any, adds the files
    its model needs beside the weights (e.g. an embedding model's sentence-transformers modules)."""


def run_config_file(ckpt: Path) -> Path | None:
    """The resolved config of the run that wrote `ckpt`.

    `x.ckpt`'s sibling `x.hf/lit_swift_config.yaml` is preferred (written with the checkpoint), then the
    LightningCLI `config.yaml` of the run folder (`version_N/config.yaml`, the checkpoint's grandparent).
    The `.ckpt` itself holds no `hyper_parameters` because objectives do not call `save_hyperparameters`.
    """
    candidates = (ckpt.with_name(ckpt.stem + ".hf") / CONFIG_NAME, ckpt.parent.parent / "config.yaml")
    return next((c for c in candidates if c.exists()), None)


def read_config(path: Path | None) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}) if path is not None and path.exists() else {}


def build_objective(config: dict[str, Any], where: Path):
    """Instantiate the config's `model:` objective (without loading weights) through jsonargparse."""
    from jsonargparse import ArgumentParser

    from lit_swift.objectives.base import CausalLMObjective

    section = config.get("model")
    if not isinstance(section, dict) or "class_path" not in section:
        raise ValueError(f"config {where} has no `model: {{class_path: ..., init_args: ...}}` section")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(CausalLMObjective, "model")
    return parser.instantiate_classes(parser.parse_object({"model": section})).model


def load_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The `state_dict` of a Lightning checkpoint, read with `torch.load(weights_only=True)`.

    A lit-swift checkpoint holds only tensors and plain data (weights, optimizer and loop state, RNG
    states), which the weights-only unpickler accepts; any other Python object could run code while
    loading, so a file that needs one is refused, naming it.
    """
    import pickle

    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(ckpt)
        raise ValueError(
            f"checkpoint {ckpt} holds Python objects that could run code when loaded ({', '.join(unsafe)}); "
            "lit-swift checkpoints hold only tensors and plain data, so it was not written by a lit-swift "
            "run or was changed: export the run's `.hf` folder instead, or load it yourself if you trust it"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{ckpt} is not a Lightning checkpoint (no `state_dict` entry)")
    return checkpoint["state_dict"]


def load_checkpoint(
    ckpt: Path, run_config: str | None = None, model: str | None = None, config_overrides: dict | None = None
) -> Trained:
    """Rebuild the run's objective from its config and load the checkpoint's (trainable) weights."""
    config_file = Path(run_config) if run_config else run_config_file(ckpt)
    if config_file is None or not config_file.exists():
        raise ValueError(
            f"no resolved config found for {ckpt}: looked for {ckpt.stem}.hf/{CONFIG_NAME} and "
            f"{ckpt.parent.parent / 'config.yaml'}; pass the run's config with --run_config"
        )
    run = read_config(config_file)
    init_args = run.get("model", {}).setdefault("init_args", {})
    if model is not None:
        init_args["model"] = model
    if config_overrides is not None:
        init_args["config_overrides"] = config_overrides
    objective = build_objective(run, config_file)
    objective.configure_model()
    state = load_weights(ckpt)
    trainable = {n for n, p in objective.named_parameters() if p.requires_grad}
    unexpected = sorted(set(state) - {n for n, _ in objective.named_parameters()})
    missing = sorted(trainable - set(state))
    if unexpected or missing:
        raise ValueError(
            f"checkpoint {ckpt} does not fit the model built from {config_file}: "
            f"{len(unexpected)} unexpected weights {unexpected[:3]}, {len(missing)} missing {missing[:3]}"
        )
    objective.load_state_dict(state, strict=False)
    return Trained(objective.model.eval(), objective.tokenizer, run, config_file, objective)


def load_adapter(
    folder: Path, model: str | None = None, config_overrides: dict | None = None, dtype: models.Dtype = "auto"
) -> Trained:
    """Base model + PEFT adapter folder.

    The base spec is `model`, else the run config's `model.init_args.model`, else the adapter's
    `base_model_name_or_path`; `config_overrides` (e.g. `{num_hidden_layers: 2}`) likewise falls back
    to the run config's, so debug models with cut layers reload with the right shape.
    """

    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    run = read_config(folder / CONFIG_NAME)
    init_args = (run.get("model") or {}).get("init_args") or {}
    spec = model or init_args.get("model") or adapter_config.get("base_model_name_or_path")
    if not spec:
        raise ValueError(f"adapter {folder} names no base model; pass it with --model")
    overrides = config_overrides if config_overrides is not None else init_args.get("config_overrides")
    base = models.load_model(
        spec, dtype=dtype, config_overrides=overrides, model_class=folders.model_class(spec)
    )
    peft_model = tuners.load_adapter(base, folder).eval()
    has_tokenizer = (folder / "tokenizer_config.json").exists()
    tokenizer = models.load_tokenizer(str(folder) if has_tokenizer else spec)
    return Trained(peft_model, tokenizer, run, folder / CONFIG_NAME if run else None)


def load_trained(
    source: str,
    model: str | None = None,
    run_config: str | None = None,
    config_overrides: dict | None = None,
    dtype: models.Dtype = "auto",
) -> Trained:
    """Load a `.ckpt`, an adapter folder, or an HF model folder / spec (full fine-tune or export).

    Args:
        source: Lightning checkpoint file, PEFT adapter folder, HF model folder or model spec.
        model: base model spec overriding the one recorded in the run (e.g. a moved cache folder).
        run_config: the run's resolved config for a `.ckpt` (default: found next to it).
        config_overrides: model config fields overriding the run's, e.g. `{num_hidden_layers: 2}`.
        dtype: weight dtype to load adapters' base model in (`auto` keeps the checkpoint's).
    """
    path = Path(source).expanduser()
    if path.suffix == ".ckpt" or path.is_file():
        if not path.is_file():
            raise ValueError(f"checkpoint {path} does not exist")
        return load_checkpoint(path, run_config, model, config_overrides)
    if (path / "adapter_config.json").exists():
        return load_adapter(path, model, config_overrides, dtype)
    if path.is_dir() and not (path / "config.json").exists():
        raise ValueError(f"{path} is neither an adapter folder (adapter_config.json) nor an HF model folder")
    net = models.load_model(
        source, dtype=dtype, config_overrides=config_overrides, model_class=folders.model_class(source)
    ).eval()
    config_file = path / CONFIG_NAME if (path / CONFIG_NAME).exists() else None
    return Trained(net, models.load_tokenizer(source), read_config(config_file), config_file)


def export(
    checkpoint: str,
    output_dir: str | None = None,
    merge_lora: bool = False,
    dtype: models.Dtype = "auto",
    max_shard_size: str = "2GB",
    model: str | None = None,
    run_config: str | None = None,
    config_overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a trained checkpoint as a Hugging Face folder (merged model or PEFT adapter), with tokenizer.

    Args:
        checkpoint: Lightning `.ckpt` (model rebuilt from the run's resolved config), PEFT adapter folder
            (e.g. the `x.hf/` beside a checkpoint) or full-weights HF folder.
        output_dir: where to write; default `<checkpoint>-merged` or `<checkpoint>-adapter` beside it.
        merge_lora: fold LoRA into the base weights and write a plain transformers model folder;
            otherwise write the adapter in PEFT format (full fine-tunes always write full weights).
        dtype: weight dtype of the output; `auto` keeps the trained model's.
        max_shard_size: largest safetensors shard of a merged model, e.g. `2GB` or `500MB`.
        model: base model spec overriding the one recorded in the run (e.g. a moved cache folder).
        run_config: the run's resolved config for a `.ckpt` (default: `x.hf/lit_swift_config.yaml`, then
            the run folder's `config.yaml`).
        config_overrides: model config fields overriding the run's, e.g. `{num_hidden_layers: 2}`.
        overwrite: replace an existing output folder.
    """
    source = Path(checkpoint).expanduser()
    name = source.stem if source.suffix in (".ckpt", ".hf") else source.name
    out = (
        Path(output_dir)
        if output_dir
        else source.with_name(f"{name}-{'merged' if merge_lora else 'adapter'}")
    )
    trained = load_trained(checkpoint, model, run_config, config_overrides)
    net = tuners.merge(trained.model) if merge_lora else trained.model
    if dtype != "auto":
        net = net.to(getattr(torch, dtype))
    if out.exists() and not overwrite:
        raise ValueError(f"output folder {out} exists; pass --overwrite true to replace it")
    info = {"source": str(source.resolve()), "merged": merge_lora or not tuners.is_peft(net), "dtype": dtype}

    def write(tmp: Path) -> None:
        if tuners.is_peft(net):
            net.save_pretrained(str(tmp))
        else:
            net.save_pretrained(str(tmp), max_shard_size=max_shard_size)
        trained.tokenizer.save_pretrained(str(tmp))
        base_spec = ((trained.config.get("model") or {}).get("init_args") or {}).get("model")
        folders.save_processor(model or base_spec or (checkpoint if source.is_dir() else None), tmp)
        extras = getattr(trained.objective, "write_export_files", None)
        if extras is not None and info["merged"]:
            extras(tmp)
        (tmp / "lit_swift_export.json").write_text(json.dumps(info, indent=2))

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_folder(out, write, trained.config_file)
    print(f"exported {'merged model' if info['merged'] else 'adapter'} to {out}")
    return out
