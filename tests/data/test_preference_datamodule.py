"""PreferenceDataModule / KTODataModule: pair and KTO batches, mismatched KL pairs, length policy, resume."""

from __future__ import annotations

import json

import pytest

from lit_swift.data.preference import KTODataModule, KTOItem, PreferenceDataModule, collate_kto, kl_sample
from lit_swift.types import IGNORE_INDEX, EncodedSample

SMOLLM2 = "smollm2-135m-instruct"
X = IGNORE_INDEX


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _pairs(n):
    return [
        {
            "prompt": f"What is {i} + {i}?",
            "chosen": f"It is {2 * i}.",
            "rejected": f"It is {2 * i + 1}.",
            "margin": float(i),
        }  # fmt: skip
        for i in range(n)
    ]


def _segment(batch, k):
    return batch["input_ids"][batch["segment_ids"] == k].tolist()


def _answer_text(tok, batch, k):
    targets = batch["targets"][batch["segment_ids"] == k]
    return tok.decode(targets[targets != X])


def test_pair_batches_padded(tmp_path, smollm2_tokenizer):
    dm = PreferenceDataModule(SMOLLM2, _write(tmp_path / "p.jsonl", _pairs(3)), batch_size=2, shuffle=False)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert [b["row_ids"].tolist() for b in batches] == [[0, 1], [2]]
    assert [b["step_num_rows"] for b in batches] == [2, 1]
    first = batches[0]
    assert first["input_ids"].shape[0] == 4 and int(first["num_samples"]) == 4  # chosen 0, 1; rejected 0, 1
    assert _answer_text(smollm2_tokenizer, first, 1) == "It is 2.<|im_end|>"
    assert _answer_text(smollm2_tokenizer, first, 3) == "It is 3.<|im_end|>"
    assert first["margin"].tolist() == [0.0, 0.0]  # no margin_column


def test_pair_batches_packed_hold_the_same_sequences(tmp_path):
    path = _write(tmp_path / "p.jsonl", _pairs(4))
    padded = PreferenceDataModule(SMOLLM2, path, batch_size=4, shuffle=False)
    packed = PreferenceDataModule(SMOLLM2, path, batch_size=4, shuffle=False, packing=True, max_length=128)
    padded.setup(), packed.setup()
    a, b = next(iter(padded.train_dataloader())), next(iter(packed.train_dataloader()))
    assert b["input_ids"].shape[0] < 8 and "cu_seqlens" in b
    for k in range(8):
        assert _segment(a, k) == _segment(b, k)
        assert a["targets"][a["segment_ids"] == k].tolist() == b["targets"][b["segment_ids"] == k].tolist()


def test_margin_column_and_its_errors(tmp_path):
    dm = PreferenceDataModule(
        SMOLLM2, _write(tmp_path / "p.jsonl", _pairs(2)), margin_column="margin", shuffle=False
    )
    dm.setup()
    assert next(iter(dm.train_dataloader()))["margin"].tolist() == [0.0, 1.0]
    rows = _pairs(2)
    rows[1]["margin"] = "big"
    bad = PreferenceDataModule(SMOLLM2, _write(tmp_path / "bad.jsonl", rows), margin_column="margin")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: 'margin' is 'big'"):
        bad.setup()


def test_rows_longer_than_max_length_are_dropped(tmp_path):
    rows = _pairs(2)
    rows[0]["chosen"] = "word " * 200
    dm = PreferenceDataModule(SMOLLM2, _write(tmp_path / "p.jsonl", rows), max_length=64, truncation="drop")
    dm.setup()
    assert len(dm.train_items) == 1
    with pytest.raises(ValueError, match="no training rows"):
        PreferenceDataModule(SMOLLM2, _write(tmp_path / "q.jsonl", rows), max_length=8).setup()


def test_resume_skips_consumed_batches_and_reference_loader_covers_all_rows(tmp_path):
    path = _write(tmp_path / "p.jsonl", _pairs(5))
    dm = PreferenceDataModule(SMOLLM2, path, val_split=0.2, batch_size=2, shuffle=True, seed=1)
    dm.setup()
    full = [b["row_ids"].tolist() for b in dm.train_dataloader()]
    dm.load_state_dict({"epoch": 0, "batches_done": 1})
    assert [b["row_ids"].tolist() for b in dm.train_dataloader()] == full[1:]
    seen = sorted(i for loader in dm.reference_dataloaders() for b in loader for i in b["row_ids"].tolist())
    assert seen == list(range(dm.num_row_ids)) == list(range(5))


def test_kl_sample_and_collate_kto_literal():
    """Row 0 = prompt [1, 2] + answer [3, 4]; row 1 = prompt [5] + answer [6, 7, 8].

    KL 0 = prompt of row 1 + answer of row 0 = [5, 3, 4]; KL 1 = prompt of row 0 + answer of row 1.
    """
    a = KTOItem(EncodedSample([1, 2, 3, 4], [X, X, 3, 4]), 2, True)
    b = KTOItem(EncodedSample([5, 6, 7, 8], [X, 6, 7, 8]), 1, False)
    assert kl_sample(b, a, 16) == EncodedSample([5, 3, 4], [X, 3, 4])
    assert kl_sample(a, b, 16) == EncodedSample([1, 2, 6, 7, 8], [X, X, 6, 7, 8])
    assert kl_sample(a, b, 4) == EncodedSample([2, 6, 7, 8], [X, 6, 7, 8])  # prompt start cut to fit
    batch = collate_kto([a, b], pad_id=0, packed=False, max_length=16)
    assert batch["desirable"].tolist() == [True, False]
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 4, 0],
        [5, 6, 7, 8, 0],
        [5, 3, 4, 0, 0],
        [1, 2, 6, 7, 8],
    ]


def test_kto_datamodule_batches(tmp_path, smollm2_tokenizer):
    rows = [
        {"prompt": f"Say {i}.", "completion": f"{i}" if i % 2 else "No.", "label": bool(i % 2)}
        for i in range(4)
    ]
    dm = KTODataModule(SMOLLM2, _write(tmp_path / "k.jsonl", rows), batch_size=2, shuffle=False)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["desirable"].tolist() == [False, True]
    assert int(batch["num_samples"]) == 4
    kl0 = smollm2_tokenizer.decode(_segment(batch, 2))
    assert "Say 1." in kl0 and kl0.endswith("No.<|im_end|>\n")  # completion 0 after prompt 1
    with pytest.raises(ValueError, match="batch_size >= 2"):
        KTODataModule(SMOLLM2, str(tmp_path / "k.jsonl"), batch_size=1).setup()
