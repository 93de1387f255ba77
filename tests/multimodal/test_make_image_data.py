"""scripts/make_image_data.py: the committed synthetic image data is what the script renders."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("make_image_data", ROOT / "scripts" / "make_image_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_data_is_reproduced_by_the_documented_command(tmp_path):
    load_script().main(["--out", str(tmp_path)])
    for name in ("train.jsonl", "val.jsonl"):
        assert (tmp_path / name).read_bytes() == (ROOT / "data" / "multimodal" / name).read_bytes()


def test_image_files_text_rows_and_every_task(tmp_path):
    script = load_script()
    script.main(["--out", str(tmp_path), "--image_files", "--num_train", "8", "--num_val", "4", "--text_rows", "2",
                 "--tasks", "colour,shape,count,letter"])  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and [r.get("task") for r in rows[:4]] == ["colour", "shape", "count", "letter"]
    assert "images" not in rows[-1] and rows[0]["messages"][0]["content"].startswith("<image>")
    assert "<image>" not in rows[1]["messages"][0]["content"]  # the loader puts the image first
    image = Image.open(tmp_path / rows[0]["images"][0])
    assert image.size == (32, 32) and rows[0]["messages"][1]["content"] in script.COLOURS
    counts = [r["messages"][1]["content"] for r in rows if r.get("task") == "count"]
    assert all(c in "1234" for c in counts)
