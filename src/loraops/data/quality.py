"""Dataset-level findings in bounded memory: duplicates, contradictions, length and label statistics.

Per example only four integers are kept (three 64-bit keys and the line number). They are held in
memory up to a budget, then spilled to bucket files partitioned by the input key. Every finding here
(exact duplicate, near duplicate, contradiction) is between examples with the same normalised input,
so each bucket is analysed on its own: memory stays bounded whatever the size of the file.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROW = np.dtype([("input", "<u8"), ("near", "<u8"), ("exact", "<u8"), ("line", "<u8")])
BUCKETS = 64
# Rows held in memory before spilling (32 bytes each; the analysis needs about twice that).
KEY_BUDGET_ROWS = 1_000_000


@dataclass
class Group:
    """Examples that share a normalised input."""

    lines: list[int]  # in file order


@dataclass
class KeyFindings:
    """Line numbers involved in each finding (capped lists) with exact totals."""

    exact_duplicates: int = 0  # later copies of a byte-identical example
    near_duplicates: int = 0  # later copies equal after normalisation (and not exact copies)
    contradicting_examples: int = 0  # examples in a group whose outputs differ
    contradiction_groups: int = 0
    exact_pairs: list[tuple[int, int]] = field(default_factory=list)  # (line, first line)
    near_pairs: list[tuple[int, int]] = field(default_factory=list)
    contradictions: list[list[int]] = field(default_factory=list)  # groups of lines
    drop_lines: npt.NDArray[np.uint64] = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))


class KeyStore:
    """Collects (input, near, exact, line) keys; ``analyse`` finds duplicates and contradictions.

    Rows are partitioned by input key as they arrive (in memory, then in bucket files once more than
    ``budget_rows`` are held), and analysed one bucket at a time.
    """

    def __init__(self, spill_dir: Path, budget_rows: int | None = None) -> None:
        self.spill_dir = spill_dir
        self.budget_rows = budget_rows or KEY_BUDGET_ROWS
        self._buckets: list[list[npt.NDArray[np.void]]] = [[] for _ in range(BUCKETS)]
        self._rows = 0
        self._spilled = False
        self._pending: list[tuple[int, int, int, int]] = []

    def add(self, input_key: int, near_key: int, exact_key: int, line: int) -> None:
        self._pending.append((input_key, near_key, exact_key, line))
        if len(self._pending) >= min(16384, self.budget_rows):
            self._flush_pending()

    def _flush_pending(self) -> None:
        if not self._pending:
            return
        rows = np.array(self._pending, dtype=ROW)
        self._pending = []
        bucket = rows["input"] % BUCKETS
        order = np.argsort(bucket, kind="stable")
        rows, bucket = rows[order], bucket[order]
        bounds = np.searchsorted(bucket, np.arange(BUCKETS + 1))
        for b in range(BUCKETS):
            if bounds[b] < bounds[b + 1]:
                self._buckets[b].append(rows[bounds[b] : bounds[b + 1]].copy())
        self._rows += len(rows)
        if self._rows >= self.budget_rows:
            self._spill()

    def _bucket_file(self, b: int) -> Path:
        return self.spill_dir / f"keys-{b:02d}.bin"

    def _spill(self) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        for b, chunks in enumerate(self._buckets):
            if chunks:
                with self._bucket_file(b).open("ab") as fh:
                    for chunk in chunks:
                        chunk.tofile(fh)
                chunks.clear()
        self._rows = 0
        self._spilled = True

    def _partitions(self) -> Iterator[npt.NDArray[np.void]]:
        self._flush_pending()
        for b in range(BUCKETS):
            parts = self._buckets[b]
            path = self._bucket_file(b)
            if self._spilled and path.exists():
                parts.insert(0, np.fromfile(path, dtype=ROW))
                path.unlink()
            if parts:
                rows = np.concatenate(parts)
                parts.clear()
                yield rows

    def analyse(self, *, keep: int = 1000, drop_exact: bool = True) -> KeyFindings:
        found = KeyFindings()
        drops: list[npt.NDArray[np.uint64]] = []
        for rows in self._partitions():
            _analyse_partition(rows, found, drops, keep, drop_exact)
        found.exact_pairs.sort()
        found.near_pairs.sort()
        found.contradictions.sort()
        del found.exact_pairs[keep:], found.near_pairs[keep:], found.contradictions[keep:]
        if drops:
            found.drop_lines = np.sort(np.concatenate(drops))
        return found


def _analyse_partition(
    rows: npt.NDArray[np.void],
    found: KeyFindings,
    drops: list[npt.NDArray[np.uint64]],
    keep: int,
    drop_exact: bool,
) -> None:
    if len(rows) < 2:
        return
    rows.sort(order=["input", "near", "exact", "line"])  # in place: no index array, no copy
    inp, near, exact, line = rows["input"], rows["near"], rows["exact"], rows["line"]
    same_input = inp[1:] == inp[:-1]
    same_near = same_input & (near[1:] == near[:-1])
    same_exact = same_near & (exact[1:] == exact[:-1])
    del same_input
    # A row repeating the one before it; the first row of its run is the earliest line.
    exact_dup = np.concatenate(([False], same_exact))
    near_dup = np.concatenate(([False], same_near)) & ~exact_dup
    found.exact_duplicates += int(exact_dup.sum())
    found.near_duplicates += int(near_dup.sum())
    if drop_exact and exact_dup.any():
        drops.append(line[exact_dup].astype(np.uint64))
    exact_starts = np.flatnonzero(~exact_dup)
    for i in np.flatnonzero(exact_dup)[: keep * 4]:
        first = exact_starts[np.searchsorted(exact_starts, i, side="right") - 1]
        _push(found.exact_pairs, (int(line[i]), int(line[first])), keep)
    # Runs are sorted by exact key, so the two lines of a near pair can come in either order.
    near_starts = np.flatnonzero(np.concatenate(([True], ~same_near)))
    for i in np.flatnonzero(near_dup)[: keep * 4]:
        first = near_starts[np.searchsorted(near_starts, i, side="right") - 1]
        a, b = int(line[i]), int(line[first])
        _push(found.near_pairs, (max(a, b), min(a, b)), keep)
    del exact_dup, near_dup, same_near, same_exact
    # Contradictions: a run of equal inputs holding more than one near key.
    starts = np.flatnonzero(np.concatenate(([True], inp[1:] != inp[:-1])))
    ends = np.append(starts[1:], len(rows))
    multi = ends - starts > 1
    for s, e in zip(starts[multi], ends[multi], strict=True):
        if near[s] != near[e - 1]:
            found.contradiction_groups += 1
            found.contradicting_examples += int(e - s)
            if len(found.contradictions) < keep * 4:
                found.contradictions.append(sorted(int(x) for x in line[s:e])[:20])


def _push(items: list[tuple[int, int]], item: tuple[int, int], keep: int) -> None:
    items.append(item)
    if len(items) > keep * 8:
        items[:] = heapq.nsmallest(keep, items)


class Histogram:
    """Exact counts of non-negative integers below ``cap`` (larger values count as ``cap``)."""

    def __init__(self, cap: int = 1 << 16) -> None:
        self.cap = cap
        self.counts = np.zeros(cap + 1, dtype=np.int64)
        self.max = 0
        self.total = 0
        self.sum = 0

    def add_many(self, values: list[int]) -> None:
        if not values:
            return
        arr = np.asarray(values, dtype=np.int64)
        self.max = max(self.max, int(arr.max()))
        self.total += len(arr)
        self.sum += int(arr.sum())
        self.counts += np.bincount(np.minimum(arr, self.cap), minlength=self.cap + 1)

    def quantile(self, q: float) -> int:
        if not self.total:
            return 0
        target = q * (self.total - 1)
        cum = np.cumsum(self.counts)
        return min(int(np.searchsorted(cum, target, side="right")), self.max)

    def summary(self) -> dict[str, float | int]:
        if not self.total:
            return {"count": 0}
        nonzero = np.flatnonzero(self.counts)
        return {
            "count": self.total,
            "min": int(nonzero[0]),
            "mean": round(self.sum / self.total, 2),
            "p50": self.quantile(0.5),
            "p90": self.quantile(0.9),
            "p99": self.quantile(0.99),
            "max": self.max,
        }

    def bins(self, n: int = 20) -> list[dict[str, int]]:
        """``n`` equal-width bins from min to max, for the HTML bar chart."""
        if not self.total:
            return []
        low = int(np.flatnonzero(self.counts)[0])
        top = min(self.max, self.cap) + 1
        width = max(1, -(-(top - low) // n))
        out = []
        for lo in range(low, top, width):
            out.append({"from": lo, "to": lo + width - 1, "count": int(self.counts[lo : lo + width].sum())})
        return out

    def count_above(self, limit: int) -> int:
        return int(self.counts[limit + 1 :].sum()) if limit < self.cap else 0


class CappedCounter:
    """A Counter that keeps at most ``capacity`` keys (the rarest are pruned: approximate tail)."""

    def __init__(self, capacity: int = 2000) -> None:
        self.capacity = capacity
        self.counter: Counter[str] = Counter()
        self.pruned = False

    def add(self, key: str) -> None:
        self.counter[key] += 1
        if len(self.counter) > 2 * self.capacity:
            self.counter = Counter(dict(self.counter.most_common(self.capacity)))
            self.pruned = True

    def most_common(self, n: int) -> list[tuple[str, int]]:
        return self.counter.most_common(n)


class LabelStats:
    """Value counts per candidate categorical field; a field with too many values is dropped."""

    def __init__(self, max_values: int = 50) -> None:
        self.max_values = max_values
        self.fields: dict[str, Counter[str]] = {}
        self.rejected: set[str] = set()

    def add(self, values: dict[str, str]) -> None:
        for name, value in values.items():
            if name in self.rejected:
                continue
            counts = self.fields.get(name)
            if counts is None:
                counts = self.fields[name] = Counter()
            counts[value] += 1
            if len(counts) > self.max_values:
                self.rejected.add(name)
                del self.fields[name]

    def categorical(self, total: int) -> dict[str, Counter[str]]:
        """Fields seen in most examples, with at least two values repeated on average."""
        out = {}
        for name, counts in self.fields.items():
            seen = sum(counts.values())
            if seen >= max(2, total // 2) and 2 <= len(counts) <= max(2, seen // 3):
                out[name] = counts
        return out
