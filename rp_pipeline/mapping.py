"""Map: validate raw records and turn Redis parent ids into Postgres ids.

Checks that are cheap in bulk happen here (unreadable records, missing required
fields, text that is not valid UTF-8 or holds NUL, numbers that are not numbers);
JSON and timestamps are validated by Postgres itself on load, and a value it
refuses is isolated there (see load.py). A record whose parent has no Postgres
id yet waits (pending) instead of being dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable

import pandas as pd

from .entities import BIGINT, FLOAT, TEXT, TIMESTAMPTZ, EntitySpec

# Lone surrogates are how invalid UTF-8 arrives (decoded with surrogateescape); Postgres text cannot hold NUL.
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
_SPECIAL_FLOATS = re.compile(r"^\s*[+-]?(nan|inf|infinity)\s*$", re.IGNORECASE)
_ISO_TEXT = r"\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d(?:\.\d{1,6})?)?)?"
_ISO = re.compile(_ISO_TEXT)
_ID = re.compile("[0-9]{1,18}")
_ID_COLUMN = re.compile("[0-9]{1,18}(?:\x01[0-9]{1,18})*")
_ISO_COLUMN = re.compile(f"{_ISO_TEXT}(?:\x01{_ISO_TEXT})*")

Resolver = Callable[[str, Iterable[int]], dict[int, int]]


def raw_record(row: pd.Series, spec: EntitySpec) -> str:
    """The record as read from Redis, by Redis field name, for the rejected-records table (escaped, not altered)."""
    if "_member" in row and isinstance(row["_member"], str):
        return json.dumps({"member": row["_member"]}, ensure_ascii=True)
    names = {p.column: p.field for p in spec.parents} | {c.name: c.redis_field for c in spec.columns}
    data = {names.get(k, k): v for k, v in row.items() if not k.startswith("_") and isinstance(v, str)}
    return json.dumps(data, ensure_ascii=True)


def _reject(spec: EntitySpec, frame: pd.DataFrame, mask: pd.Series, reason) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows off with a reason each: (kept, rejected[_key, raw, reason]).

    `reason` is a string, or a function of the rejected rows returning one reason per row.
    """
    if not mask.any():
        return frame, _empty_rejected()
    bad = frame[mask]
    rejected = pd.DataFrame({
        "_key": bad["_key"].to_numpy(),
        "raw": [raw_record(row, spec) for _, row in bad.iterrows()],
        "reason": list(reason(bad)) if callable(reason) else reason,
    })
    return frame[~mask], rejected


def _empty_rejected() -> pd.DataFrame:
    return pd.DataFrame({"_key": pd.Series(dtype=object), "raw": pd.Series(dtype=object),
                         "reason": pd.Series(dtype=object)})


def _has_bad_text(values: pd.Series) -> pd.Series:
    """Per-row flag; scans the whole column as one string first so the clean case costs one regex pass."""
    present = values.dropna()
    if not len(present) or not _BAD_TEXT.search("\x01".join(present.tolist())):
        return pd.Series(False, index=values.index)
    return values.map(lambda v: isinstance(v, str) and bool(_BAD_TEXT.search(v)))


def _not_a_number(values: pd.Series) -> pd.Series:
    given = values.notna() & (values != "")
    parsed = pd.to_numeric(values.where(given), errors="coerce")
    suspicious = given & parsed.isna()
    if suspicious.any():
        suspicious &= ~values.where(suspicious, "").astype(str).str.match(_SPECIAL_FLOATS)
    return suspicious


def _not_a_timestamp(values: pd.Series) -> pd.Series:
    """ISO-8601 only: Postgres would also take words like 'now' or 'epoch', which are not what was logged."""
    given = values.dropna()
    given = given[given != ""]
    if not len(given) or _ISO_COLUMN.fullmatch("\x01".join(given.tolist())):
        return pd.Series(False, index=values.index)
    return values.map(lambda v: isinstance(v, str) and v != "" and not _ISO.fullmatch(v))


def _not_an_id(values: pd.Series) -> pd.Series:
    """Per-row flag for ids that are not 1-18 ASCII digits; one regex over the column when all are fine."""
    given = values.dropna()
    if not len(given) or _ID_COLUMN.fullmatch("\x01".join(given.tolist())):
        return pd.Series(False, index=values.index)
    return values.map(lambda v: isinstance(v, str) and not _ID.fullmatch(v))


def validate(spec: EntitySpec, frame: pd.DataFrame,
             incomplete: list[pd.DataFrame] | None = None) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Drop records that cannot load, each with a reason naming the field.

    With `incomplete` given, records missing a required field go there (_key, reason) instead of
    being rejected: a writer that sets fields with several commands may not have finished yet.
    """
    rejected = []

    def reject(mask, reason, waits=False):
        nonlocal frame
        frame, bad = _reject(spec, frame, mask, reason)
        (incomplete if waits and incomplete is not None else rejected).append(
            bad[["_key", "reason"]] if waits and incomplete is not None else bad)

    reject(frame["_error"].notna(), lambda bad: bad["_error"])
    for column in spec.columns:
        name, field = column.name, column.redis_field
        if column.required:
            reject(frame[name].isna() | (frame[name] == ""), f"missing field {field!r}", waits=True)
        reject(_has_bad_text(frame[name]), f"field {field!r} is not valid UTF-8 text (or contains a NUL byte)")
        if column.type in (BIGINT, FLOAT):
            reject(_not_a_number(frame[name]),
                   lambda bad, name=name, field=field: [f"field {field!r} is not a number: {v!r:.80}" for v in bad[name]])
        elif column.type == TIMESTAMPTZ:
            reject(_not_a_timestamp(frame[name]),
                   lambda bad, name=name, field=field: [f"field {field!r} is not an ISO-8601 timestamp: {v!r:.80}"
                                                        for v in bad[name]])
    for parent in spec.parents:
        values = frame[parent.column]
        absent = values.isna() | (values == "")
        if parent.optional:
            absent |= values == "0"
        else:
            reject(absent, f"missing field {parent.field!r}")
            values = frame[parent.column]
            absent = pd.Series(False, index=frame.index)
        reject(~absent & _not_an_id(values), f"field {parent.field!r} is not an id")
    return frame, rejected


def map_parent_ids(spec: EntitySpec, frame: pd.DataFrame, resolve: Resolver) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Replace each parent's Redis id by its Postgres id; rows whose parent is unknown wait."""
    waiting = []
    frame = frame.copy()
    for parent in spec.parents:
        raw = frame[parent.column]
        given = raw.notna() & (raw != "") & ~(parent.optional & (raw == "0"))
        redis_ids = pd.to_numeric(raw.where(given), errors="coerce").astype("Int64")
        known = resolve(parent.entity, sorted(set(redis_ids.dropna().astype(int).tolist())))
        pg_ids = redis_ids.map(known, na_action="ignore").astype("Int64")
        unknown = given & pg_ids.isna()
        if unknown.any():
            waiting.append(pd.DataFrame({
                "_key": frame.loc[unknown, "_key"].to_numpy(),
                "reason": [f"{parent.entity} Redis id {int(i)} is not in Postgres" for i in redis_ids[unknown]],
            }))
        frame[parent.column] = pg_ids
        frame = frame[~unknown]
    waiting_frame = pd.concat(waiting, ignore_index=True) if waiting else pd.DataFrame(
        {"_key": pd.Series(dtype=object), "reason": pd.Series(dtype=object)})
    return frame, waiting_frame


def cast_sql(column_type: str, ref: str, unset: str | None = None) -> str:
    """SQL turning a raw Redis string into the column's value: '' and the 'not set' value become NULL."""
    value = f"NULLIF({ref}, '')"
    if unset is not None:
        value = f"NULLIF({value}, '{unset}')"
    if column_type == TEXT:
        return value
    if column_type == "timestamptz":
        return f"({value}::timestamp AT TIME ZONE 'UTC')"
    if column_type == FLOAT and unset is not None:
        # '0', '0.0' and '0e0' all mean "not given"
        return f"NULLIF(NULLIF({ref}, '')::double precision, {unset})"
    return f"{value}::{column_type}"
