"""
Querysets compiled to SQL once per database connection, for the reads every token request makes.

Django compiles a queryset's SQL anew each time it runs it: for the credential lookup of
the token endpoint (a join of two tables of a dozen columns each) compiling took about as
much CPU as sending the query and reading its row. A CompiledQuery runs the same queryset, built once with marker
values, with the values of each call put in the markers' places. Only the SQL text and the
plan for turning rows into objects are kept; each call executes through the connection's
own cursor (so query logging, execute_wrappers and transactions see it as any other query)
and builds model instances, select_related ones and annotations included, the way QuerySet
iteration does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from django.db import connections, router
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators

#: The attribute of a database connection that holds its plans, by CompiledQuery.
PLANS_ATTRIBUTE = "_agentidp_compiled_query_plans"


@dataclasses.dataclass(frozen=True)
class _Plan:
    """One connection's SQL for the query, and how a row becomes a model instance."""

    sql: str
    params: tuple[Any, ...]  # the compiled parameters, with the marker of argument i as _Argument(i)
    converters: tuple[tuple[int, list[Callable], Any], ...]  # (column, its converters, its expression)
    model: type[Model]
    fields: slice
    init_list: list[str]
    related: list[Any]
    annotations: tuple[tuple[str, int], ...]  # (attribute, column)


@dataclasses.dataclass(frozen=True)
class _Argument:
    index: int


class CompiledQuery:
    """
    A queryset shape compiled once per connection and run with new values: `build(*values)`
    returns a queryset of `model`; calling the CompiledQuery returns the list of its objects.

    `build` must use each value once, as it is, in an exact comparison with a text column
    (`filter(client_id=value)`), and depend on nothing else that changes (no `now()`): the
    values are the only part of the SQL that is not kept. A shape that transforms a value
    (`icontains`) is refused when first compiled.
    """

    def __init__(self, model: type[Model], build: Callable[..., QuerySet], *, arguments: int = 1) -> None:
        self.model = model
        self.build = build
        self.arguments = arguments
        self._markers = [f"\x00compiled-query-marker:{id(self)}:{i}" for i in range(arguments)]

    def __call__(self, *values: str) -> list[Model]:
        if len(values) != self.arguments:
            raise TypeError(f"This query takes {self.arguments} values, not {len(values)}.")
        using = router.db_for_read(self.model)
        connection = connections[using]
        # Kept on the connection (each thread has its own), and gone with it: a plan's converters
        # may be the connection's own methods.
        plans = connection.__dict__.setdefault(PLANS_ATTRIBUTE, {})
        plan = plans.get(self)
        if plan is None:
            plan = plans[self] = self._compile(self.build(*self._markers).using(using))
        params = [values[param.index] if isinstance(param, _Argument) else param for param in plan.params]
        with connection.cursor() as cursor:
            cursor.execute(plan.sql, params)
            rows = cursor.fetchall()
        objects = []
        for row in rows:
            if plan.converters:
                row = list(row)
                for position, converters, expression in plan.converters:
                    for converter in converters:
                        row[position] = converter(row[position], expression, connection)
            obj = plan.model.from_db(using, plan.init_list, row[plan.fields])
            for populator in plan.related:
                populator.populate(row, obj)
            for attribute, position in plan.annotations:
                setattr(obj, attribute, row[position])
            objects.append(obj)
        return objects

    def _compile(self, queryset: QuerySet) -> _Plan:
        markers = self._markers
        compiler = queryset.query.get_compiler(using=queryset.db)
        sql, compiled_params = compiler.as_sql()
        params, found = [], []
        for param in compiled_params:
            if param in markers:
                found.append(markers.index(param))
                params.append(_Argument(markers.index(param)))
            elif isinstance(param, str) and "compiled-query-marker" in param:
                raise ValueError("A CompiledQuery's values must be compared as they are, not transformed.")
            else:
                params.append(param)
        if sorted(found) != list(range(self.arguments)):
            raise ValueError("A CompiledQuery's queryset must use each of its values exactly once.")
        if queryset._known_related_objects or queryset._prefetch_related_lookups:
            raise ValueError("A CompiledQuery runs plain and select_related querysets, with annotations, only.")
        klass_info = compiler.klass_info
        select_fields = klass_info["select_fields"]
        fields = slice(select_fields[0], select_fields[-1] + 1)
        converters = compiler.get_converters([column for column, *_ in compiler.select[: compiler.col_count]])
        return _Plan(
            sql=sql,
            params=tuple(params),
            converters=tuple((position, functions, column) for position, (functions, column) in converters.items()),
            model=klass_info["model"],
            fields=fields,
            init_list=[column.target.attname for column, *_ in compiler.select[fields]],
            related=get_related_populators(klass_info, compiler.select, queryset.db),
            annotations=tuple(compiler.annotation_col_map.items()),
        )
