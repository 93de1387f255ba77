"""Render a synthetic image question-answering dataset offline (PIL) as ms-swift multimodal rows.

Each row is `{"messages": [...], "images": [...]}` with one small picture and a one-word answer; the tasks
are the colour of a shape, which shape, how many dots, and which letter is written. Half the rows put
`<image>` in the question, the other half leave it out (the loader then puts the image before the first
user turn, as ms-swift does). The held-out split is rendered from another seed.

    python scripts/make_image_data.py                      # data/multimodal/{train,val}.jsonl, base64 images
    python scripts/make_image_data.py --out /tmp/mm --image_files --num_train 8 --num_val 4 --text_rows 2
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 60, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
LETTERS = "ABCDE"
QUESTIONS = {
    "colour": "What colour is the shape?",
    "shape": "What shape is this?",
    "count": "How many dots are there?",
    "letter": "Which letter is written?",
}
TEXT_ROWS = [
    ("Name a primary colour.", "red"),
    ("How many sides does a square have?", "4"),
    ("What shape has three sides?", "triangle"),
]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def render(task: str, size: int, rng: random.Random) -> tuple[Image.Image, str]:
    """One picture for `task` and its answer."""
    image = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    colour = rng.choice(list(COLOURS))
    if task in ("colour", "shape"):
        side = rng.randint(size // 2, size - 4)
        x, y = rng.randint(0, size - side), rng.randint(0, size - side)
        shape = rng.choice(SHAPES)
        draw_shape(draw, shape, (x, y, x + side - 1, y + side - 1), COLOURS[colour])
        return image, colour if task == "colour" else shape
    if task == "count":
        count, cell = rng.randint(1, 4), size // 2
        for k in rng.sample(range(4), count):  # one dot per quadrant, jittered
            x, y = (k % 2) * cell + rng.randint(1, cell // 3), (k // 2) * cell + rng.randint(1, cell // 3)
            draw.ellipse((x, y, x + cell // 2, y + cell // 2), fill=COLOURS[colour])
        return image, str(count)
    letter = rng.choice(LETTERS)
    font = ImageFont.load_default(size=int(size * 0.8))
    draw.text((size // 2, size // 2), letter, fill=(20, 20, 20), font=font, anchor="mm")
    return image, letter


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_rows(
    num_rows: int, tasks: list[str], size: int, seed: int, image_dir: Path | None, prefix: str
) -> list[dict]:
    """`num_rows` rows cycling through `tasks`; images inline as base64, or as files in `image_dir`."""
    rng = random.Random(seed)
    rows = []
    for i in range(num_rows):
        task = tasks[i % len(tasks)]
        image, answer = render(task, size, rng)
        if image_dir is None:
            ref = base64.b64encode(png_bytes(image)).decode("ascii")
        else:
            name = f"{prefix}{i:05d}.png"
            image.save(image_dir / name)
            ref = f"{image_dir.name}/{name}"  # relative to the jsonl's folder
        question = QUESTIONS[task] if i % 2 else "<image>" + QUESTIONS[task]
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages, "images": [ref], "task": task})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/multimodal", help="output folder")
    parser.add_argument("--num_train", type=int, default=3000)
    parser.add_argument("--num_val", type=int, default=120)
    parser.add_argument("--tasks", default="colour,shape,count", help=f"comma list of {sorted(QUESTIONS)}")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--image_files", action="store_true", help="write PNG files (default: base64)")
    parser.add_argument("--text_rows", type=int, default=0, help="text-only rows added to train")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    unknown = sorted(set(tasks) - set(QUESTIONS))
    if unknown:
        parser.error(f"unknown tasks {unknown}; choose from {sorted(QUESTIONS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image_dir = out / "images" if args.image_files else None
    if image_dir is not None:
        image_dir.mkdir(exist_ok=True)
    train = make_rows(args.num_train, tasks, args.size, args.seed, image_dir, "train")
    train += [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in (TEXT_ROWS * args.text_rows)[: args.text_rows]
    ]
    val = make_rows(args.num_val, tasks, args.size, args.seed + 1, image_dir, "val")
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "val.jsonl", val)
    print(f"wrote {len(train)} train and {len(val)} val rows to {out}")


if __name__ == "__main__":
    main()
