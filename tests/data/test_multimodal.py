"""Multimodal rows: image tokens placed by the processor, never labelled; bad images named; batches with pixels."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from lit_swift.data import rows
from lit_swift.data.multimodal import (
    IMAGE_INPUTS,
    MultimodalDataModule,
    MultimodalEncoder,
    load_processor,
)
from lit_swift.data.template import ChatEncoder
from lit_swift.types import IGNORE_INDEX, ChatRow

MODEL = "llava-smollm2-tiny"
NUM_IMAGE_TOKENS = 16  # 32x32 input, 8x8 patches


@pytest.fixture(scope="module")
def processor():
    return load_processor(MODEL)


@pytest.fixture(scope="module")
def encoder(processor):
    return MultimodalEncoder(ChatEncoder(processor.tokenizer, system="Be brief."), processor)


def write_image(path: Path, colour: str, size=(40, 30)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def chat(question: str, answer: str, images: list[str] | None = None) -> dict:
    row = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
    return {**row, "images": images} if images is not None else row


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_image_tokens_are_never_labelled(encoder, tmp_path):
    red, blue = write_image(tmp_path / "r.png", "red"), write_image(tmp_path / "b.png", "blue")
    row = rows.to_canonical(chat("<image>then<image>: colours?", "red, blue", [str(red), str(blue)]), "chat")
    image_id = encoder.image_token_id
    for loss_on in ("assistant", "all"):
        enc = MultimodalEncoder(ChatEncoder(encoder.encoder.tokenizer, loss_on=loss_on), encoder.processor)
        sample = enc.encode(row, "row 1")
        positions = [i for i, t in enumerate(sample.input_ids) if t == image_id]
        assert len(positions) == 2 * NUM_IMAGE_TOKENS
        assert all(sample.labels[i] == IGNORE_INDEX for i in positions)
        assert sample.images == [str(red.resolve()), str(blue.resolve())]
    trained = [t for t, lab in zip(sample.input_ids, sample.labels, strict=True) if lab != IGNORE_INDEX]
    text = encoder.encoder.tokenizer.decode(
        [t for t, lab in zip(*_encode_assistant(encoder, row), strict=True) if lab != IGNORE_INDEX]
    )
    assert text == "red, blue<|im_end|>" and trained  # assistant mode trains only the answer


def _encode_assistant(encoder, row):
    sample = encoder.encode(row, "row")
    return sample.input_ids, sample.labels


def test_images_go_before_the_first_user_turn_without_tags(encoder, tmp_path):
    red = write_image(tmp_path / "r.png", "red")
    row = rows.to_canonical(chat("What colour?", "red", [str(red)]), "chat")
    text = encoder.encoder.tokenizer.decode(encoder.encode(row, "row").input_ids)
    assert "<|im_start|>user\n" + "<image>" * NUM_IMAGE_TOKENS + "What colour?<|im_end|>" in text


def test_tag_and_image_counts_must_agree(encoder, tmp_path):
    red = write_image(tmp_path / "r.png", "red")
    row = rows.to_canonical(chat("<image><image>?", "red", [str(red)]), "chat")
    with pytest.raises(ValueError, match=r"data.jsonl:3: 2 <image> tag\(s\) in the messages but 1 image"):
        encoder.encode(row, "data.jsonl:3")


def test_paths_resolve_from_the_data_folder_and_base64_decodes_the_same(encoder, tmp_path, processor):
    path = write_image(tmp_path / "r.png", "red")
    b64 = base64.b64encode(path.read_bytes()).decode()
    data = write_jsonl(
        tmp_path / "d.jsonl", [chat("<image>?", "red", ["r.png"]), chat("<image>?", "red", [b64])]
    )
    dm = MultimodalDataModule(tokenizer=MODEL, dataset=str(data), batch_size=2, shuffle=False)
    dm.setup("fit")
    assert dm.train_samples[0].images == [str(path.resolve())]
    batch = next(iter(dm.train_dataloader()))
    pixels = batch[IMAGE_INPUTS]["pixel_values"]  # [2, 3, 32, 32]
    assert pixels.shape == (2, 3, 32, 32)
    torch.testing.assert_close(pixels[0], pixels[1], rtol=0, atol=0)
    expected = processor.image_processor([Image.open(path)], return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pixels[0], expected, rtol=0, atol=0)


def test_text_and_image_rows_share_a_datamodule_and_images_follow_token_order(tmp_path, processor):
    write_image(tmp_path / "r.png", "red"), write_image(tmp_path / "b.png", "blue")
    records = [chat("Hi", "Hello"), chat("<image>?", "blue", ["b.png"]), chat("<image>?", "red", ["r.png"])]
    data = write_jsonl(tmp_path / "d.jsonl", records)
    tokenizer = processor.tokenizer
    for packing in (False, True):
        dm = MultimodalDataModule(
            tokenizer=MODEL, dataset=str(data), batch_size=3, shuffle=False, packing=packing, max_length=256
        )
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        assert batch["num_samples"] == 3 and ("cu_seqlens" in batch) == packing
        assert (
            batch["step_target_tokens"] == batch["num_target_tokens"] == 3 * 2
        )  # each one-token answer + <|im_end|>
        # the k-th image's pixels belong to the k-th sample with image tokens, in row-major token order
        ids, seg, tgt = (batch[k].flatten().tolist() for k in ("input_ids", "segment_ids", "targets"))
        segments = list(
            dict.fromkeys(s for t, s in zip(ids, seg, strict=True) if t == processor.image_token_id)
        )
        answers = [
            tokenizer.decode([t for t, s in zip(tgt, seg, strict=True) if s == k and t != IGNORE_INDEX])
            for k in segments
        ]
        red = batch[IMAGE_INPUTS]["pixel_values"][:, 0].mean(dim=(1, 2)) > 0  # [num_images]
        assert [a.startswith("red") for a in answers] == red.tolist() and len(answers) == 2


def test_missing_or_broken_image_is_an_error_naming_the_row(tmp_path):
    write_image(tmp_path / "ok.png", "red")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    records = [
        chat("<image>?", "red", ["ok.png"]),
        chat("<image>?", "x", ["gone.png"]),
        chat("<image>?", "y", ["broken.png"]),
    ]
    data = write_jsonl(tmp_path / "d.jsonl", records)
    dm = MultimodalDataModule(tokenizer=MODEL, dataset=str(data), batch_size=1)
    with pytest.raises(ValueError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "2 row(s) with a bad image" in message
    assert f"{data}:2: image 'gone.png' not found" in message
    assert f"{data}:3: image {tmp_path / 'broken.png'} cannot be decoded" in message
    skipping = MultimodalDataModule(tokenizer=MODEL, dataset=str(data), batch_size=1, on_bad_row="skip")
    skipping.setup("fit")
    assert len(skipping.train_samples) == 1


def test_image_column_must_hold_strings():
    with pytest.raises(rows.RowError, match=r"images\[0\] must be a path or base64 string, got int"):
        rows.to_canonical(chat("<image>?", "red", [3]), "chat")
    assert rows.to_canonical(chat("?", "red", [{"path": "a.png"}]), "chat").images == ["a.png"]
    assert isinstance(rows.to_canonical(chat("?", "red"), "chat"), ChatRow)


def test_data_preview_shows_where_the_image_tokens_land(tmp_path, capsys):
    from lit_swift.cli import main

    write_image(tmp_path / "r.png", "red")
    data = write_jsonl(tmp_path / "d.jsonl", [chat("What colour?", "red", ["r.png"]), chat("Hi", "Hello")])
    main(["data", "preview", "--model", MODEL, "--dataset", str(data)])
    out = capsys.readouterr().out
    assert "<|im_start|>user\n<image>×16What colour?<|im_end|>" in out
    assert "⟦red<|im_end|>⟧" in out and "rows: 2" in out


def test_streaming_reads_images_relative_to_the_data_file(tmp_path):
    write_image(tmp_path / "r.png", "red")
    data = write_jsonl(tmp_path / "d.jsonl", [chat("<image>?", "red", ["r.png"]), chat("Hi", "Hello")])
    dm = MultimodalDataModule(tokenizer=MODEL, dataset=str(data), batch_size=2, streaming=True, shuffle=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch[IMAGE_INPUTS]["pixel_values"].shape == (1, 3, 32, 32) and batch["num_samples"] == 2
