"""A small evaluator for the subset of KQL the alert rules and the workbook use, for tests.

It runs a query's pipeline (`traces`/`requests`/`datatable`/`union` sources; `where`, `extend`,
`project`, `summarize`, `join kind=leftouter`, `order by`, `take`) over rows the test renders, so
a test can prove that a query selects real event lines and reads fields they carry. Member
access on a dynamic value (`ev.connectionId`) that finds no such field is recorded in `missing`:
that is what a renamed field looks like in Application Insights (an empty column, no error).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<span>\d+(?:\.\d+)?(?:ms|d|h|m|s)\b)|(?P<num>\d+(?:\.\d+)?)'
    r"|(?P<id>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>==|!=|<=|>=|!has|!in|[<>+\-*/(),=.\[\]|{}:]))"
)
_SPAN_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_COMPARE = ("==", "!=", "<", "<=", ">", ">=", "startswith", "has", "!has", "in", "!in")


class KqlError(ValueError):
    """The query uses something this subset does not know, or names an unknown column."""


@dataclass
class Table:
    columns: list[str]
    rows: list[dict[str, Any]]


@dataclass
class Evaluator:
    tables: dict[str, Table]
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    missing: set[str] = field(default_factory=set)

    def run(self, query: str) -> Table:
        return _Parser(_tokens(query), self).pipeline()


def _tokens(text: str) -> list[tuple[str, Any]]:
    text = text.replace("{TimeRange:grain}", "1h")
    out: list[tuple[str, Any]] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if not match:
            raise KqlError(f"cannot read {text[position : position + 20]!r}")
        position = match.end()
        kind = match.lastgroup
        value = match.group(kind or "")
        if kind == "str":
            out.append(("lit", json.loads(value)))
        elif kind == "span":
            number, unit = re.fullmatch(r"([\d.]+)(ms|d|h|m|s)", value).groups()  # type: ignore[union-attr]
            out.append(("lit", timedelta(seconds=float(number) * _SPAN_UNITS[unit])))
        elif kind == "num":
            out.append(("lit", float(value) if "." in value else int(value)))
        else:
            out.append((kind or "", value))
    out.append(("end", None))
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, Any]], ev: Evaluator) -> None:
        self.tokens = tokens
        self.at = 0
        self.ev = ev

    # ----------------------------------------------------------------- token helpers

    def peek(self, offset: int = 0) -> tuple[str, Any]:
        return self.tokens[self.at + offset]

    def take(self) -> tuple[str, Any]:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def accept(self, value: str) -> bool:
        if self.peek()[1] == value and self.peek()[0] in ("op", "id"):
            self.at += 1
            return True
        return False

    def expect(self, value: str) -> None:
        if not self.accept(value):
            raise KqlError(f"expected {value!r}, found {self.peek()[1]!r}")

    def name(self) -> str:
        kind, value = self.take()
        if kind != "id":
            raise KqlError(f"expected a name, found {value!r}")
        return str(value)

    # ----------------------------------------------------------------- pipeline

    def pipeline(self) -> Table:
        table = self.source()
        while self.accept("|"):
            table = self.operator(table)
        return table

    def source(self) -> Table:
        name = self.name()
        if name == "datatable":
            self.expect("(")
            column = self.name()
            self.expect(":")
            self.name()
            self.expect(")")
            self.expect("[")
            rows = []
            while not self.accept("]"):
                rows.append({column: self.take()[1]})
                self.accept(",")
            return Table([column], rows)
        if name == "union":
            parts = [self.subquery()]
            while self.accept(","):
                parts.append(self.subquery())
            columns = list(dict.fromkeys(c for p in parts for c in p.columns))
            return Table(columns, [{c: r.get(c) for c in columns} for p in parts for r in p.rows])
        if name not in self.ev.tables:
            raise KqlError(f"unknown table {name}")
        table = self.ev.tables[name]
        return Table(list(table.columns), [dict(r) for r in table.rows])

    def subquery(self) -> Table:
        self.expect("(")
        table = self.pipeline()
        self.expect(")")
        return table

    def operator(self, table: Table) -> Table:
        op = self.name()
        if op == "where":
            node = self.expression()
            return Table(table.columns, [r for r in table.rows if self.ev_value(node, r) is True])
        if op in ("extend", "project"):
            pairs = self.assignments()
            rows = []
            for row in table.rows:
                new = dict(row) if op == "extend" else {}
                for column, node in pairs:
                    new[column] = self.ev_value(node, row)
                rows.append(new)
            named = [c for c, _ in pairs]
            for column, node in pairs:  # a bare column must exist even over no rows
                if node == ("col", column) and column not in table.columns:
                    raise KqlError(f"unknown column {column}")
            columns = (
                table.columns + [c for c in named if c not in table.columns] if op == "extend" else named
            )
            return Table(columns, rows)
        if op == "summarize":
            return self.summarize(table)
        if op == "join":
            self.expect("kind")
            self.expect("=")
            if self.name() != "leftouter":
                raise KqlError("only join kind=leftouter")
            right = self.subquery()
            self.expect("on")
            key = self.name()
            renamed = {c: (c + "1" if c in table.columns else c) for c in right.columns}
            rows = []
            for row in table.rows:
                matches = [r for r in right.rows if r.get(key) == row.get(key)]
                for match in matches or [dict.fromkeys(right.columns)]:
                    rows.append({**row, **{renamed[c]: v for c, v in match.items()}})
            return Table(table.columns + list(renamed.values()), rows)
        if op == "order":
            self.expect("by")
            column = self.name()
            if column not in table.columns:
                raise KqlError(f"unknown column {column}")
            self.accept("desc") or self.accept("asc")
            return table
        if op == "take":
            count = self.take()[1]
            return Table(table.columns, table.rows[: int(count)])
        raise KqlError(f"operator {op} is not in the subset")

    def assignments(self) -> list[tuple[str, Any]]:
        pairs = []
        while True:
            if self.peek()[0] == "id" and self.peek(1) == ("op", "="):
                column = self.name()
                self.take()
                pairs.append((column, self.expression()))
            else:
                node = self.expression()
                pairs.append((_default_name(node), node))
            if not self.accept(","):
                return pairs

    def summarize(self, table: Table) -> Table:
        aggregates = self.assignments()
        keys = self.assignments() if self.accept("by") else []
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for row in table.rows:
            key = tuple(self.ev_value(node, row) for _, node in keys)
            groups.setdefault(key, []).append(row)
        columns = [c for c, _ in keys]
        rows = []
        for key, members in groups.items():
            out = dict(zip(columns, key, strict=True))
            for column, node in aggregates:
                out.update(self.aggregate(column, node, members))
            rows.append(out)
        for column, node in aggregates:
            columns += list(self.aggregate(column, node, [dict.fromkeys(table.columns)]).keys())
        return Table(list(dict.fromkeys(columns)), rows)

    def aggregate(self, column: str, node: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if node[0] != "call":
            raise KqlError("summarize needs an aggregation")
        name, args = node[1], node[2]
        values = [[self.ev_value(a, r) for a in args] for r in rows]
        if name == "count":
            return {column: len(rows)}
        if name == "countif":
            return {column: sum(1 for v in values if v[0] is True)}
        if name == "dcount":
            return {column: len({json.dumps(v[0], default=str) for v in values})}
        if name in ("max", "min"):
            present = [v[0] for v in values if v[0] is not None]
            return {column: (max if name == "max" else min)(present) if present else None}
        if name == "arg_max":
            best = max(range(len(rows)), key=lambda i: (values[i][0] is not None, values[i][0] or 0))
            names = [_default_name(a) for a in args]
            return {n: values[best][i] for i, n in enumerate(names)}
        raise KqlError(f"aggregation {name} is not in the subset")

    # ----------------------------------------------------------------- expressions

    def expression(self) -> Any:
        return self.binary(0)

    _LEVELS: tuple[tuple[str, ...], ...] = (("or",), ("and",), _COMPARE, ("+", "-"), ("*", "/"))

    def binary(self, level: int) -> Any:
        if level == len(self._LEVELS):
            return self.postfix()
        node = self.binary(level + 1)
        while self.peek()[1] in self._LEVELS[level] and self.peek()[0] in ("op", "id"):
            op = self.take()[1]
            if op in ("in", "!in"):
                self.expect("(")
                items = [self.expression()]
                while self.accept(","):
                    items.append(self.expression())
                self.expect(")")
                node = ("in", node, items, op == "!in")
            else:
                node = ("bin", op, node, self.binary(level + 1))
        return node

    def postfix(self) -> Any:
        node = self.primary()
        while self.accept("."):
            node = ("member", node, self.name())
        return node

    def primary(self) -> Any:
        kind, value = self.take()
        if kind == "lit":
            return ("lit", value)
        if value == "(":
            node = self.expression()
            self.expect(")")
            return node
        if kind == "id":
            if self.accept("("):
                args = []
                if not self.accept(")"):
                    args.append(self.expression())
                    while self.accept(","):
                        args.append(self.expression())
                    self.expect(")")
                return ("call", value, args)
            if value in ("true", "false"):
                return ("lit", value == "true")
            return ("col", value)
        raise KqlError(f"unexpected {value!r}")

    def ev_value(self, node: Any, row: dict[str, Any]) -> Any:
        kind = node[0]
        if kind == "lit":
            return node[1]
        if kind == "col":
            if node[1] not in row:
                raise KqlError(f"unknown column {node[1]}")
            return row[node[1]]
        if kind == "member":
            base = self.ev_value(node[1], row)
            if not isinstance(base, dict) or node[2] not in base:
                self.ev.missing.add(node[2])
                return None
            return base[node[2]]
        if kind == "in":
            value = self.ev_value(node[1], row)
            found = value in [self.ev_value(i, row) for i in node[2]]
            return found != node[3]
        if kind == "bin":
            return _binary(node[1], self.ev_value(node[2], row), self.ev_value(node[3], row))
        if kind == "call":
            function = _FUNCTIONS.get(node[1])
            if function is None:
                raise KqlError(f"function {node[1]} is not in the subset")
            return function(self.ev, *[self.ev_value(a, row) for a in node[2]])
        raise KqlError(f"cannot evaluate {node!r}")


def _default_name(node: Any) -> str:
    if node[0] == "col":
        return str(node[1])
    if node[0] == "call":
        return f"{node[1]}_"
    raise KqlError("an expression needs a name (name = expression)")


def _binary(op: str, left: Any, right: Any) -> Any:
    if op == "and":
        return left is True and right is True
    if op == "or":
        return left is True or right is True
    if op in ("startswith", "has", "!has"):
        text, part = str(left or "").lower(), str(right).lower()
        if op == "startswith":
            return text.startswith(part)
        return (part in text) == (op == "has")
    if left is None or right is None:
        return None if op not in ("==", "!=") else (left == right) == (op == "==")
    operations: dict[str, Callable[[Any, Any], Any]] = {
        "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
        "+": lambda a, b: a + b,
        "-": lambda a, b: a - b,
        "*": lambda a, b: a * b,
        "/": lambda a, b: a // b if isinstance(a, int) and isinstance(b, int) else a / b,
    }
    return operations[op](left, right)


def _todatetime(_: Evaluator, value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _toint(_: Evaluator, value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _tostring(_: Evaluator, value: Any) -> str:
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "parse_json": lambda _, v: json.loads(v) if isinstance(v, str) else v,
    "substring": lambda _, v, start: str(v)[start:],
    "tostring": _tostring,
    "todatetime": _todatetime,
    "toint": _toint,
    "isempty": lambda _, v: v is None or v == "",
    "isnotempty": lambda _, v: not (v is None or v == ""),
    "isnull": lambda _, v: v is None,
    "strcat": lambda _, *parts: "".join(_tostring(_, p) for p in parts),
    "now": lambda ev: ev.now,
    "ago": lambda ev, span: ev.now - span,
    "bin": lambda _, v, span: v,
    "case": lambda _, *a: next((a[i + 1] for i in range(0, len(a) - 1, 2) if a[i] is True), a[-1]),
}
