"""Encoded-row cache: a hit equals a fresh encoding, and whatever can change an encoding is a miss."""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lit_swift.data import encode_cache
from lit_swift.data.datamodule import SFTDataModule
from lit_swift.data.encode_cache import EncodeCache, fingerprint
from lit_swift.data.plan import Encoded, encode_all
from lit_swift.data.preference import KTODataModule, PreferenceDataModule
from lit_swift.data.prompts import PromptDataModule

SMOLLM2 = "smollm2-135m-instruct"
NUM_ROWS = 8


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def chat_rows() -> list[dict]:
    """Row 5 has a long answer: `max_length` 48 cuts it (a truncation note)."""
    rows = [{"query": f"What is {i} + {i}?", "response": f"It is {2 * i}."} for i in range(NUM_ROWS)]
    rows[5]["response"] = "It is ten, " + "and ten it stays, " * 20
    return rows


def pair_rows() -> list[dict]:
    """Row 5 has a prompt so long that `max_length` 40 keeps no answer token (dropped, a note)."""
    rows = [
        {"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."}
        for i in range(NUM_ROWS)
    ]
    rows[5]["prompt"] = "Think hard. " * 30 + "What is 5 + 5?"
    return rows


def kto_rows() -> list[dict]:
    rows = [{"prompt": f"Say {i}.", "completion": f"{i}", "label": bool(i % 2)} for i in range(NUM_ROWS)]
    rows[5]["prompt"] = "Think hard. " * 30 + "Say 5."
    return rows


def prompt_rows() -> list[dict]:
    """Row 5 is longer than `max_prompt_length` 30 (cut at the start, a note)."""
    rows = [{"prompt": f"What is {i} + {i}?", "solution": str(2 * i)} for i in range(NUM_ROWS)]
    rows[5]["prompt"] = "Think hard. " * 30 + "What is 5 + 5?"
    return rows


# kind -> (class, rows, arguments, attributes holding the encoded train and validation items, a note)
KINDS = {
    "sft": (SFTDataModule, chat_rows, {"max_length": 48}, ("train_samples", "val_samples"), "truncation"),
    "preference": (PreferenceDataModule, pair_rows, {"max_length": 40}, ("train_items", "val_items"), "dropped"),
    "kto": (KTODataModule, kto_rows, {"max_length": 40}, ("train_items", "val_items"), "dropped"),
    "prompt": (
        PromptDataModule, prompt_rows, {"max_prompt_length": 30}, ("train_prompts", "val_prompts"), "longer"
    ),
}  # fmt: skip


def setup(cls: type, path: str, **kwargs):
    dm = cls(SMOLLM2, path, **{"batch_size": 2, "shuffle": False, **kwargs})
    dm.setup("fit")
    return dm


def sft(path: str, **kwargs) -> SFTDataModule:
    return setup(SFTDataModule, path, **{"max_length": 48, **kwargs})


def cache_files() -> list[Path]:
    return sorted(encode_cache.default_folder().glob("*"))


def count_encodes(monkeypatch, cls: type) -> list[str]:
    """Patch `cls._encode_one` to record the `where` of every row it encodes."""
    calls, encode_one = [], cls._encode_one

    def counting(self, row, where, *rest):
        calls.append(str(where))
        return encode_one(self, row, where, *rest)

    monkeypatch.setattr(cls, "_encode_one", counting)
    return calls


def refuse(*args, **kwargs):
    raise AssertionError("must not be called")


def test_encode_all_reads_back_items_and_notes(tmp_path, caplog):
    rows = [(i, f"f.jsonl:{i + 1}") for i in range(4)]
    calls = []

    def double(x: int, where: str) -> Encoded:
        calls.append(where)
        return Encoded([2 * x], "odd row(s)" if x % 2 else None)

    cache = EncodeCache(tmp_path / "encoded", "fingerprint")
    with caplog.at_level("INFO"):
        assert encode_all(rows, double, "train", cache) == [0, 2, 4, 6]
    assert caplog.messages == ["train: 2 odd row(s)"] and len(calls) == 4
    (path,) = (tmp_path / "encoded").iterdir()
    assert path == cache.path(rows, "train") and path.name.startswith("train-")
    caplog.clear()
    with caplog.at_level("INFO"):
        assert encode_all(rows, double, "train", cache) == [0, 2, 4, 6]
    assert caplog.messages == [
        f"train: 4 rows encoded by an earlier run, read from {path}",
        "train: 2 odd row(s)",
    ]
    assert len(calls) == 4
    assert cache.path(rows, "validation") != path != cache.path(rows[:3], "train")
    assert EncodeCache(tmp_path, "other").path(rows, "train").name != path.name
    assert encode_all([], double, "train", cache) == [] and len(list((tmp_path / "encoded").iterdir())) == 1


@pytest.mark.parametrize("kind", list(KINDS))
def test_second_setup_reads_the_cache_and_logs_the_same(kind, tmp_path, monkeypatch, caplog):
    cls, rows, args, (train, val), note = KINDS[kind]
    path = write_jsonl(tmp_path / "data.jsonl", rows())
    args = {**args, "val_split": 0.25}
    fresh = setup(cls, path, encode_cache=False, **args)
    assert cache_files() == []
    caplog.clear()
    with caplog.at_level("INFO"):
        first = setup(cls, path, **args)
    encoded_log = list(caplog.messages)
    assert any(note in m for m in encoded_log)
    assert [p.name.split("-")[0] for p in cache_files()] == ["train", "validation"]
    caplog.clear()
    monkeypatch.setattr(cls, "_encode_one", refuse)
    with caplog.at_level("INFO"):
        second = setup(cls, path, **args)
    for name in (train, val):
        assert getattr(second, name) == getattr(first, name) == getattr(fresh, name)
    read = [m for m in caplog.messages if "encoded by an earlier run" in m]
    assert len(read) == 2 and all(str(encode_cache.default_folder()) in m for m in read)
    assert [m for m in caplog.messages if m not in read] == encoded_log


@pytest.mark.parametrize(
    "change",
    [{"max_length": 40}, {"system": "Be brief."}, {"template": "chatml"}, {"loss_on": "all"}, {"seed": 1}],
)
def test_a_changed_encoding_setting_is_a_miss(change, tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "qa.jsonl", chat_rows())
    first = sft(path)
    calls = count_encodes(monkeypatch, SFTDataModule)
    second = sft(path, **change)
    assert len(calls) == NUM_ROWS and len(cache_files()) == 2
    if "seed" in change:  # a setting that cannot change these rows still misses: the key errs that way
        assert second.train_samples == first.train_samples


def test_loader_only_settings_hit(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "qa.jsonl", chat_rows())
    first = sft(path)
    monkeypatch.setattr(SFTDataModule, "_encode_one", refuse)
    loader_only = {"batch_size": 3, "val_batch_size": 5, "shuffle": True, "packing": True, "num_workers": 1}
    second = sft(path, **loader_only, shuffle_buffer=7, packing_buffer=9)
    assert second.train_samples == first.train_samples and len(cache_files()) == 1


def test_an_edited_row_is_a_miss(tmp_path, monkeypatch):
    rows = chat_rows()
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    sft(path)
    rows[3]["response"] = "It is six, surely."
    write_jsonl(tmp_path / "qa.jsonl", rows)
    calls = count_encodes(monkeypatch, SFTDataModule)
    dm = sft(path)
    assert len(calls) == NUM_ROWS and len(cache_files()) == 2
    assert dm.train_samples == sft(path, encode_cache=False).train_samples


def test_a_changed_tokenizer_chat_template_is_a_miss(tmp_path, monkeypatch, smollm2_dir):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(Path(smollm2_dir) / name, folder / name)
    path = write_jsonl(tmp_path / "qa.jsonl", chat_rows())
    first = SFTDataModule(str(folder), path, max_length=48)
    first.setup("fit")
    template = folder / "chat_template.jinja"
    template.write_text(template.read_text().replace("named SmolLM", "named Smol"))
    calls = count_encodes(monkeypatch, SFTDataModule)
    second = SFTDataModule(str(folder), path, max_length=48)
    second.setup("fit")
    assert len(calls) == NUM_ROWS and len(cache_files()) == 2
    assert second.tokenizer is not first.tokenizer
    assert second.train_samples != first.train_samples  # the default system prompt is shorter


def test_fingerprint_covers_the_tokenizer_and_settings(smollm2_tokenizer):
    tok = smollm2_tokenizer
    settings = vars(SFTDataModule(SMOLLM2, "qa.jsonl"))
    base = fingerprint(SFTDataModule, settings, tok)
    assert fingerprint(SFTDataModule, dict(settings), tok) == base
    ignored = {"batch_size": 64, "packing": True, "_ready": True, "trainer": object(), "encoder": object()}
    assert fingerprint(SFTDataModule, {**settings, **ignored}, tok) == base
    assert fingerprint(SFTDataModule, {**settings, "max_length": 7}, tok) != base
    assert fingerprint(SFTDataModule, {**settings, "columns": {"q": "query"}}, tok) != base
    assert fingerprint(PreferenceDataModule, settings, tok) != base
    other_template = copy.deepcopy(tok)
    other_template.chat_template = tok.chat_template.replace("named SmolLM", "named Smol")
    assert fingerprint(SFTDataModule, settings, other_template) != base
    more_special = copy.deepcopy(tok)
    more_special.add_special_tokens({"additional_special_tokens": ["<tool_call>"]})
    assert fingerprint(SFTDataModule, settings, more_special) != base
    assert fingerprint(SFTDataModule, settings, SimpleNamespace(is_fast=False)) is None


def test_dated_chat_template_keys_on_the_date(smollm2_tokenizer, monkeypatch):
    dated = copy.deepcopy(smollm2_tokenizer)
    dated.chat_template = "{{ strftime_now('%d %b %Y') }}" + dated.chat_template
    assert "date" in encode_cache.tokenizer_facts(dated)
    assert "date" not in encode_cache.tokenizer_facts(smollm2_tokenizer)


@pytest.mark.parametrize(
    "damage",
    [
        lambda good: good[: len(good) // 2],
        lambda good: b"not an npz",
        lambda good: npz({"format": encode_cache.FORMAT_VERSION, "items": "x", "notes": {}}),
        lambda good: npz({"format": 0, "items": [], "notes": {}}),
        lambda good: pickle.dumps({"format": encode_cache.FORMAT_VERSION, "items": [], "notes": {}}),
    ],
    ids=["truncated", "garbage", "wrong_items", "old_format", "pickle"],
)
def test_an_unreadable_file_warns_and_is_rewritten(damage, tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "qa.jsonl", chat_rows())
    first = sft(path)
    (file,) = cache_files()
    file.write_bytes(damage(file.read_bytes()))
    calls = count_encodes(monkeypatch, SFTDataModule)
    with pytest.warns(UserWarning, match=f"cache file .*{file.name} cannot be read"):
        second = sft(path)
    assert len(calls) == NUM_ROWS and second.train_samples == first.train_samples
    assert cache_files() == [file]  # rewritten in place, no temporary file left
    items, notes = encode_cache.EncodeCache(file.parent, "").load(file)
    assert items == first.train_samples and notes.total() == 1


def npz(tree: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, ints=np.zeros(0, np.int64), tree=np.frombuffer(json.dumps(tree).encode(), np.uint8))
    return buffer.getvalue()


class Planted:
    """A class whose unpickling runs code: what a planted pickle in a shared cache folder would do."""

    def __reduce__(self):
        return (os.system, ("touch planted-pickle-ran",))


def test_a_planted_file_cannot_run_code(tmp_path, monkeypatch):
    """main before: the cache unpickled whatever file sat under the expected name (code execution)."""
    monkeypatch.chdir(tmp_path)
    path = write_jsonl(tmp_path / "qa.jsonl", chat_rows())
    sft(path)
    (file,) = cache_files()
    file.write_bytes(pickle.dumps({"format": encode_cache.FORMAT_VERSION, "items": [Planted()], "notes": {}}))
    with pytest.warns(UserWarning, match="cannot be read"):
        sft(path)
    assert not (tmp_path / "planted-pickle-ran").exists()
    os_class = npz(
        {"format": encode_cache.FORMAT_VERSION, "items": [{"@class": "os:system", "fields": {}}], "notes": {}}
    )
    file.write_bytes(os_class)
    with pytest.warns(UserWarning, match="os:system is not a lit-swift dataclass"):
        sft(path)


def test_every_item_kind_round_trips(tmp_path):
    from lit_swift.data.preference import KTOItem, PairItem
    from lit_swift.types import EmbeddingRow, EncodedSample

    sample = EncodedSample([1, 2, 3], [-100, 2, 3])
    items = [
        sample,
        PairItem(sample, EncodedSample([1, 4], [-100, 4]), 0.5),
        KTOItem(sample, 1, True),
        ([5, 6, 7], {"answer": "42", "scores": [1, 2], "nested": {"x": None}}),
        (EmbeddingRow("q", "p", ["n"]), ["n"]),
        [],
    ]
    cache = encode_cache.EncodeCache(tmp_path, "")
    cache.store(tmp_path / "x.npz", items, Counter({"note": 2}))
    assert cache.load(tmp_path / "x.npz") == (items, Counter({"note": 2}))


def test_a_bad_row_raises_as_without_cache_and_writes_nothing(tmp_path):
    rows = chat_rows()
    rows[2] = {"query": "Think hard. " * 30, "response": "No."}  # right truncation cuts the whole answer
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    for use_cache in (False, True):
        with pytest.raises(ValueError, match=r"qa.jsonl:3: no token carries a label"):
            sft(path, encode_cache=use_cache)
    assert cache_files() == []


def test_encode_cache_false_never_reads_or_writes(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "qa.jsonl", chat_rows())
    first = sft(path)
    written = {p: p.stat().st_mtime_ns for p in cache_files()}
    for method in ("create", "path", "load", "store"):
        monkeypatch.setattr(EncodeCache, method, refuse)
    calls = count_encodes(monkeypatch, SFTDataModule)
    second = sft(path, encode_cache=False)
    assert len(calls) == NUM_ROWS and second.train_samples == first.train_samples
    assert {p: p.stat().st_mtime_ns for p in cache_files()} == written


def test_streaming_never_uses_the_cache(tmp_path, monkeypatch):
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows())
    val = write_jsonl(tmp_path / "val.jsonl", chat_rows()[:2])
    for method in ("create", "path", "load", "store"):
        monkeypatch.setattr(EncodeCache, method, refuse)
    dm = sft(train, val_dataset=val, streaming=True)
    assert len(dm.val_samples) == 2 and next(iter(dm.train_dataloader()))["input_ids"].shape[0] == 2
    assert cache_files() == []
