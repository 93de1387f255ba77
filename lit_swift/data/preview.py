"""Preview how a chat dataset is encoded: the first rows with their trained text marked, then token statistics."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from itertools import groupby

from lit_swift import models
from lit_swift.data import multimodal, sources
from lit_swift.data.template import ChatEncoder, LossOn
from lit_swift.types import IGNORE_INDEX, ChatRow, EncodedSample

MARKS = ("⟦", "⟧")
"""Plain-text markers around trained text; brackets that chat data practically never contains."""
COLOURS = ("\x1b[1;32m", "\x1b[0m")
"""ANSI bold green for trained text when printing to a terminal."""
MAX_PROBLEMS = 20


def preview(
    model: str,
    dataset: str,
    num_rows: int = 3,
    template: str | None = None,
    system: str | None = None,
    loss_on: LossOn = "assistant",
    max_length: int = 2048,
) -> str:
    """Render the first rows of a chat jsonl as the model sees them, trained text marked, plus statistics.

    Statistics cover every row of the file: token counts, the fraction of tokens that carry a label,
    and how many rows are longer than `max_length`. Rows that cannot be read or encoded are listed.

    Args:
        model: model spec whose tokenizer encodes the data (built-in alias, local folder or hub id).
        dataset: a file of chat rows (`messages`, ShareGPT, Alpaca, ...): .jsonl, .json, .csv or .parquet.
        num_rows: how many rows to show.
        template: named chat template, or None for the tokenizer's own.
        system: system prompt for rows that have none (None keeps the template's default).
        loss_on: which turns are trained: `assistant`, `last_assistant` or `all`.
        max_length: longest sample training will keep; longer rows are counted and the cut is shown.

    Returns:
        The report, trained text between ⟦ and ⟧ (bold green instead when stdout is a terminal).
    """
    tokenizer = models.load_tokenizer(model)
    encoder = ChatEncoder(
        tokenizer, system=system, loss_on=loss_on, template=template, allow_empty_labels=True
    )
    encode, compact = multimodal.preview_hooks(model, encoder, dataset)  # images: their token runs shown
    colour = sys.stdout.isatty()
    marks = COLOURS if colour else MARKS
    shown, lengths, problems = [], [], []
    num_trained = 0
    for where, row in read_chat_rows(dataset):
        try:
            sample = encode(row, where) if isinstance(row, ChatRow) else None
        except ValueError as err:  # TemplateError: the template cannot locate the answers
            row = err
        if not isinstance(row, ChatRow):
            problems.append(f"{where}: {row}")
            continue
        if sample.num_label_tokens == 0:
            problems.append(f"{where}: no token carries a label")
        lengths.append(len(sample))
        num_trained += sample.num_label_tokens
        if len(shown) < num_rows:
            title = f"--- {where}: {len(sample)} tokens, {sample.num_label_tokens} trained"
            shown.append(f"{title}\n{compact(mark_trained(tokenizer, sample, marks, max_length))}")
    legend = "bold green" if colour else f"{MARKS[0]} {MARKS[1]}"
    head = f"{dataset} encoded with {encoder.name}, loss_on={loss_on}; trained text in {legend}"
    return "\n".join(
        [head, *shown, "--- statistics", *_statistics(lengths, num_trained, max_length), *_problems(problems)]
    )


def read_chat_rows(path: str) -> Iterator[tuple[str, ChatRow | Exception]]:
    """(`file:line`, chat row or the reason it is not one) for each record of a dataset file.

    Read as training reads it (`lit_swift.data.sources`): .jsonl, .json, .csv, .parquet, `path#N`.
    """
    for item in sources.iter_records(sources.DatasetSpec(path)):
        result = sources.normalise(item, "chat", None)
        if isinstance(result, sources.BadRecord):
            yield str(result.where), ValueError(result.reason)
        else:
            yield str(result[1]), result[0]


def mark_trained(tokenizer, sample: EncodedSample, marks: tuple[str, str], max_length: int) -> str:
    """Decode a sample run by run, wrapping trained runs in `marks` and showing where `max_length` cuts."""
    out = []
    flags = [label != IGNORE_INDEX for label in sample.labels]
    pairs = list(zip(sample.input_ids, flags, strict=True))
    for part, cut in ((pairs[:max_length], False), (pairs[max_length:], True)):
        if cut and part:
            out.append(f"\n✂ --- max_length {max_length}: the rest is cut by truncation=right --- ✂\n")
        for trained, run in groupby(part, key=lambda p: p[1]):
            text = tokenizer.decode([token for token, _ in run], skip_special_tokens=False)
            out.append(f"{marks[0]}{text}{marks[1]}" if trained else text)
    return "".join(out)


def _statistics(lengths: list[int], num_trained: int, max_length: int) -> list[str]:
    if not lengths:
        return ["rows: 0"]
    total = sum(lengths)
    return [
        f"rows: {len(lengths)}",
        f"tokens per row: min {min(lengths)}, mean {total / len(lengths):.1f}, max {max(lengths)}, total {total}",
        f"trained tokens: {num_trained} ({num_trained / total:.1%} of all tokens)",
        f"rows longer than max_length {max_length}: {sum(n > max_length for n in lengths)}",
    ]


def _problems(problems: list[str]) -> list[str]:
    if not problems:
        return []
    more = [f"... and {len(problems) - MAX_PROBLEMS} more"] if len(problems) > MAX_PROBLEMS else []
    return [f"--- {len(problems)} problem row(s)", *problems[:MAX_PROBLEMS], *more]


def preview_command(
    model: str,
    dataset: str,
    num_rows: int = 3,
    template: str | None = None,
    system: str | None = None,
    loss_on: LossOn = "assistant",
    max_length: int = 2048,
) -> None:
    """Print how a chat dataset is encoded: the first rows with their trained text marked, then statistics.

    Args:
        model: model spec whose tokenizer encodes the data (built-in alias, local folder or hub id).
        dataset: a file of chat rows (`messages`, ShareGPT, Alpaca, ...): .jsonl, .json, .csv or .parquet.
        num_rows: how many rows to show.
        template: named chat template, or None for the tokenizer's own.
        system: system prompt for rows that have none (None keeps the template's default).
        loss_on: which turns are trained: `assistant`, `last_assistant` or `all`.
        max_length: longest sample training will keep; longer rows are counted and the cut is shown.
    """
    print(preview(model, dataset, num_rows, template, system, loss_on, max_length))
