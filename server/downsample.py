"""Min/max downsampling of a metric series (keeps spikes that averaging would hide).

The reference algorithm: the API runs the same buckets in SQL (server/crud.py), and the tests check
that both backends return exactly what this function returns.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

P = TypeVar("P", bound=Sequence)  # a point: (step, value, ...) ordered by step


def minmax_buckets(points: Sequence[P], max_points: int) -> list[P]:
    """At most `max_points` points: steps split into max_points // 2 equal ranges, each keeping its min and max.

    `points` must be ordered by step. A bucket whose min and max are the same point keeps it once;
    the kept points stay ordered by step. Ties keep the earliest point.

    >>> minmax_buckets([(0, 1.0), (1, 5.0), (2, 3.0), (3, -2.0)], 2)
    [(1, 5.0), (3, -2.0)]
    """
    if max_points < 2:
        raise ValueError("max_points must be at least 2 (each bucket keeps a min and a max)")
    if len(points) <= max_points:
        return list(points)
    buckets = max_points // 2
    lo = points[0][0]
    span = points[-1][0] - lo + 1
    out: list[P] = []
    current = -1
    lo_p = hi_p = points[0]
    for p in points:
        b = (p[0] - lo) * buckets // span
        if b != current:
            if current >= 0:
                _flush(out, lo_p, hi_p)
            current, lo_p, hi_p = b, p, p
        else:
            if p[1] < lo_p[1]:
                lo_p = p
            if p[1] > hi_p[1]:
                hi_p = p
    _flush(out, lo_p, hi_p)
    return out


def _flush(out: list, lo_p: Sequence, hi_p: Sequence) -> None:
    if lo_p is hi_p:
        out.append(lo_p)
    elif lo_p[0] < hi_p[0]:
        out.extend((lo_p, hi_p))
    else:
        out.extend((hi_p, lo_p))
