"""A small HDR-style latency histogram: log-bucketed, mergeable, JSON-friendly.

Values are non-negative integers (the bench records nanoseconds).  Values below
``2 ** (SUB_BITS + 1)`` get a bucket each; above that every power of two is cut
into ``2 ** SUB_BITS`` equal buckets, so a bucket's width is at most
``1 / 2 ** SUB_BITS`` of its values (0.8 % with the default 7 bits) whatever the
magnitude.  A percentile is reported as the highest value its bucket can hold
(as HdrHistogram does), clamped to the exact maximum seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

SUB_BITS = 7


class Histogram:
    """Counts of values in log-linear buckets, plus exact count, min, max and sum."""

    __slots__ = ("sub_bits", "counts", "count", "min", "max", "total", "_exact")

    def __init__(self, sub_bits: int = SUB_BITS) -> None:
        if not 1 <= sub_bits <= 16:
            raise ValueError(f"sub_bits must be in 1..16, got {sub_bits}")
        self.sub_bits = sub_bits
        self.counts: dict[int, int] = {}
        self.count = 0
        self.min = 0
        self.max = 0
        self.total = 0
        self._exact = 1 << (sub_bits + 1)

    # recording

    def index(self, value: int) -> int:
        """The bucket of ``value``."""
        if value < self._exact:
            return value
        shift = value.bit_length() - self.sub_bits - 1
        return (shift << self.sub_bits) + (value >> shift)

    def bounds(self, index: int) -> tuple[int, int]:
        """The lowest and highest value bucket ``index`` holds."""
        if index < self._exact:
            return index, index
        shift = (index >> self.sub_bits) - 1
        mantissa = index - (shift << self.sub_bits)
        return mantissa << shift, ((mantissa + 1) << shift) - 1

    def record(self, value: int, n: int = 1) -> None:
        """Count ``value`` (clamped at 0) ``n`` times."""
        value = int(value)
        if value < 0:
            value = 0
        if value < self._exact:
            i = value
        else:
            shift = value.bit_length() - self.sub_bits - 1
            i = (shift << self.sub_bits) + (value >> shift)
        counts = self.counts
        counts[i] = counts.get(i, 0) + n
        if self.count == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.count += n
        self.total += value * n

    def record_many(self, values: Iterable[int]) -> None:
        for v in values:
            self.record(v)

    def merge(self, other: Histogram) -> None:
        if other.sub_bits != self.sub_bits:
            raise ValueError("cannot merge histograms of different precision")
        if other.count == 0:
            return
        counts = self.counts
        for i, c in other.counts.items():
            counts[i] = counts.get(i, 0) + c
        if self.count == 0 or other.min < self.min:
            self.min = other.min
        if other.max > self.max:
            self.max = other.max
        self.count += other.count
        self.total += other.total

    def reset(self) -> None:
        self.counts.clear()
        self.count = self.min = self.max = self.total = 0

    # reading

    def percentile(self, p: float) -> int:
        """The smallest bucket top that at least ``p`` percent of the values do not exceed.

        ``p`` is in [0, 100]; 0 gives the minimum, 100 the maximum.  0 when empty.
        """
        if not 0 <= p <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {p}")
        if self.count == 0:
            return 0
        if p == 0:
            return self.min
        rank = max(1, math.ceil(p / 100.0 * self.count))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                top = self.bounds(i)[1]
                return max(self.min, min(top, self.max))
        return self.max

    def percentiles(self, ps: Iterable[float]) -> dict[float, int]:
        return {p: self.percentile(p) for p in ps}

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    # serialization (between processes and into the JSON report)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sub_bits": self.sub_bits,
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "total": self.total,
            "buckets": [[i, c] for i, c in sorted(self.counts.items())],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Histogram:
        h = cls(int(d.get("sub_bits", SUB_BITS)))
        h.counts = {int(i): int(c) for i, c in d["buckets"]}
        h.count = int(d["count"])
        h.min = int(d["min"])
        h.max = int(d["max"])
        h.total = int(d["total"])
        if sum(h.counts.values()) != h.count:
            raise ValueError("histogram buckets do not add up to its count")
        return h

    def __repr__(self) -> str:
        return f"<Histogram n={self.count} min={self.min} max={self.max}>"
