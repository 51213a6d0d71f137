"""A table kept in a process's memory, bounded: the order of writes, the oldest dropped when it is full."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any


def keep_bounded(table: dict, key: Any, value: Any, limit: int, *, stale: Callable[[Any], bool] | None = None) -> None:
    """
    Put `key: value` in `table` as its newest entry (a dict's order is the order of writes here).

    A table that holds `limit` entries first drops those whose value `stale` says is of no use,
    then, if it is still full, its oldest eighth. The caller holds its table's lock.
    """
    table.pop(key, None)  # then added last
    if len(table) >= limit:
        if stale is not None:
            for old in [name for name, kept in table.items() if stale(kept)]:
                del table[old]
        if len(table) >= limit:
            for oldest in list(itertools.islice(table, max(1, limit // 8))):
                del table[oldest]
    table[key] = value
