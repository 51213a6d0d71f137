"""
Faults at the database's edge: a statement that fails, or something that happens just before
or after it, for tests that must not depend on which product function sends the statement.

Built on Django's `connection.execute_wrapper`, so it sees every statement the ORM sends on
this thread's connection, whichever module sends it:

    with failing(inserts(AuditEvent), DatabaseError("disk full")):
        ...  # any audit event written here fails, as a full disk would make it

    with on_statement(selects(Agent), after=lambda: ..., nth=1) as watch:
        ...  # runs the hook right after the first SELECT on the agent table
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.models import Model


def _table(model: type[Model], using: str) -> str:
    return re.escape(connections[using].ops.quote_name(model._meta.db_table))


def inserts(model: type[Model], *, using: str = DEFAULT_DB_ALIAS) -> re.Pattern[str]:
    """The INSERT statements into the model's table."""
    return re.compile(rf"^\s*INSERT INTO {_table(model, using)}", re.IGNORECASE)


def deletes(model: type[Model], *, using: str = DEFAULT_DB_ALIAS) -> re.Pattern[str]:
    """The DELETE statements on the model's table."""
    return re.compile(rf"^\s*DELETE FROM {_table(model, using)}", re.IGNORECASE)  # noqa: S608 (a pattern, never sent)


def updates(model: type[Model], *, using: str = DEFAULT_DB_ALIAS) -> re.Pattern[str]:
    """The UPDATE statements on the model's table."""
    return re.compile(rf"^\s*UPDATE {_table(model, using)}", re.IGNORECASE)


def selects(model: type[Model], *, using: str = DEFAULT_DB_ALIAS) -> re.Pattern[str]:
    """The SELECT statements that read the model's table first (FROM it, not only joining it)."""
    return re.compile(rf"^\s*SELECT\b.*?\bFROM {_table(model, using)}", re.IGNORECASE | re.DOTALL)


class StatementWatch:
    """
    What `on_statement` saw: `seen` holds every matching statement (SQL, parameters) in order,
    `acted` how many times the fault or hooks took effect.
    """

    def __init__(
        self,
        pattern: re.Pattern[str],
        *,
        fail: BaseException | Callable[[], BaseException] | None,
        before: Callable[[], object] | None,
        after: Callable[[], object] | None,
        nth: int | None,
    ) -> None:
        self.pattern = pattern
        self.fail = fail
        self.before = before
        self.after = after
        self.nth = nth
        self.seen: list[tuple[str, object]] = []
        self.acted = 0
        self._in_hook = False

    def __call__(self, execute, sql, params, many, context):
        # Statements that a hook sends itself (a competing writer, say) pass untouched and uncounted.
        if self._in_hook or not self.pattern.search(sql):
            return execute(sql, params, many, context)
        self.seen.append((sql, params))
        if self.nth is not None and len(self.seen) != self.nth:
            return execute(sql, params, many, context)
        self.acted += 1
        self._hook(self.before)
        if self.fail is not None:
            raise self.fail() if callable(self.fail) else self.fail
        result = execute(sql, params, many, context)
        self._hook(self.after)
        return result

    def _hook(self, hook: Callable[[], object] | None) -> None:
        if hook is None:
            return
        self._in_hook = True
        try:
            hook()
        finally:
            self._in_hook = False


@contextlib.contextmanager
def on_statement(
    pattern: re.Pattern[str] | str,
    *,
    fail: BaseException | Callable[[], BaseException] | None = None,
    before: Callable[[], object] | None = None,
    after: Callable[[], object] | None = None,
    nth: int | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> Iterator[StatementWatch]:
    """
    Within the block, act on the statements that match `pattern` (every one, or only the `nth`,
    counted from 1): run `before`, then raise `fail` instead of sending the statement, or send
    it and run `after`.
    """
    if isinstance(pattern, str):
        pattern = re.compile(pattern, re.IGNORECASE | re.DOTALL)
    watch = StatementWatch(pattern, fail=fail, before=before, after=after, nth=nth)
    with connections[using].execute_wrapper(watch):
        yield watch


def failing(
    pattern: re.Pattern[str] | str,
    error: BaseException | None = None,
    *,
    nth: int | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> contextlib.AbstractContextManager[StatementWatch]:
    """Within the block, make the statements that match `pattern` (or only the `nth`) raise `error`, unsent."""
    if error is None:
        error = DatabaseError(f"injected: {pattern.pattern if isinstance(pattern, re.Pattern) else pattern}")
    return on_statement(pattern, fail=error, nth=nth, using=using)
