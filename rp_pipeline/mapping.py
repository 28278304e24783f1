"""Map: validate raw records, normalize the values Postgres would misread, map Redis parent ids.

Checks that are cheap in bulk happen here (unreadable records, missing required
fields, text that is not valid UTF-8 or holds NUL, numbers that are not numbers,
text that is not an ISO-8601 timestamp); JSON and the calendar itself are
validated by Postgres on load, and a value it refuses is isolated there (see
load.py). A record whose parent has no Postgres id yet waits (pending) instead of
being dropped.

Two rewrites make values Postgres cannot read as meant loadable: `validate` turns
the ISO-8601 forms Postgres's parser lacks (week dates, basic format, a comma
decimal, ...) into the same instant in UTC, and `null_non_finite_json` turns the
NaN/Infinity that Python's `json.dumps` writes into JSON null. Each costs one scan
of the joined column when there is nothing to rewrite. The sync, reconciliation
and retention all map through here, so they compare the same values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal

import pandas as pd

from .entities import BIGINT, FLOAT, JSONB, TEXT, TIMESTAMPTZ, EntitySpec

# Lone surrogates are how invalid UTF-8 arrives (decoded with surrogateescape); Postgres text cannot hold NUL.
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
_SPECIAL_FLOATS = re.compile(r"^\s*[+-]?(nan|inf|infinity)\s*$", re.IGNORECASE)
_ID = re.compile("[0-9]{1,18}")
_ID_COLUMN = re.compile("[0-9]{1,18}(?:\x01[0-9]{1,18})*")

# ISO-8601 timestamps that Postgres's own parser reads exactly as ISO means them (its TimeZone is UTC
# in the sync's transactions, so a naive one is UTC): they travel as they are. Ranges are checked here
# so that a word or '2025-13-45' is rejected before the load; Postgres still refuses February 30.
_MONTH, _DAY = "(?:0[1-9]|1[0-2])", "(?:0[1-9]|[12][0-9]|3[01])"
_HOUR, _MIN, _SEC = "(?:[01][0-9]|2[0-4])", "[0-5][0-9]", "(?:[0-5][0-9]|60)"
_PG_ISO_TEXT = (
    f"[0-9]{{4}}-{_MONTH}-{_DAY}(?:[Tt ]{_HOUR}:{_MIN}(?::{_SEC}(?:\\.[0-9]+)?)?"
    f"(?:[Zz]|[+-](?:0[0-9]|1[0-5])(?::?{_MIN})?)?)?"
)
_PG_ISO = re.compile(_PG_ISO_TEXT, re.ASCII)
_PG_ISO_COLUMN = re.compile(f"{_PG_ISO_TEXT}(?:\x01{_PG_ISO_TEXT})*", re.ASCII)
# Every other ISO-8601 form of a date with an optional time of day and offset: basic format, week and
# ordinal dates, reduced precision ('T10'), a decimal fraction on the last time unit (',' or '.'),
# offsets with seconds (Python's isoformat() writes those) or beyond Postgres's ±15:59.
_ISO_ANY = re.compile(
    r"(?P<year>[0-9]{4})(?P<sep>-?)(?:(?P<month>[0-9]{2})(?P=sep)(?P<day>[0-9]{2})|W(?P<week>[0-9]{2})(?P=sep)"
    r"(?P<weekday>[1-7])|(?P<yday>[0-9]{3}))"
    r"(?:[Tt ](?P<hour>[0-9]{2})(?::?(?P<minute>[0-9]{2})(?::?(?P<second>[0-9]{2}))?)?(?:[.,](?P<fraction>[0-9]+))?"
    r"(?P<offset>[Zz]|(?P<sign>[+-])(?P<oh>[0-9]{2})"
    r"(?::?(?P<om>[0-9]{2})(?::?(?P<os>[0-9]{2})(?:[.,](?P<of>[0-9]+))?)?)?)?)?",
    re.ASCII,
)

# Python's json.dumps writes these for non-finite floats; JSON (and jsonb) has no such tokens. A JSON
# string is matched whole first, so "NaN" inside a string is never touched.
_JSON_NON_FINITE = re.compile(r'"(?:[^"\\]|\\.)*"|(-?Infinity|NaN)', re.DOTALL)

Resolver = Callable[[str, Iterable[int]], dict[int, int]]


def raw_record(row: pd.Series, spec: EntitySpec) -> str:
    """The record as read from Redis, by Redis field name, for the rejected-records table (escaped, not altered)."""
    if "_member" in row and isinstance(row["_member"], str):
        return json.dumps({"member": row["_member"]}, ensure_ascii=True)
    names = {p.column: p.field for p in spec.parents} | {
        c.name: c.redis_field for c in spec.columns
    }
    data = {
        names.get(k, k): v for k, v in row.items() if not k.startswith("_") and isinstance(v, str)
    }
    return json.dumps(data, ensure_ascii=True)


def _reject(
    spec: EntitySpec, frame: pd.DataFrame, mask: pd.Series, reason
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows off with a reason each: (kept, rejected[_key, raw, reason]).

    `reason` is a string, or a function of the rejected rows returning one reason per row.
    """
    if not mask.any():
        return frame, _empty_rejected()
    bad = frame[mask]
    rejected = pd.DataFrame(
        {
            "_key": bad["_key"].to_numpy(),
            "raw": [raw_record(row, spec) for _, row in bad.iterrows()],
            "reason": list(reason(bad)) if callable(reason) else reason,
        }
    )
    return frame[~mask], rejected


def _empty_rejected() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "_key": pd.Series(dtype=object),
            "raw": pd.Series(dtype=object),
            "reason": pd.Series(dtype=object),
        }
    )


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


def parse_timestamp(text: str) -> datetime | None:
    """The instant an ISO-8601 timestamp names, in UTC (naive means UTC); None if it is not one.

    Fractions finer than a microsecond are rounded half to even, as Postgres does.
    """
    match = _ISO_ANY.fullmatch(text)
    if not match:
        return None
    g = match.groupdict()
    try:
        year = int(g["year"])
        if g["month"]:
            day = date(year, int(g["month"]), int(g["day"]))
        elif g["week"]:
            day = date.fromisocalendar(year, int(g["week"]), int(g["weekday"]))
        else:
            day = date(year, 1, 1) + timedelta(days=int(g["yday"]) - 1)
            if day.year != year:
                return None
        hour, minute, second = int(g["hour"] or 0), int(g["minute"] or 0), int(g["second"] or 0)
        if (
            hour > 24
            or minute > 59
            or second > 60
            or (hour == 24 and (minute or second or g["fraction"]))
        ):
            return None
        # The fraction belongs to the last unit written: 10.5 is 10:30, 10:30.5 is 10:30:30.
        unit = 1 if g["second"] else 60 if g["minute"] else 3600
        seconds = hour * 3600 + minute * 60 + second + Decimal(f"0.{g['fraction'] or 0}") * unit
        moment = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(
            microseconds=int((seconds * 1_000_000).to_integral_value(ROUND_HALF_EVEN))
        )
        if g["sign"]:
            offset = (
                int(g["oh"]) * 3600
                + int(g["om"] or 0) * 60
                + int(g["os"] or 0)
                + Decimal(f"0.{g['of'] or 0}")
            )
            moment -= timedelta(
                microseconds=int(offset * 1_000_000) * (1 if g["sign"] == "+" else -1)
            )
        return moment if 1 <= moment.year <= 9999 else None
    except (ValueError, OverflowError):
        return None


def _timestamp_for_postgres(text: str) -> str | None:
    """The text Postgres should parse for an ISO-8601 timestamp; None if it is not one."""
    if _PG_ISO.fullmatch(text):
        return text
    moment = parse_timestamp(text)
    return None if moment is None else moment.isoformat()


def _not_a_timestamp(values: pd.Series) -> pd.Series | None:
    """ISO-8601 only: Postgres would also take words like 'now' or 'epoch', which are not what was logged.

    None when every value is in a form Postgres reads as it is (the usual case: one regex pass).
    """
    blob = "\x01".join(filter(None, values.tolist()))
    if not blob or _PG_ISO_COLUMN.fullmatch(blob):
        return None
    return values.map(
        lambda v: isinstance(v, str) and v != "" and _timestamp_for_postgres(v) is None
    )


def _not_an_id(values: pd.Series) -> pd.Series:
    """Per-row flag for ids that are not 1-18 ASCII digits; one regex over the column when all are fine."""
    given = values.dropna()
    if not len(given) or _ID_COLUMN.fullmatch("\x01".join(given.tolist())):
        return pd.Series(False, index=values.index)
    return values.map(lambda v: isinstance(v, str) and not _ID.fullmatch(v))


def validate(
    spec: EntitySpec, frame: pd.DataFrame, incomplete: list[pd.DataFrame] | None = None
) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Drop records that cannot load, each with a reason naming the field.

    With `incomplete` given, records missing a required field go there (_key, reason) instead of
    being rejected: a writer that sets fields with several commands may not have finished yet.
    """
    rejected = []
    rewrite = []  # timestamp columns with values in a form Postgres does not read as it is

    def reject(mask, reason, waits=False):
        nonlocal frame
        if not mask.any():  # the usual case: no frame is built for a rule nothing broke
            return
        frame, bad = _reject(spec, frame, mask, reason)
        (incomplete if waits and incomplete is not None else rejected).append(
            bad[["_key", "reason"]] if waits and incomplete is not None else bad
        )

    reject(frame["_error"].notna(), lambda bad: bad["_error"])
    for column in spec.columns:
        name, field = column.name, column.redis_field
        if column.required:
            reject(frame[name].isna() | (frame[name] == ""), f"missing field {field!r}", waits=True)
        reject(
            _has_bad_text(frame[name]),
            f"field {field!r} is not valid UTF-8 text (or contains a NUL byte)",
        )
        if column.type in (BIGINT, FLOAT):
            reject(
                _not_a_number(frame[name]),
                lambda bad, name=name, field=field: [
                    f"field {field!r} is not a number: {v!r:.80}" for v in bad[name]
                ],
            )
        elif column.type == TIMESTAMPTZ:
            not_iso = _not_a_timestamp(frame[name])
            if not_iso is not None:
                rewrite.append(name)
                reject(
                    not_iso,
                    lambda bad, name=name, field=field: [
                        f"field {field!r} is not an ISO-8601 timestamp: {v!r:.80}"
                        for v in bad[name]
                    ],
                )
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
    if rewrite and len(frame):  # last, so every rejected record keeps its values as read
        frame = frame.assign(
            **{
                name: frame[name].map(lambda v: _timestamp_for_postgres(v) if v else v)
                for name in rewrite
            }
        )
    return frame, rejected


def map_parent_ids(
    spec: EntitySpec, frame: pd.DataFrame, resolve: Resolver
) -> tuple[pd.DataFrame, pd.DataFrame]:
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
            waiting.append(
                pd.DataFrame(
                    {
                        "_key": frame.loc[unknown, "_key"].to_numpy(),
                        "reason": [
                            f"{parent.entity} Redis id {int(i)} is not in Postgres"
                            for i in redis_ids[unknown]
                        ],
                    }
                )
            )
        frame[parent.column] = pg_ids
        frame = frame[~unknown]
    waiting_frame = (
        pd.concat(waiting, ignore_index=True)
        if waiting
        else pd.DataFrame({"_key": pd.Series(dtype=object), "reason": pd.Series(dtype=object)})
    )
    return frame, waiting_frame


NON_FINITE_COLUMN = (
    "_non_finite"  # per record: JSON numbers stored as null (present only when some were)
)


def null_non_finite_json(spec: EntitySpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Records with the NaN/Infinity/-Infinity of their JSON fields stored as null.

    When there were some, the frame gains a `_non_finite` column: how many were nulled per record.
    """
    changed: dict[str, list] = {}
    non_finite = None
    for column in spec.columns:
        if column.type != JSONB:
            continue
        values = frame[column.name]
        blob = "\x01".join(filter(None, values.tolist()))
        if "NaN" in blob or "Infinity" in blob:
            rewritten = [
                _null_non_finite(v) if v and ("NaN" in v or "Infinity" in v) else (v, 0)
                for v in values.tolist()
            ]
            counts = pd.Series([n for _, n in rewritten], index=frame.index)
            if counts.any():
                changed[column.name] = [v for v, _ in rewritten]
                non_finite = counts if non_finite is None else non_finite + counts
    if not changed and non_finite is None:
        return frame
    frame = frame.assign(
        **{
            name: pd.Series(values, index=frame.index, dtype=object)
            for name, values in changed.items()
        }
    )
    if non_finite is not None:
        frame[NON_FINITE_COLUMN] = non_finite
    return frame


def _null_non_finite(text: str) -> tuple[str, int]:
    """JSON text with bare NaN/Infinity/-Infinity tokens replaced by null, and how many were."""
    count = 0

    def replace(match: re.Match) -> str:
        nonlocal count
        if match.group(1) is None:
            return match.group(0)  # a string: kept as it is
        count += 1
        return "null"

    return _JSON_NON_FINITE.sub(replace, text), count


def cast_sql(column_type: str, ref: str, unset: str | None = None) -> str:
    """SQL turning a raw Redis string into the column's value: '' and the 'not set' value become NULL."""
    value = f"NULLIF({ref}, '')"
    if unset is not None:
        value = f"NULLIF({value}, '{unset}')"
    if column_type == TEXT:
        return value
    if (
        column_type == TIMESTAMPTZ
    ):  # offsets are honoured; a naive timestamp is read in TimeZone, UTC here
        return f"{value}::timestamptz"
    if column_type == FLOAT and unset is not None:
        # '0', '0.0' and '0e0' all mean "not given"
        return f"NULLIF(NULLIF({ref}, '')::double precision, {unset})"
    return f"{value}::{column_type}"
