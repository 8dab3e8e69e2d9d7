"""Printing benchmark results as plain-text tables."""

from __future__ import annotations

from collections.abc import Sequence

Table = tuple[str, list[str], list[list[str]]]


def render(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [title, line]
    out.append(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    out.append(line)
    out += [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out) + "\n"
