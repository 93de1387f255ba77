"""Multimodal chat rows (ms-swift's `images` beside `messages`): image tokens placed by the model's processor.

A row's images are opened with PIL only to learn how many tokens each one becomes (the processor's own
expansion of its image token, e.g. 16 `<image>` ids for a 32x32 LLaVA input), then closed; the batch
reopens them and runs the processor's image processor, whose `pixel_values` (and `image_sizes` or
`image_grid_thw` where the model has them) go to the model unchanged. Images are never resized here.
Image tokens never carry a label. Rows without images pass through the same path as text.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset

from lit_swift import models
from lit_swift.data.datamodule import SFTDataModule, collate_samples, num_targets
from lit_swift.data.plan import Encoded, MicroBatch
from lit_swift.data.stream import Unit
from lit_swift.data.template import ChatEncoder, check_labels
from lit_swift.types import IGNORE_INDEX, ChatRow, EncodedSample, Message

IMAGE_TAG = "<image>"
"""ms-swift's placeholder for one image in a user turn."""
IMAGE_INPUTS = "image_inputs"
"""Batch key of the processor's image tensors (kwargs of the model's forward)."""
_BASE64 = re.compile(r"^(data:image/[\w.+-]+;base64,)?[A-Za-z0-9+/\s]+=*$")


class ImageError(ValueError):
    """An image that cannot be found or decoded; the message names the row and the image."""


@dataclass
class ImageSample(EncodedSample):
    """An encoded sample with its images (absolute paths or base64 strings) in token order."""

    images: list[str] = field(default_factory=list)


def resolve_image(ref: str, base_dir: Path | None = None) -> str:
    """A path as given (absolute or from the working directory), else relative to `base_dir` (the data
    file's folder); a string that is no existing file is taken as base64 (optionally a `data:` URL)."""
    path = Path(ref).expanduser()
    for candidate in (path, *([base_dir / path] if base_dir is not None else [])):
        if _is_file(candidate):
            return str(candidate.resolve())
    if len(ref) > 64 and _BASE64.match(ref[:4096]):
        return ref
    looked = f"{path}" + (f" or {base_dir / path}" if base_dir is not None and not path.is_absolute() else "")
    raise ImageError(f"image {ref[:80]!r} not found (looked for {looked}) and not base64 data")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a base64 string is too long a file name
        return False


def open_image(ref: str):
    """Decode a resolved image reference with PIL (fully loaded, so a truncated file fails here)."""
    from PIL import Image, UnidentifiedImageError

    try:
        if _is_file(Path(ref)):
            image = Image.open(ref)
        else:
            data = base64.b64decode(ref.split(",", 1)[1] if ref.startswith("data:") else ref, validate=False)
            image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, UnidentifiedImageError, binascii.Error, ValueError) as err:
        name = ref if Path(ref).is_absolute() else f"base64 data {ref[:24]!r}..."
        raise ImageError(f"image {name} cannot be decoded: {err}") from err
    return image


def load_processor(spec: str):
    """The model's own `AutoProcessor` (tokenizer + image processor), from an alias, folder or hub id."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(models.resolve(spec))
    if getattr(processor, "image_token", None) is None or not hasattr(processor, "image_processor"):
        raise ValueError(
            f"{spec}: its processor ({type(processor).__name__}) has no image token/image processor"
        )
    return processor


def place_images(messages: list[Message], num_images: int, token: str, where: str) -> list[Message]:
    """Replace each `<image>` tag with the processor's image token; with no tag, put all images before the
    first user turn's text (ms-swift's rule). The tag count must equal the number of images."""
    tags = sum((m.get("content") or "").count(IMAGE_TAG) for m in messages)
    if tags == 0 and num_images:
        first = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        if first is None:
            raise ImageError(f"{where}: {num_images} image(s) but no user turn to put them in")
        messages = list(messages)
        messages[first] = {**messages[first], "content": IMAGE_TAG * num_images + messages[first]["content"]}
    elif tags != num_images:
        raise ImageError(f"{where}: {tags} {IMAGE_TAG} tag(s) in the messages but {num_images} image(s)")
    for m in messages:
        if m["role"] != "user" and IMAGE_TAG in (m.get("content") or ""):
            raise ImageError(f"{where}: {IMAGE_TAG} in a {m['role']} turn; images belong in user turns")
    return [
        {**m, "content": m["content"].replace(IMAGE_TAG, token)} if m.get("content") else m for m in messages
    ]


class MultimodalEncoder:
    """Encodes chat rows with images: the chat template renders the text, the processor expands each image.

    Args:
        encoder: the text encoder (chat template, system prompt, loss mask by role).
        processor: the model's processor; its `image_token` marks an image in the text.
    """

    def __init__(self, encoder: ChatEncoder, processor: Any):
        self.encoder, self.processor = encoder, processor
        self.image_token = processor.image_token
        self.image_token_id = encoder.tokenizer.convert_tokens_to_ids(self.image_token)
        self._expansions: dict[tuple[int, int], list[int]] = {}

    def encode(self, row: ChatRow, where: str, base_dir: Path | None = None) -> ImageSample:
        refs = [self._resolve(ref, base_dir, where) for ref in row.images or []]
        messages = place_images(row.messages, len(refs), self.image_token, where)
        text = self.encoder.encode(ChatRow(messages, row.tools), where)
        return self.expand(text, refs, where)

    def prompt(self, row: ChatRow, where: str, base_dir: Path | None = None) -> ImageSample:
        """The conversation without its final assistant turn, ready for generation (no labels)."""
        refs = [self._resolve(ref, base_dir, where) for ref in row.images or []]
        messages = row.messages[:-1] if row.messages[-1]["role"] == "assistant" else row.messages
        ids = self.encoder.prompt_ids(place_images(messages, len(refs), self.image_token, where), row.tools)
        return self.expand(EncodedSample(ids, [IGNORE_INDEX] * len(ids)), refs, where)

    def expand(self, text: EncodedSample, refs: list[str], where: str) -> ImageSample:
        """Replace the i-th image token of `text` by the processor's expansion for image i (no labels)."""
        slots = [i for i, t in enumerate(text.input_ids) if t == self.image_token_id]
        if len(slots) != len(refs):
            raise ImageError(
                f"{where}: {len(refs)} image(s) but {len(slots)} image token(s) {self.image_token!r} after "
                "rendering: the text itself contains the image token, or the tokenizer splits it"
            )
        ids, labels, start = [], [], 0
        for slot, ref in zip(slots, refs, strict=True):
            expanded = self.expansion(ref, where)
            ids += text.input_ids[start:slot] + expanded
            labels += text.labels[start:slot] + [IGNORE_INDEX] * len(expanded)  # never train image tokens
            start = slot + 1
        return ImageSample(ids + text.input_ids[start:], labels + text.labels[start:], refs)

    @staticmethod
    def _resolve(ref: str, base_dir: Path | None, where: str) -> str:
        try:
            return resolve_image(ref, base_dir)
        except ImageError as err:
            raise ImageError(f"{where}: {err}") from None

    def expansion(self, ref: str, where: str) -> list[int]:
        """The token ids the processor turns one image token into for this image (cached by image size)."""
        try:
            image = open_image(ref)
        except ImageError as err:
            raise ImageError(f"{where}: {err}") from None
        key = image.size
        if key not in self._expansions:
            out = self.processor(text=[self.image_token], images=[image], add_special_tokens=False)
            self._expansions[key] = list(out["input_ids"][0])
        image.close()
        return self._expansions[key]


def image_inputs(processor: Any, refs: list[str]) -> dict[str, Any]:
    """The processor's image tensors for `refs`, in order (e.g. `pixel_values` [num_images, 3, H, W])."""
    images = [open_image(ref) for ref in refs]
    return dict(processor.image_processor(images, return_tensors="pt"))


def fit_length(
    sample: ImageSample, max_length: int, truncation: str, image_token_id: int, where: str
) -> list:
    """`truncation` for image samples: `right` may cut text after the images; cutting an image is refused."""
    if len(sample) <= max_length:
        return [sample]
    if truncation == "drop":
        return []
    kept = sample.input_ids[:max_length]
    if truncation == "right" and kept.count(image_token_id) == sample.input_ids.count(image_token_id):
        return [ImageSample(kept, sample.labels[:max_length], sample.images)]
    raise ValueError(
        f"{where}: {len(sample)} tokens > max_length {max_length} and truncation={truncation} would cut "
        "image tokens; raise max_length or use truncation: drop"
    )


class ImageBatches(Dataset):
    """Map-style view that collates one planned `MicroBatch` per item, images included."""

    def __init__(self, samples: list[EncodedSample], collate):
        self.samples, self.collate = samples, collate

    def __getitem__(self, mb: MicroBatch) -> dict[str, Any]:
        return self.collate([[self.samples[i] for i in row] for row in mb.rows], mb.step_target_tokens)


class MultimodalDataModule(SFTDataModule):
    """Chat SFT data with images for vision-language models (ms-swift rows: `images` beside `messages`).

    Image paths are taken as given, else relative to the data file's folder; base64 strings are decoded.
    Rows with a missing or unreadable image are errors listed together before training (`on_bad_row:
    skip` drops them and counts them). Encoded rows are never cached (`encode_cache` is ignored): the
    images are files that may change while the rows stay the same.

    Args:
        processor: model spec whose `AutoProcessor` expands and preprocesses the images (default: the
            `tokenizer` spec, i.e. the model).
        **kwargs: every argument of `SFTDataModule` (chat rows only).
    """

    def __init__(self, *args: Any, processor: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.kind != "chat":
            raise ValueError(f"MultimodalDataModule reads chat rows; kind={self.kind!r} is not supported")
        self.processor_spec, self.encode_cache = processor, False
        self.processor: Any = None
        self._bad_images: list[str] = []

    def _prepare(self, train: list, val: list) -> None:
        self.processor = load_processor(self.processor_spec or self.tokenizer_spec)
        text = ChatEncoder(self.tokenizer, system=self.system, loss_on=self.loss_on, template=self.template)
        self.encoder = MultimodalEncoder(text, self.processor)
        self.train_samples = self._encode(train, "train")
        self.val_samples = self._encode(val, "validation")
        if self._bad_images:
            bad, self._bad_images = self._bad_images, []
            more = f"\n... and {len(bad) - 20} more" if len(bad) > 20 else ""
            raise ValueError(
                f"{len(bad)} row(s) with a bad image (set on_bad_row: skip to drop them):\n"
                + "\n".join(bad[:20])
                + more
            )

    def _encode_one(self, row: ChatRow, where: Any) -> Encoded:
        # a Provenance when read whole, its `file:line` text when streamed
        base_dir = Path(where.source if hasattr(where, "source") else str(where).rsplit(":", 1)[0]).parent
        try:
            sample = self.encoder.encode(row, str(where), base_dir)
        except ImageError as err:
            if self.on_bad_row == "skip":
                return Encoded([], "row(s) skipped: missing or unreadable image")
            if self.streaming:
                raise
            self._bad_images.append(str(err))
            return Encoded([], None)
        token_id = self.encoder.image_token_id
        pieces = fit_length(sample, self.max_length, self.truncation, token_id, str(where))
        note = None
        if len(sample) > self.max_length:
            note = f"sample(s) handled by truncation={self.truncation} (longer than max_length {self.max_length})"
        return Encoded([check_labels(p, str(where)) for p in pieces], note)

    def collate(self, rows: list[list[EncodedSample]], step_target_tokens: int) -> dict[str, Any]:
        """The text batch (padded or packed) plus the images of its samples in row-major token order."""
        batch = collate_samples(rows, self.tokenizer.pad_token_id, self.packing, step_target_tokens)
        refs = [ref for row in rows for sample in row for ref in getattr(sample, "images", ())]
        if refs:
            batch[IMAGE_INPUTS] = image_inputs(self.processor, refs)
        return batch

    def _loader(self, samples: list[EncodedSample], batch_size: int, train: bool) -> DataLoader:
        return self._planned_loader(
            ImageBatches(samples, self.collate), self._units(samples), [num_targets(s) for s in samples],
            batch_size, train,
        )  # fmt: skip

    def _collate_units(self, units: list[Unit], step_total: int) -> dict[str, Any]:
        return self.collate([[sample for _, sample in unit] for unit in units], step_total)


def preview_hooks(model: str, encoder: ChatEncoder, dataset: str):
    """`data preview` for a vision-language model: (encode row, compact text), else the text-only pair.

    Images are expanded as in training (paths relative to the dataset's folder); a run of image tokens is
    shown as `<image>×16`.
    """
    from lit_swift.multimodal.folders import is_vision_language

    if not is_vision_language(model):
        return (lambda row, where: encoder.encode(row)), (lambda text: text)
    mm = MultimodalEncoder(encoder, load_processor(model))
    run = re.compile(f"(?:{re.escape(mm.image_token)})+")

    def compact(text: str) -> str:
        return run.sub(lambda m: f"{mm.image_token}×{len(m.group(0)) // len(mm.image_token)}", text)

    return (lambda row, where: mm.encode(row, where, Path(dataset).parent)), compact
