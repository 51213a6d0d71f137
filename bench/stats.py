"""Figures from the load generator's records, and plain-text tables of them, for both benchmarks' reports."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

#: A record: start and end (monotonic seconds), status (0: failed connection), agent or credential index, kind.
Row = list


def percentile(ordered: list[float], share: float) -> float | None:
    """The nearest-rank percentile of sorted values."""
    if not ordered:
        return None
    rank = max(1, math.ceil(len(ordered) * share))
    return ordered[rank - 1]


def stats(rows: list[Row], seconds: float | None) -> dict[str, Any]:
    """Count, rate, statuses and latency of some requests."""
    latencies = sorted(row[1] - row[0] for row in rows)
    statuses = Counter(row[2] for row in rows)
    ms = lambda value: None if value is None else round(value * 1000, 3)  # noqa: E731
    return {
        "requests": len(rows),
        "rps": round(len(rows) / seconds, 2) if seconds else None,
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "status_200": statuses.get(200, 0),
        "status_401": statuses.get(401, 0),
        "status_429": statuses.get(429, 0),
        "status_503": statuses.get(503, 0),
        "status_500": statuses.get(500, 0),
        "status_5xx_other_than_503": sum(n for status, n in statuses.items() if status >= 500 and status != 503),
        "failed_connections": statuses.get(0, 0),
        "latency_ms": {
            "p50": ms(percentile(latencies, 0.50)),
            "p95": ms(percentile(latencies, 0.95)),
            "p99": ms(percentile(latencies, 0.99)),
            "max": ms(latencies[-1] if latencies else None),
            "mean": ms(sum(latencies) / len(latencies) if latencies else None),
        },
    }


def number(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(columns: list[tuple[str, int, str]], cells: list[list[str]]) -> list[str]:
    """Lines of a table: a header of (title, width, alignment) columns, a rule, and one line per row of cells."""
    header = "  ".join(f"{title:{align}{width}}" for title, width, align in columns)
    lines = [header, "-" * len(header)]
    for row in cells:
        lines.append("  ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(row, columns, strict=True)))
    return lines
