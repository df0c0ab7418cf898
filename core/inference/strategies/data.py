"""Lazy training data: rows read one line at a time, shuffled through a bounded buffer, batched.

Nothing here holds a whole file: `iter_labelled` reads a line per row, `shuffled` keeps at most
`buffer` rows, `batched` one batch. A second epoch reads the file again instead of keeping it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TypeVar

from core.inference.evaluation import batched, iter_labelled

T = TypeVar("T")

__all__ = ["batched", "data_fingerprint", "iter_labelled", "iter_texts", "shuffled", "take"]


def iter_texts(path: Path) -> Iterator[str]:
    """The texts of a labelled file, lazily (for a vectoriser's counting pass)."""
    return (text for text, _ in iter_labelled(path))


def take(rows: Iterable[T], limit: int) -> Iterator[T]:
    """The first `limit` rows, or all of them when `limit` is 0."""
    return iter(rows) if limit == 0 else islice(rows, limit)


def shuffled(rows: Iterable[T], buffer: int, rng: random.Random) -> Iterator[T]:
    """Rows in a seeded random order using at most `buffer` of them in memory (a shuffle buffer).

    Each incoming row swaps with a random slot and the displaced one is emitted, so the order is
    random within a sliding window of `buffer` rows; with `buffer` >= the file it is a full shuffle.
    """
    pool: list[T] = []
    for row in rows:
        if len(pool) < buffer:
            pool.append(row)
            continue
        slot = rng.randrange(buffer)
        yield pool[slot]
        pool[slot] = row
    rng.shuffle(pool)
    yield from pool


def data_fingerprint(path: Path) -> dict[str, str | int]:
    """sha256 of a data file's bytes (read in 1 MiB chunks) and its number of lines."""
    digest = hashlib.sha256()
    lines = 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            lines += chunk.count(b"\n")
    return {"file": path.name, "sha256": digest.hexdigest(), "lines": lines}
