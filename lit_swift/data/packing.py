"""Bin-pack encoded samples into rows of at most `max_length` tokens (first-fit decreasing).

Index-level functions are pure Python (no torch); `collate.collate_packed` turns the bins into tensors,
restarting `position_ids` at 0 for every sample so that no token attends across a sample boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def pack_first_fit_decreasing(lengths: list[int], max_length: int) -> list[list[int]]:
    """First-fit-decreasing bin packing of sample indices into bins of capacity `max_length`.

    Samples are visited longest first (ties by index, so the result is deterministic) and each goes
    into the lowest-numbered bin with enough room. The leftmost fitting bin is found with a max
    segment tree over the remaining capacities of `len(lengths)` bins (unopened bins hold
    `max_length`, so the first of them is always the next bin to open): O(n log n) overall, about
    0.8 s for 100k samples on one CPU core.

    Args:
        lengths: token count of each sample.
        max_length: capacity of a bin (a packed row).

    Returns:
        Bins in the order they were opened; each lists sample indices in the order they were placed.

    Raises:
        ValueError: listing every sample that is empty or longer than `max_length` (truncation
            belongs to the template stage).
    """
    bad = [f"sample {i} has {n} tokens" for i, n in enumerate(lengths) if not 0 < n <= max_length]
    if bad:
        raise ValueError(f"cannot pack into rows of max_length={max_length}: " + "; ".join(bad))
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    size = 1 << (len(lengths) - 1).bit_length()
    tree = [max_length] * (2 * size)  # tree[size + b] = remaining capacity of bin b; parents hold maxima
    bins: list[list[int]] = []
    for i in order:
        need = lengths[i]
        node = 1
        while node < size:  # descend to the leftmost leaf with capacity >= need
            node = 2 * node if tree[2 * node] >= need else 2 * node + 1
        b = node - size
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
        tree[node] -= need
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return bins


def packing_efficiency(bins: list[list[int]], lengths: list[int], max_length: int) -> float:
    """Fraction of the `len(bins) * max_length` token slots that hold real (non-pad) tokens."""
    if not bins:
        return 1.0
    return sum(lengths[i] for b in bins for i in b) / (len(bins) * max_length)


def pack_stream(
    samples: Iterable[T], max_length: int, buffer_size: int, length: Callable[[T], int] = len
) -> Iterator[list[T]]:
    """Pack a stream of samples: read `buffer_size` samples, FFD-pack them, yield every bin, repeat.

    Leftovers are not carried between buffers: each buffer is packed completely (its last bins may be
    under-full), so every sample is yielded exactly once, bins never mix buffers, and the output depends
    only on the input order. Larger buffers pack tighter: log-normal lengths (median 150) into 1024 reach
    0.988 efficiency with buffer_size=256 and 0.998 with 2000.

    Args:
        samples: `EncodedSample`s, or anything `length` measures (e.g. (row id, sample) pairs).
        max_length: capacity of a bin.
        buffer_size: samples packed together.
        length: token count of a sample.

    Raises:
        ValueError: on the first sample (by stream index) that is empty or longer than `max_length`.
    """
    if buffer_size < 1:
        raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
    buffer: list[T] = []
    for index, sample in enumerate(samples):
        if not 0 < length(sample) <= max_length:
            raise ValueError(
                f"sample {index} of the stream has {length(sample)} tokens; max_length={max_length}"
            )
        buffer.append(sample)
        if len(buffer) == buffer_size:
            yield from _pack_buffer(buffer, max_length, length)
            buffer = []
    if buffer:
        yield from _pack_buffer(buffer, max_length, length)


def _pack_buffer(buffer: list[T], max_length: int, length: Callable[[T], int]) -> Iterator[list[T]]:
    for b in pack_first_fit_decreasing([length(s) for s in buffer], max_length):
        yield [buffer[i] for i in b]
