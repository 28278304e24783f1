"""A generated corpus of malformed records, mixed with valid ones: the sync never crashes, loses or alters.

Covers: 1,200 seeded random variants (20,000 under RP_SOAK=1) of prediction, model,
training-run and dataset hashes written by hand with a raw (bytes) Redis client —
wrong key types (a string, list, set or sorted set at the record's key), missing
and empty fields, 1 MB values, invalid UTF-8, NUL bytes, SQL fragments, absurd
numbers (1e999, -0, NaN, 10**30 for size_bytes), invalid JSON, wrong timestamps,
unknown parents — then two sync cycles. An oracle written here, independent of the
engine, decides what is valid: every valid record loads with every value exactly
as written (JSON compared decoded, numbers exactly, text byte for byte), every
invalid one is in `rejected_records` with its Redis key and a reason, and no
invalid one has a row. Where Postgres's rules differ from Python's the oracle says
so explicitly (`PG_RULES`).

Inputs Postgres accepts but would reinterpret (timestamps such as 'now' or with a
zone name), hashes with no known field, wrong-typed index or counter keys, parent
ids in non-ASCII digits and huge values in identity columns each have a test of
their own below.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
import redis
from psycopg.rows import dict_row

from .faults import environment_flag, json_value

VARIANTS = 20_000 if environment_flag("RP_SOAK") else 1_200
SEED = 20251122
MB = 1 << 20

# Where Postgres legitimately differs from Python's json/float/datetime, the oracle follows Postgres, here:
PG_RULES = {
    "json NaN/Infinity": "Python's json.dumps writes them, jsonb cannot hold them: valid, stored as JSON null",
    "json \\u0000": "jsonb cannot hold U+0000 (Python can): invalid",
    "json lone surrogate escape": "jsonb refuses '\\ud800' alone (Python decodes it): invalid",
    "json 1e999": "a jsonb numeric holds it exactly (Python's float would be inf): valid, compared as Decimal",
    "float inf/nan words": "double precision accepts NaN, Infinity, inf (any case, signed): valid",
    "float underflow": "double precision refuses values that round to 0 (1e-400; Python gives 0.0): invalid",
    "float/bigint spaces": "leading and trailing spaces and tabs are allowed by Postgres: valid",
    "python-only numbers": "'1_000', full-width digits, hex: Python's float() may accept, Postgres not: invalid",
    "zero means unset": "confidence, inference_time_ms, duration_seconds, final_loss and best_metric_value equal "
    "to 0 (also -0) become NULL",
    "timestamps": "any ISO-8601 date and time that Python's datetime.fromisoformat reads (and year 1..9999); "
    "naive is UTC",
}

# -- the oracle -------------------------------------------------------------------------------------------------

_FLOAT = re.compile(r"[ \t]*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[ \t]*", re.ASCII)
_FLOAT_WORD = re.compile(r"[ \t]*[+-]?(?:nan|inf|infinity)[ \t]*", re.ASCII | re.IGNORECASE)
_BIGINT = re.compile(r"[ \t]*[+-]?[0-9]+[ \t]*", re.ASCII)
_ID = re.compile(r"[0-9]{1,18}", re.ASCII)


class Invalid(Exception):
    """The oracle's verdict on a value, with why."""


def as_text(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("not UTF-8") from None
    if "\x00" in text:
        raise Invalid("NUL byte")
    return text


def oracle_json(text: str):
    try:
        value = json.loads(text, parse_constant=lambda name: None)  # PG_RULES['json NaN/Infinity']
    except ValueError as exc:  # JSONDecodeError, and a UTF-8 BOM
        raise Invalid(f"invalid JSON: {exc}") from None

    def check(v):
        if isinstance(v, str):
            if "\x00" in v:
                raise Invalid(PG_RULES["json \\u0000"])
            if any(0xD800 <= ord(c) <= 0xDFFF for c in v):
                raise Invalid(PG_RULES["json lone surrogate escape"])
        elif isinstance(v, dict):
            for k, x in v.items():
                check(k)
                check(x)
        elif isinstance(v, list):
            for x in v:
                check(x)

    check(value)
    return json_value(text)


def oracle_float(text: str, unset: bool) -> float | None:
    if _FLOAT_WORD.fullmatch(text):
        return float(text.strip().lower().replace("infinity", "inf"))
    if not _FLOAT.fullmatch(text):
        raise Invalid(f"not a number ({PG_RULES['python-only numbers']})")
    value = float(text)
    mantissa = re.split("[eE]", text.strip())[0]
    if math.isinf(value) or (value == 0 and re.search("[1-9]", mantissa)):
        raise Invalid("out of range for double precision")
    return None if unset and value == 0 else value


def oracle_bigint(text: str) -> int:
    if not _BIGINT.fullmatch(text) or not -(2**63) <= int(text) < 2**63:
        raise Invalid("not a bigint")
    return int(text)


def oracle_timestamp(text: str) -> datetime:
    """The instant as naive UTC (PG_RULES['timestamps'])."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


# Per entity: Redis field → (column, kind, required); kinds: text, json, float, float0 (0 = unset), bigint, ts,
# parent (required parent id), parent? (optional: '' and '0' mean none).
ENTITY_FIELDS = {
    "predictions": {
        "model_version_id": ("model_version_id", "parent", True),
        "input": ("input_data", "json", False),
        "output": ("output_data", "json", False),
        "confidence": ("confidence", "float0", False),
        "inference_time_ms": ("inference_time_ms", "float0", False),
        "timestamp": ("timestamp", "ts", True),
        "metadata": ("metadata", "json", False),
    },
    "models": {
        "name": ("name", "text", True),
        **{
            f: (f, "text", False)
            for f in (
                "description",
                "architecture",
                "framework",
                "task_type",
                "input_shape",
                "output_shape",
            )
        },
        "created_at": ("created_at", "ts", False),
        "updated_at": ("updated_at", "ts", False),
    },
    "training_runs": {
        "model_version_id": ("model_version_id", "parent", True),
        "dataset_id": ("dataset_id", "parent?", False),
        "run_name": ("run_name", "text", False),
        "status": ("status", "text", False),
        "started_at": ("started_at", "ts", True),
        "completed_at": ("completed_at", "ts", False),
        "duration_seconds": ("duration_seconds", "float0", False),
        "final_loss": ("final_loss", "float0", False),
        "best_metric_value": ("best_metric_value", "float0", False),
        "artifacts": ("artifacts", "json", False),
    },
    "datasets": {
        "name": ("name", "text", True),
        "description": ("description", "text", False),
        "source_path": ("source_path", "text", False),
        "format": ("format", "text", False),
        "size_bytes": ("size_bytes", "bigint", False),
        "num_samples": ("num_samples", "bigint", False),
        "split_info": ("split_info", "json", False),
        "preprocessing": ("preprocessing", "json", False),
        "created_at": ("created_at", "ts", False),
    },
}
REDIS_NAMES = {
    "predictions": ("prediction", None),
    "models": ("model", "idx:models"),
    "training_runs": ("run", "idx:runs"),
    "datasets": ("dataset", "idx:datasets"),
}


@dataclass
class Parents:
    """Redis id → Postgres id of the valid parents written before the corpus."""

    versions: dict[int, int]
    datasets: dict[int, int]


def oracle(entity: str, fields: dict[bytes, bytes] | None, parents: Parents) -> dict:
    """The columns Postgres must hold for this record; raises Invalid when it must be rejected."""
    if fields is None:
        raise Invalid("wrong key type")
    expected = {}
    for name, (column, kind, required) in ENTITY_FIELDS[entity].items():
        raw = fields.get(name.encode())
        if raw is None or raw == b"":
            if required:
                raise Invalid(f"missing {name}")
            expected[column] = None
            continue
        text = as_text(raw)
        if kind == "text":
            expected[column] = text
        elif kind == "json":
            expected[column] = oracle_json(text)
        elif kind in ("float", "float0"):
            expected[column] = oracle_float(text, unset=kind == "float0")
        elif kind == "bigint":
            expected[column] = oracle_bigint(text)
        elif kind == "ts":
            expected[column] = oracle_timestamp(text)
        else:  # parent ids: plain ASCII digits naming a parent that Postgres holds
            if kind == "parent?" and text == "0":
                expected[column] = None
                continue
            known = parents.versions if column == "model_version_id" else parents.datasets
            if not _ID.fullmatch(text):
                raise Invalid(f"{name} is not an id")
            if int(text) not in known:
                raise Invalid(
                    f"{name} {text} has no parent (rejected once it waited pending_max_age)"
                )
            expected[column] = known[int(text)]
    return expected


# -- the generator ------------------------------------------------------------------------------------------------

GOOD_TEXT = [
    "plain",
    "مدل تشخیص «چهره»\u200cها",
    "🚀 émoji 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    'it\'s "quoted"',
    "C:\\path\\to\\file",
    "tab\there\nnew line\r\nCRLF",
    "\\.",
    "\n\\.\n",
    "\\N",
    "NULL",
    "null",
    " ",
    "  padded  ",
    "'); DROP TABLE models; --",
    "$$; DROP SCHEMA public CASCADE; $$",
    "\u202eRTL\u202c",
    "\u0001\u001f\u007f",
    "a" * 3000,
    "x\u0301\u0302 combining",
    "%s %(name)s {0} $1",
]
BAD_TEXT = [
    b"\xff",
    b"abc\xc3",
    b"\xed\xa0\x80 surrogate",
    b"\xc0\xaf overlong",
    b"\xf5\x80\x80\x80",
    b"a\x00b",
    b"\x00",
]
GOOD_JSON = [
    "1e999",
    "-0",
    "null",
    "true",
    '"just a string"',
    "[]",
    "{}",
    '{"a": 1, "a": 2}',
    ' {"a": 1} ',
    '"\\ud83d\\ude00"',
    '{"k": "\\u00e9\\n\\t\\\\"}',
    "123456789012345678901234567890",
    "1E2",
    "-0.0",
    "1.0",
    '{"size": 150000000000, "neg": -1e-300, "tiny": 5e-324}',
    '["\'); DROP TABLE models; --"]',
    '{"\\\\N": "\\\\."}',
]
BAD_JSON = [
    "NaN",
    '{"a": NaN}',
    "[Infinity]",
    "-Infinity",
    "{'a': 1}",
    "[1,]",
    '{"a": 1}x',
    '"\\u0000"',
    '{"k": "a\\u0000b"}',
    '"\\ud800"',
    '"a\tb"',
    "\ufeff{}",
    "undefined",
    "01",
    "1.",
    ".5",
    '"\\x41"',
    "tru",
    "'); DROP TABLE models; --",
    "{",
    "[",
    '{"a":',
    "not json",
]
GOOD_FLOAT = [
    "0.5",
    "1",
    "-3.25",
    "1e308",
    "-1e308",
    "1e-320",
    "NaN",
    "nan",
    "-nan",
    "inf",
    "-Infinity",
    "INFINITY",
    " 1.5 ",
    "\t2.5",
    "+1.5",
    "1.",
    ".5",
    "0",
    "0.0",
    "-0",
    "0e0",
    "1E5",
    "123456789012345678901234567890",
]
BAD_FLOAT = [
    "abc",
    "1e999",
    "-1e999",
    "2e308",
    "1e-400",
    "1_000",
    "0x1A",
    "１２",
    "1,5",
    ".",
    " ",
    "--1",
    "1e",
    "e5",
    "NaNa",
    "Infinity!",
    "1.5\u00a0",
    "1; DROP TABLE predictions",
    "'); DROP TABLE models; --",
    "0.1.2",
]
GOOD_BIGINT = [
    "0",
    "-0",
    " 42 ",
    "+42",
    "9223372036854775807",
    "-9223372036854775808",
    "150000000000",
    "7",
]
BAD_BIGINT = [
    str(10**30),
    "9223372036854775808",
    "1.5",
    "1e3",
    "0x10",
    "1_000",
    "NaN",
    "abc",
    "１２",
    "inf",
    "-",
    "'); DROP TABLE models; --",
]
BAD_TIMESTAMP = [
    "2025-13-01T00:00:00",
    "2025-02-30T00:00:00",
    "2025-11-22T25:00:00",
    "2025-11-22T10:61:00",
    "not a date",
    "12345",
    "1e999",
    "infinity",
    "-infinity",
    "0000-01-01T00:00:00",
    "99999-01-01T00:00:00",
    "2025-W47-6",
    "2025-01-01'); DROP TABLE models; --",
    "-",
    "allballs",
]
BAD_IDS = ["abc", "-1", "1.0", " 1", "1e3", str(10**30), "0x1", "'); DROP TABLE models; --"]


def random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return rng.choice(GOOD_TEXT)
    if kind == 1:
        return rng.choice([0, -1, 2**63, 10**30, rng.randint(-(10**6), 10**6)])
    if kind == 2:
        return rng.choice([0.1, -2.5e-8, 1e300, rng.random(), 3.0])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind in (4, 5):
        return {
            rng.choice(GOOD_TEXT) + str(i): random_json(rng, depth + 1)
            for i in range(rng.randrange(4))
        }
    return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]


def good_value(rng: random.Random, kind: str, parents: Parents, huge: bool) -> bytes:
    if huge and kind in ("text", "json"):
        blob = (
            "x" * MB
            if rng.random() < 0.5
            else "".join(rng.choice("ab€😀\\\"'\n") for _ in range(MB // 4))
        )
        return (blob if kind == "text" else json.dumps({"blob": blob})).encode()
    if kind == "text":
        return rng.choice(GOOD_TEXT).encode()
    if kind == "json":
        if rng.random() < 0.3:
            return rng.choice(GOOD_JSON).encode()
        return json.dumps(random_json(rng), ensure_ascii=rng.random() < 0.5).encode()
    if kind in ("float", "float0"):
        return (
            rng.choice(GOOD_FLOAT) if rng.random() < 0.5 else repr(rng.uniform(-1e6, 1e6))
        ).encode()
    if kind == "bigint":
        return (
            rng.choice(GOOD_BIGINT) if rng.random() < 0.5 else str(rng.randrange(-(2**63), 2**63))
        ).encode()
    if kind == "ts":
        moment = datetime(1, 1, 1) + (datetime(9999, 12, 31) - datetime(1, 1, 1)) * rng.random()
        moment = moment.replace(microsecond=rng.choice([0, moment.microsecond, 500000]))
        return moment.isoformat().encode()
    if kind == "parent":
        return str(rng.choice(sorted(parents.versions))).encode()
    return rng.choice([b"0", b"", str(rng.choice(sorted(parents.datasets))).encode()])  # parent?


def bad_value(rng: random.Random, kind: str, required: bool) -> bytes | None:
    """An invalid value for the kind, or None (field absent) when the field is required."""
    if required and rng.random() < 0.15:
        return rng.choice([None, b""])
    if rng.random() < 0.2:
        return rng.choice(BAD_TEXT)
    if kind == "text":
        return rng.choice(BAD_TEXT)
    if kind == "json":
        if rng.random() < 0.3:  # a valid document cut short is never valid
            return json.dumps({"k": random_json(rng), "z": [1, 2]}).encode()[: -rng.randint(1, 5)]
        return rng.choice(BAD_JSON).encode()
    if kind in ("float", "float0"):
        return rng.choice(BAD_FLOAT + ["9" * MB] * (rng.random() < 0.02)).encode()
    if kind == "bigint":
        return rng.choice(BAD_BIGINT).encode()
    if kind == "ts":
        return rng.choice(BAD_TIMESTAMP).encode()
    return rng.choice([*BAD_IDS, "999999", "0" if kind == "parent" else "424242"]).encode()


@dataclass
class Variant:
    entity: str
    redis_id: int
    key: str
    fields: dict[bytes, bytes] | None  # None: the key holds another type
    wrong_type: str | None = None
    expected: dict | None = None  # the oracle's columns when valid
    why: str = ""  # the oracle's reason when invalid


def generate(
    rng: random.Random, prefix: str, count: int, parents: Parents, first_ids: dict[str, int]
) -> list[Variant]:
    next_id = dict(first_ids)
    variants = []
    for n in range(count):
        entity = rng.choices(list(ENTITY_FIELDS), weights=[50, 15, 20, 15])[0]
        record, _ = REDIS_NAMES[entity]
        next_id[entity] += 1
        redis_id = next_id[entity]
        key = f"{prefix}{record}:{redis_id}"
        if rng.random() < 0.04:
            variants.append(
                Variant(entity, redis_id, key, None, rng.choice(["string", "list", "set", "zset"]))
            )
            continue
        spec = ENTITY_FIELDS[entity]
        bad = set(rng.sample(sorted(spec), rng.choices([0, 1, 2], weights=[45, 40, 15])[0]))
        huge = n % 150 == 7 and n < 1500  # a few 1 MB values (at most ten: Redis is shared)
        fields: dict[bytes, bytes] = {b"id": str(redis_id).encode()}
        for name, (_, kind, required) in spec.items():
            if name in bad:
                value = bad_value(rng, kind, required)
            elif not required and rng.random() < 0.08:
                value = None  # an optional field the writer never set
            else:
                value = good_value(rng, kind, parents, huge and name not in ("name",))
            if value is not None:
                fields[name.encode()] = value
        if entity in ("models", "datasets") and b"name" in fields and fields[b"name"]:
            fields[b"name"] += f" #{n}".encode()  # names are unique, so each record is its own row
        if rng.random() < 0.1:
            fields[b"extra_field_" + str(n).encode()] = b"ignored"
        variants.append(Variant(entity, redis_id, key, fields))
    for v in variants:
        try:
            v.expected = oracle(v.entity, v.fields, parents)
        except Invalid as exc:
            v.why = str(exc)
    return variants


def write(raw: redis.Redis, prefix: str, variants: list[Variant]) -> None:
    pipe = raw.pipeline(transaction=False)
    for i, v in enumerate(variants):
        if v.wrong_type == "string":
            pipe.set(v.key, b"\xff not a hash " + v.key.encode())
        elif v.wrong_type == "list":
            pipe.rpush(v.key, b"a", b"b")
        elif v.wrong_type == "set":
            pipe.sadd(v.key, b"a")
        elif v.wrong_type == "zset":
            pipe.zadd(v.key, {b"a": 1})
        else:
            pipe.hset(v.key, mapping=v.fields)
        record, index = REDIS_NAMES[v.entity]
        if index:
            pipe.zadd(prefix + index, {str(v.redis_id): v.redis_id})
        if i % 200 == 199:
            pipe.execute()
    pipe.execute()
    for entity, (
        record,
        _,
    ) in REDIS_NAMES.items():  # the counters cover every id, as INCR would have left them
        ids = [v.redis_id for v in variants if v.entity == entity]
        if ids:
            raw.set(f"{prefix}counter:{record}", max(ids))


# -- reading Postgres back ----------------------------------------------------------------------------------


def pg_rows(pg_conn, entity: str) -> list[dict]:
    """The entity's rows, JSON columns as their text (decoded by the test, numbers kept exact)."""
    select = ", ".join(
        f'"{c}"::text AS "{c}"' if kind == "json" else f'"{c}"'
        for c, kind, _ in ENTITY_FIELDS[entity].values()
    )
    extra = ", origin_redis_id" if entity in ("predictions", "training_runs") else ""
    with pg_conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"SELECT {select}{extra} FROM {entity}").fetchall()


def same(expected, actual, kind: str) -> bool:
    """Whether Postgres holds exactly the oracle's value (NULL for None, NaN for NaN, same type)."""
    if expected is None or actual is None:
        return expected is None and actual is None
    if kind == "json":
        return expected == json_value(actual)
    if kind == "ts":
        return actual.astimezone(timezone.utc).replace(tzinfo=None) == expected
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(actual, float) and math.isnan(actual)
    return type(expected) is type(actual) and expected == actual


def base_parents(writer) -> tuple[dict[int, str], dict[int, str]]:
    versions = {}
    for m in range(3):
        model = writer.create_model(f"base-model-{m}")
        versions[writer.create_model_version(model, "1.0")] = f"base-model-{m}"
    datasets = {writer.create_dataset("base-dataset"): "base-dataset"}
    return versions, datasets


def resolve_parents(pg_conn, versions: dict[int, str], datasets: dict[int, str]) -> Parents:
    by_model = dict(
        pg_conn.execute(
            "SELECT m.name, v.id FROM model_versions v JOIN models m ON m.id = v.model_id"
        )
    )
    by_name = dict(pg_conn.execute("SELECT name, id FROM datasets"))
    return Parents(
        {r: by_model[n] for r, n in versions.items()}, {r: by_name[n] for r, n in datasets.items()}
    )


def test_generated_corpus_never_crashes_the_sync_and_nothing_valid_is_lost_or_altered(
    writer, redis_url, key_prefix, run_sync, pg_conn, pg_schemas
):
    versions, datasets = base_parents(writer)
    run_sync()  # the parents are in Postgres first, so the oracle knows their Postgres ids
    parents = resolve_parents(pg_conn, versions, datasets)
    raw = redis.Redis.from_url(redis_url)  # bytes in, bytes out
    first_ids = {
        e: int(raw.get(f"{key_prefix}counter:{REDIS_NAMES[e][0]}") or 0) for e in ENTITY_FIELDS
    }
    variants = generate(random.Random(SEED), key_prefix, VARIANTS, parents, first_ids)
    write(raw, key_prefix, variants)
    raw.close()

    for _ in range(
        2
    ):  # the second cycle rejects what waited for a parent longer than pending_max_age (0 s)
        results = run_sync(pending_max_age_seconds=0)

    valid = [v for v in variants if v.expected is not None]
    invalid = [v for v in variants if v.expected is None]
    assert len(variants) >= 1000 and len(valid) >= 250 and len(invalid) >= 500

    rejected: dict[tuple[str, str], str] = {}
    for entity, key, reason in pg_conn.execute(
        f'SELECT entity, redis_key, reason FROM "{pg_schemas[1]}".rejected_records'
    ):
        rejected[(entity, key)] = reason
    not_rejected = [(v.key, v.why) for v in invalid if not rejected.get((v.entity, v.key))]
    assert not not_rejected, (
        f"{len(not_rejected)} invalid records not rejected, e.g. {not_rejected[:5]}"
    )
    wrongly_rejected = [
        (v.key, rejected[(v.entity, v.key)]) for v in valid if (v.entity, v.key) in rejected
    ]
    assert not wrongly_rejected, (
        f"{len(wrongly_rejected)} valid records rejected, e.g. {wrongly_rejected[:5]}"
    )
    pending = pg_conn.execute(f'SELECT count(*) FROM "{pg_schemas[1]}".pending').fetchone()[0]
    assert pending == 0

    altered = []
    for entity in ENTITY_FIELDS:
        rows = pg_rows(pg_conn, entity)
        if entity in ("predictions", "training_runs"):
            by_identity = {r["origin_redis_id"]: r for r in rows}
            identity = lambda v: v.redis_id  # noqa: E731
        else:
            by_identity = {r["name"]: r for r in rows}
            identity = lambda v: v.expected["name"]  # noqa: E731
        mine = [v for v in valid if v.entity == entity]
        base = {"models": 3, "datasets": 1}.get(entity, 0)
        assert len(rows) == len(mine) + base, (
            f"{entity}: {len(rows)} rows for {len(mine)} valid records"
        )
        for v in mine:
            row = by_identity.get(identity(v))
            if row is None:
                altered.append((v.key, "no row"))
                continue
            for column, kind, _ in ENTITY_FIELDS[entity].values():
                if not same(v.expected[column], row[column], kind):
                    altered.append(
                        (v.key, column, repr(v.expected[column])[:80], repr(row[column])[:80])
                    )
    assert not altered, f"{len(altered)} valid records lost or altered, e.g. {altered[:5]}"
    print(
        f"\nFIGURES corpus: {len(variants)} generated variants ({len(valid)} valid, {len(invalid)} invalid, "
        f"{sum(v.wrong_type is not None for v in variants)} of a wrong key type); rejected "
        f"{sum((v.entity, v.key) in rejected for v in invalid)} of {len(invalid)} invalid, "
        f"loaded {len(valid)} of {len(valid)} valid with every value unchanged; errors reported "
        f"{sum(r.rejected for r in results.values())} in the last cycle"
    )


# -- inputs outside the corpus: each is a finding of its own ------------------------------------------------------


def rejected_keys(pg_conn, sync_schema: str) -> dict[str, str]:
    return dict(pg_conn.execute(f'SELECT redis_key, reason FROM "{sync_schema}".rejected_records'))


def hand_prediction(client, prefix: str, version: int, **fields) -> tuple[int, str]:
    new_id = client.incr(f"{prefix}counter:prediction")
    record = {
        "id": new_id,
        "model_version_id": version,
        "input": "{}",
        "output": "{}",
        "confidence": "0.5",
        "inference_time_ms": "1",
        "timestamp": "2025-11-22T10:30:00",
        "metadata": "{}",
        **fields,
    }
    client.hset(f"{prefix}prediction:{new_id}", mapping=record)
    return new_id, f"{prefix}prediction:{new_id}"


REINTERPRETED_TIMESTAMPS = [
    "now",
    "today",
    "tomorrow",
    "yesterday",
    "epoch",  # words Postgres would replace by a time of its own
    "2025-11-22T10:30:00 PST",
    "2025-11-22T10:30:00 Europe/Paris",  # zone names are not ISO-8601
    "J2451187",
    "Nov 22 2025",  # not the layout's ISO format at all
]


@pytest.mark.parametrize("timestamp", REINTERPRETED_TIMESTAMPS)
def test_timestamps_postgres_would_reinterpret_are_rejected(
    timestamp, writer, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    version = writer.create_model_version(writer.create_model("m"), "1.0")
    _, key = hand_prediction(redis_client, key_prefix, version, timestamp=timestamp)
    run_sync()
    assert key in rejected_keys(pg_conn, pg_schemas[1])
    assert pg_conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 0


@pytest.mark.parametrize(
    "entity",
    [
        "predictions",
        "models",
        "training_runs",
        "datasets",
    ],
)
def test_hash_without_any_known_field_is_rejected(
    entity, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    record, index = REDIS_NAMES[entity]
    new_id = redis_client.incr(f"{key_prefix}counter:{record}")
    key = f"{key_prefix}{record}:{new_id}"
    redis_client.hset(key, mapping={"nme": "typo", "foo": "bar"})
    if index:
        redis_client.zadd(key_prefix + index, {new_id: new_id})
    for _ in range(2):
        run_sync(pending_max_age_seconds=0)
    assert key in rejected_keys(pg_conn, pg_schemas[1])


@pytest.mark.parametrize("digits", ["۱", "١", "１"])  # Persian, Arabic-Indic, full-width one
def test_parent_id_in_non_ascii_digits_is_rejected_without_crashing(
    digits, writer, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    version = writer.create_model_version(writer.create_model("m"), "1.0")
    good, _ = hand_prediction(redis_client, key_prefix, version)
    _, bad = hand_prediction(redis_client, key_prefix, digits)
    for _ in range(2):
        run_sync(pending_max_age_seconds=0)
    assert bad in rejected_keys(pg_conn, pg_schemas[1])
    assert pg_conn.execute("SELECT origin_redis_id FROM predictions").fetchall() == [(good,)]


@pytest.mark.parametrize("where", ["idx:models", "idx:runs", "counter:prediction", "counter:model"])
def test_wrong_type_index_or_counter_key_does_not_stop_the_sync(
    where, writer, redis_client, key_prefix, run_sync, pg_conn
):
    version = writer.create_model_version(writer.create_model("m"), "1.0")
    writer.log_prediction(version, {"x": 1}, {"y": 2})
    redis_client.delete(key_prefix + where)
    redis_client.rpush(key_prefix + where, "corrupt")  # a list where an index or a counter belongs
    run_sync()
    assert pg_conn.execute("SELECT count(*) FROM model_versions").fetchone()[0] == 1


@pytest.mark.parametrize(
    "where", ["model name", "dataset name", "version", "hyperparameter name", "metric name"]
)
def test_huge_value_in_an_identity_column_is_rejected_without_crashing(
    where, writer, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    huge = "".join(
        random.Random(1).choice("abcdefghij€😀") for _ in range(MB // 4)
    )  # incompressible
    model = writer.create_model(huge if where == "model name" else "m")
    version = writer.create_model_version(model, huge if where == "version" else "1.0")
    writer.create_dataset(huge if where == "dataset name" else "d")
    run = writer.create_training_run(version, run_name="r")
    writer.log_hyperparameters(run, {huge if where == "hyperparameter name" else "lr": 0.1})
    writer.log_metric(run, huge if where == "metric name" else "loss", 0.5, step=1)
    writer.log_prediction(version, {"x": 1}, {"y": 2})
    run_sync()
    assert len(rejected_keys(pg_conn, pg_schemas[1])) >= 1
    assert pg_conn.execute("SELECT count(*) FROM experiments").fetchone()[0] == 0
