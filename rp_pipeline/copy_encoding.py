"""COPY text format: columns of strings → the bytes `COPY ... FROM STDIN` reads.

Values are Redis's raw strings (None is NULL); Postgres converts them as it inserts, so the
only work here is escaping, done in bulk a column at a time.
"""

from __future__ import annotations

import pandas as pd

_SPECIALS = ("\\", "\t", "\n", "\r")


def copy_text(columns: list[list]) -> bytes:
    """COPY text-format rows from columns of str/None, escaping in bulk (one pass per column)."""
    escaped = []
    for values in columns:
        if None in values:
            escaped.append(["\\N" if v is None else _escape(v) for v in values])
            continue
        blob = "\x00".join(values)  # validated text never holds NUL, so it can separate values
        if any(c in blob for c in _SPECIALS):
            blob = (
                blob.replace("\\", "\\\\")
                .replace("\t", "\\t")
                .replace("\n", "\\n")
                .replace("\r", "\\r")
            )
        escaped.append(blob.split("\x00") if values else [])
    if not escaped or not escaped[0]:
        return b""
    rows = list(map("\t".join, zip(*escaped)))
    del escaped
    rows.append("")  # the last newline, without one more copy of the whole text
    text = "\n".join(rows)
    del rows  # wide records: at most two copies of the chunk's text are alive at once
    return text.encode("utf-8")


def _escape(value: str) -> str:
    if any(c in value for c in _SPECIALS):
        return (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return value


def as_text(series: pd.Series) -> list:
    """A column as a list of str/None, what `copy_text` takes (numbers as their text)."""
    if series.dtype == object:
        return series.tolist()
    missing = series.isna()
    text = (
        series.astype(str).tolist()
        if not missing.any()
        else series.astype(object).astype(str).tolist()
    )
    return text if not missing.any() else [None if m else t for t, m in zip(text, missing.tolist())]
