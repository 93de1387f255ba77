"""Cache of encoded rows across runs: what `plan.encode_all` made of one split, reused when nothing changed.

A split's file is keyed by sha256 of the DataModule's fingerprint (`fingerprint`: its class and encoding
settings, the tokenizer, library versions and the source of `lit_swift/data` and `lit_swift/types.py`),
the split name and the pickled rows. A file holds numbers and JSON only (`.npz`: every integer list in
one int64 array, the structure as JSON naming lit-swift dataclasses), read with `allow_pickle=False`, so
a file planted in a shared cache folder cannot run code. Written atomically; unreadable -> a miss.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import importlib
import importlib.metadata
import io
import json
import os
import pickle
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

from lit_swift import models

FORMAT_VERSION = 2
"""Bump when the layout of a cache file or of the key changes."""
FOLDER_ENV = "LIT_SWIFT_ENCODED_CACHE"
"""Environment variable that overrides the folder (default `$LIT_SWIFT_CACHE/encoded`)."""
PICKLE_PROTOCOL = 5
NOT_ENCODING = frozenset(
    {
        # loader-only settings: they shape batches and workers, never an encoded row
        "batch_size",
        "val_batch_size",
        "num_workers",
        "shuffle",
        "packing",
        "packing_buffer",
        "shuffle_buffer",
        # the cache switch itself, the tokenizer (fingerprinted on its own) and Lightning's back-reference
        "encode_cache",
        "tokenizer",
        "trainer",
    }
)
"""DataModule attributes left out of the fingerprint."""
VERSIONED = ("lit-swift", "transformers", "tokenizers", "jinja2")


def default_folder() -> Path:
    """`$LIT_SWIFT_ENCODED_CACHE`, else `encoded` under the lit-swift cache (`$LIT_SWIFT_CACHE`)."""
    override = os.environ.get(FOLDER_ENV)
    return Path(override) if override else models.cache_dir() / "encoded"


@dataclass(frozen=True)
class EncodeCache:
    """A folder of encoded splits and the fingerprint of the encoder that wrote them.

    Args:
        folder: where the cache files live (created on the first write).
        fingerprint: hex digest of everything besides the rows that can change the encoding.
    """

    folder: Path
    fingerprint: str

    @classmethod
    def create(cls, owner: type, settings: dict[str, Any], tokenizer: Any) -> EncodeCache | None:
        """The cache in `default_folder()` for a DataModule of class `owner` with attributes `settings`.

        None when the tokenizer is not a fast (Rust `tokenizers`) one: only those can be fingerprinted.
        """
        digest = fingerprint(owner, settings, tokenizer)
        return None if digest is None else cls(default_folder(), digest)

    def path(self, rows: list, split: str) -> Path:
        """The file of `split` encoded from `rows`."""
        hasher = hashlib.sha256()
        for part in (self.fingerprint, split):
            hasher.update(part.encode() + b"\0")
        pickle.Pickler(_HashWriter(hasher), protocol=PICKLE_PROTOCOL).dump(rows)
        return self.folder / f"{split}-{hasher.hexdigest()}.npz"

    def load(self, path: Path) -> tuple[list, Counter[str]] | None:
        """(items, notes) stored in `path`; None when absent, or (with a warning) when unreadable."""
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                ints, tree = stored["ints"], json.loads(stored["tree"].tobytes().decode())
            if tree["format"] != FORMAT_VERSION:
                raise ValueError(f"format {tree['format']}, expected {FORMAT_VERSION}")
            items, notes = from_tree(tree["items"], ints), Counter(tree["notes"])
            if not isinstance(items, list):
                raise TypeError(f"items is a {type(items).__name__}, not a list")
        except Exception as e:  # truncated, corrupt or written by other code: any failure is a miss
            rank_zero_warn(
                f"encoded-row cache file {path} cannot be read ({type(e).__name__}: {e}); "
                "encoding the rows again and rewriting it"
            )
            return None
        return items, notes

    def store(self, path: Path, items: list, notes: Counter[str]) -> None:
        """Write (items, notes) to `path` atomically: a temporary file in the same folder, then a rename.

        A folder that cannot be written, or an item `to_tree` cannot store, only costs the reuse: the
        failure is a warning, not an error.
        """
        tmp = None
        try:
            ints: list[int] = []
            tree = {"format": FORMAT_VERSION, "items": to_tree(items, ints), "notes": dict(notes)}
            buffer = io.BytesIO()
            np.savez(
                buffer,
                ints=np.asarray(ints, dtype=np.int64),
                tree=np.frombuffer(json.dumps(tree).encode(), np.uint8),
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, TypeError, OverflowError) as e:
            rank_zero_warn(f"could not write the encoded-row cache file {path}: {e}")
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)


def to_tree(value: Any, ints: list[int]) -> Any:
    """`value` as JSON data, its integer lists moved to the end of `ints` (as `{"@ints": [start, stop]}`).

    Plain data, tuples, str-keyed dicts and lit-swift dataclasses (by name and fields) only: anything
    else is a TypeError, so nothing in a file needs code to rebuild beyond those dataclasses.
    """
    if value is None or isinstance(value, (bool, float, str)) or type(value) is int:
        return value
    if isinstance(value, list):
        if value and all(type(v) is int for v in value):
            ints.extend(value)
            return {"@ints": [len(ints) - len(value), len(ints)]}
        return [to_tree(v, ints) for v in value]
    if type(value) is tuple:
        return {"@tuple": [to_tree(v, ints) for v in value]}
    if type(value) is dict and all(isinstance(k, str) for k in value):
        return {"@dict": [[k, to_tree(v, ints)] for k, v in value.items()]}
    cls = type(value)
    if dataclasses.is_dataclass(value) and cls.__module__.startswith("lit_swift."):
        fields = {f.name: to_tree(getattr(value, f.name), ints) for f in dataclasses.fields(value)}
        return {"@class": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    raise TypeError(f"cannot store a {cls.__module__}.{cls.__qualname__} in the encoded-row cache")


def from_tree(tree: Any, ints: np.ndarray) -> Any:
    """The value `to_tree` stored; a class outside lit-swift's dataclasses is refused (ValueError)."""
    if isinstance(tree, list):
        return [from_tree(v, ints) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "@ints" in tree:
        start, stop = tree["@ints"]
        return ints[start:stop].tolist()
    if "@tuple" in tree:
        return tuple(from_tree(v, ints) for v in tree["@tuple"])
    if "@dict" in tree:
        return {k: from_tree(v, ints) for k, v in tree["@dict"]}
    module, _, name = tree["@class"].partition(":")
    cls = getattr(importlib.import_module(module), name, None) if module.startswith("lit_swift.") else None
    if cls is None or not dataclasses.is_dataclass(cls):
        raise ValueError(f"{tree['@class']} is not a lit-swift dataclass")
    return cls(**{k: from_tree(v, ints) for k, v in tree["fields"].items()})


class _HashWriter:
    """A write-only file object feeding a hash, so the rows are hashed without one big bytes object."""

    def __init__(self, hasher: Any):
        self.hasher = hasher

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        return len(data)


def fingerprint(owner: type, settings: dict[str, Any], tokenizer: Any) -> str | None:
    """Hex digest of what besides the rows decides an encoding; None for a tokenizer that is not fast.

    Covers the cache format, `owner`'s qualified name, the plain-data public `settings` that can change
    an encoding (all but `NOT_ENCODING`), the tokenizer (`tokenizer_facts`), the Python and library
    versions, and the source files of the encoding path (`source_digest`). It errs towards misses.
    """
    if not getattr(tokenizer, "is_fast", False) or not hasattr(tokenizer, "backend_tokenizer"):
        return None
    parts = {
        "format": FORMAT_VERSION,
        "class": f"{owner.__module__}.{owner.__qualname__}",
        "settings": encoding_settings(settings),
        "tokenizer": tokenizer_facts(tokenizer),
        "versions": library_versions(),
        "source": source_digest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()


def encoding_settings(attributes: dict[str, Any]) -> dict[str, Any]:
    """The attributes that may change an encoding: public, plain data, and not in `NOT_ENCODING`."""
    return {
        name: value
        for name, value in attributes.items()
        if not name.startswith("_") and name not in NOT_ENCODING and is_plain(value)
    }


def is_plain(value: Any) -> bool:
    """str/int/float/bool/None, or lists, tuples and str-keyed dicts of those (recursively)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False


def tokenizer_facts(tokenizer: Any) -> dict[str, Any]:
    """What of a fast tokenizer can change token ids or the rendered chat text."""
    chat_template = tokenizer.chat_template
    facts = {
        "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
        "backend": tokenizer.backend_tokenizer.to_str(),
        "chat_template": chat_template,
        "special_tokens_map": tokenizer.special_tokens_map,
        "special_ids": tokenizer.all_special_ids,
        "init_kwargs": encoding_settings(tokenizer.init_kwargs),
        "repr": repr(tokenizer),
    }
    if "strftime_now" in json.dumps(chat_template, default=repr):
        # the template writes today's date into the text (e.g. Llama 3.1): a cached row is a day's only
        facts["date"] = datetime.date.today().isoformat()
    return facts


def library_versions() -> dict[str, str | None]:
    """Python's version and the installed versions of the packages in `VERSIONED` (None if absent)."""
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@functools.cache
def source_digest() -> str:
    """sha256 of every `lit_swift/data/*.py` file and `lit_swift/types.py` (names and bytes), once a process.

    Editing the encoding code thus invalidates every cached encoding, without a version to bump.
    """
    package = Path(__file__).resolve().parent.parent
    files = sorted((package / "data").glob("*.py")) + [package / "types.py"]
    hasher = hashlib.sha256()
    for file in files:
        hasher.update(file.relative_to(package).as_posix().encode() + b"\0")
        hasher.update(file.read_bytes() + b"\0")
    return hasher.hexdigest()
