"""Plain-text and Markdown tables for CLI summaries and node reports."""
from __future__ import annotations

from typing import Sequence


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
               markdown: bool = False) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row):
        body = " | ".join(c.ljust(w) for c, w in zip(row, widths))
        return f"| {body} |" if markdown else body

    sep = ("|" + "|".join("-" * (w + 2) for w in widths) + "|") if markdown \
        else "-+-".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])
