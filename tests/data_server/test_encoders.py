"""Result encoders in-process: row windows, bounded slices and the lossless JSON/CSV mapping."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_server import encoders
from data_server.encoders import encode_result
from data_server.formats import ResultFormat
from data_server.temporal_texts import spell


@pytest.fixture(autouse=True, params=["value by value", "column-wise"])
def json_rows(request, monkeypatch) -> str:
    """Every test of this module runs with both ways of spelling JSON rows: the tests' results
    are small, which alone would only ever take the value-by-value one."""
    rows = 10**9 if request.param == "value by value" else 0
    monkeypatch.setattr(encoders, "VALUE_BY_VALUE_ROWS", rows)
    return request.param


def _store(tmp_path, sql: str, batch_rows: int = 3) -> str:
    """The result of ``sql`` as the worker stores it: an Arrow IPC file of small batches."""
    path = str(tmp_path / "result.arrow")
    with duckdb.connect() as connection:
        connection.execute("SET TimeZone = 'UTC'")
        reader = connection.execute(sql).to_arrow_reader(batch_rows)
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
    return path


def _encode(path: str, fmt: ResultFormat, offset: int = 0, limit: int | None = None) -> bytes:
    return b"".join(encode_result(pa.OSFile(path, "rb"), fmt, offset, limit))


# ---------------------------------------------------------------------------- values


def test_json_edge_values_are_lossless(tmp_path):
    path = _store(
        tmp_path,
        """
        SELECT 18446744073709551615::UBIGINT AS u, (-9223372036854775808)::BIGINT AS i,
               [0.1, 'NaN'::DOUBLE, 1e300, 5e-324]::DOUBLE[] AS floats,
               TIMESTAMP_NS '2024-01-01 00:00:00.123456789' AS ns,
               MAP {'k': 1} AS m, 'x'::ENUM('x', 'y') AS e,
               123456789012345678901234567.123456789::DECIMAL(38, 9) AS d,
               {'when': DATE '2024-02-29', 'blob': '\\xFF'::BLOB} AS s
        """,
    )
    document = json.loads(_encode(path, ResultFormat.JSON))
    assert document["rows"] == [
        [
            18446744073709551615,
            -9223372036854775808,
            [0.1, "NaN", 1e300, 5e-324],
            "2024-01-01T00:00:00.123456789",
            [["k", 1]],
            "x",
            "123456789012345678901234567.123456789",
            {"when": "2024-02-29", "blob": "/w=="},
        ]
    ]
    assert document["row_count"] == 1


def test_ndjson_rows_are_objects_with_the_json_values(tmp_path):
    path = _store(tmp_path, "SELECT range AS n, 'r' || range AS label FROM range(7)")
    lines = _encode(path, ResultFormat.NDJSON).decode().splitlines()
    assert [json.loads(line) for line in lines] == [{"n": i, "label": f"r{i}"} for i in range(7)]


def test_csv_and_parquet_and_arrow_round_trip(tmp_path):
    sql = "SELECT range AS n, range * 0.25 AS q, 'a,\"b\"' || range AS t FROM range(10)"
    path = _store(tmp_path, sql)
    expected = pa.ipc.open_file(path).read_all()
    arrow = pa.ipc.open_stream(_encode(path, ResultFormat.ARROW)).read_all()
    assert arrow.equals(expected)
    assert pq.read_table(io.BytesIO(_encode(path, ResultFormat.PARQUET))).equals(expected)
    csv = pa_csv.read_csv(io.BytesIO(_encode(path, ResultFormat.CSV)))
    assert csv.column("t").to_pylist() == expected.column("t").to_pylist()
    assert [str(v) for v in expected.column("q").to_pylist()] == [
        f"{v:.2f}" for v in csv.column("q").to_pylist()
    ]


# ---------------------------------------------------------------------------- row windows


@pytest.mark.parametrize(
    ("offset", "limit", "expected"),
    [
        (0, None, list(range(10))),
        (4, None, list(range(4, 10))),
        (2, 5, [2, 3, 4, 5, 6]),  # starts mid-batch, spans three batches
        (3, 3, [3, 4, 5]),  # exactly one batch
        (9, 100, [9]),
        (10, None, []),
        (1000, 5, []),
        (0, 0, []),
    ],
)
def test_row_windows_in_every_format(tmp_path, offset, limit, expected):
    path = _store(tmp_path, "SELECT range AS n FROM range(10)")
    document = json.loads(_encode(path, ResultFormat.JSON, offset, limit))
    assert document["rows"] == [[n] for n in expected]
    assert document["row_count"] == len(expected)
    ndjson = _encode(path, ResultFormat.NDJSON, offset, limit).decode().splitlines()
    assert [json.loads(line)["n"] for line in ndjson] == expected
    arrow = pa.ipc.open_stream(_encode(path, ResultFormat.ARROW, offset, limit)).read_all()
    assert arrow.column("n").to_pylist() == expected
    assert arrow.schema.names == ["n"]
    parquet = pq.read_table(io.BytesIO(_encode(path, ResultFormat.PARQUET, offset, limit)))
    assert parquet.column("n").to_pylist() == expected
    csv = _encode(path, ResultFormat.CSV, offset, limit).decode().splitlines()
    assert csv == ['"n"', *map(str, expected)]


def test_empty_result_is_a_valid_document_in_every_format(tmp_path):
    path = _store(tmp_path, "SELECT 1 AS one WHERE false")
    assert json.loads(_encode(path, ResultFormat.JSON)) == {
        "columns": [{"name": "one", "type": "int32"}],
        "rows": [],
        "row_count": 0,
    }
    assert _encode(path, ResultFormat.NDJSON) == b""
    assert pa.ipc.open_stream(_encode(path, ResultFormat.ARROW)).read_all().num_rows == 0
    assert pq.read_table(io.BytesIO(_encode(path, ResultFormat.PARQUET))).num_rows == 0


def test_large_results_stream_in_several_chunks(tmp_path):
    path = _store(tmp_path, "SELECT range AS n, 'row ' || range AS t FROM range(200000)", 65536)
    for fmt in ResultFormat:
        chunks = list(encode_result(pa.OSFile(path, "rb"), fmt, 0, None))
        assert len(chunks) > 1, fmt


def test_warm_up_encodes_every_format(monkeypatch):
    """The data server's start-up encoding reaches every format's encoder (a format it missed
    would pay its lazy initialisation on a user's request)."""
    real = encoders.encode_result
    warmed: list[ResultFormat] = []

    def recorded(source, fmt, **options):
        warmed.append(fmt)
        chunks = list(real(source, fmt, **options))
        assert b"".join(chunks)
        return iter(chunks)

    monkeypatch.setattr(encoders, "encode_result", recorded)
    encoders.warm_up()
    assert sorted(warmed, key=str) == sorted(ResultFormat, key=str)


def test_a_corrupt_file_fails_on_the_first_chunk(tmp_path):
    path = tmp_path / "broken.arrow"
    path.write_bytes(b"not arrow at all")
    chunks = encode_result(pa.OSFile(str(path), "rb"), ResultFormat.JSON, 0, None)
    with pytest.raises(pa.ArrowInvalid):
        next(chunks)


# ---------------------------------------------------------------------------- fast JSON text


FAST_PATH_SQL = r"""
SELECT * FROM (VALUES
  (1::TINYINT, (-9223372036854775808)::BIGINT, 18446744073709551615::UBIGINT, 1.0::DOUBLE,
   'NaN'::DOUBLE, 'a "quoted" \ back', E'tab\there', TRUE, DATE '2024-02-29',
   TIME '13:45:31.5', TIMESTAMP '2024-03-31 01:30:00.123456', TIMESTAMP_NS '2024-01-01 00:00:00.123456789',
   TIMESTAMP_S '1969-12-31 23:59:59', TIMESTAMPTZ '2024-03-31 01:30:00+02', 12.50::DECIMAL(10, 2),
   'x'::ENUM('x', 'y'), 0.1::FLOAT, 'héllo ✓'),
  (NULL, NULL, NULL, -0.0, 'Infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL),
  (3, 0, 0, 1e300, '-Infinity', '', '', FALSE, DATE '0001-01-01', TIME '00:00:00',
   TIMESTAMP '0001-01-01 00:00:00', NULL, NULL, NULL, -0.01, 'y', NULL, ''),
  (4, 1, 1, 5e-324, 2.5, 'plain', 'plain', TRUE, DATE '9999-12-31', TIME '23:59:59.999999',
   TIMESTAMP '9999-12-31 23:59:59.999999', NULL, NULL, NULL, 0, 'x', 1.5, 'x')
) AS t(i8, i64, u64, d, special, quoted, control, b, day, tod, ts, ns, s, tz, dec, e, f, utf)
"""


def _value_by_value(path: str, keys: bool) -> bytes:
    """What the encoders wrote before the column-wise path: orjson of the mapped values."""
    table = pa.ipc.open_file(path).read_all()
    columns = [encoders._json_values(column.combine_chunks()) for column in table.columns]
    rows = list(zip(*columns, strict=True))
    if keys:
        return b"".join(
            orjson.dumps(dict(zip(table.column_names, r, strict=True))) + b"\n" for r in rows
        )
    return orjson.dumps(rows)


def test_column_wise_json_text_equals_the_value_by_value_mapping(tmp_path):
    path = _store(tmp_path, FAST_PATH_SQL, batch_rows=2)
    document = _encode(path, ResultFormat.JSON)
    rows = document[document.index(b'"rows":') + 7 : document.rindex(b',"row_count"')]
    assert rows == _value_by_value(path, keys=False)
    assert _encode(path, ResultFormat.NDJSON) == _value_by_value(path, keys=True)
    records = json.loads(_encode(path, ResultFormat.RECORDS))
    assert records == [json.loads(line) for line in _value_by_value(path, keys=True).splitlines()]


@pytest.mark.parametrize("fmt", [ResultFormat.JSON, ResultFormat.RECORDS, ResultFormat.NDJSON])
def test_both_ways_of_spelling_rows_give_the_same_bytes(tmp_path, monkeypatch, fmt):
    """Beyond the mapping the tests above compare with: keys spelled out, a column name twice
    (both kept), names that need escaping."""
    sql = f'SELECT *, i64 AS i8, quoted AS "a""b\\c", utf AS "née" FROM ({FAST_PATH_SQL})'
    path = _store(tmp_path, sql, batch_rows=2)
    spelled = {}
    for rows in (10**9, 0):
        monkeypatch.setattr(encoders, "VALUE_BY_VALUE_ROWS", rows)
        spelled[rows] = _encode(path, fmt)
    assert spelled[10**9] == spelled[0]
    if fmt is ResultFormat.NDJSON:
        first = spelled[0].splitlines()[0]
        assert first.count(b'"i8":') == 2
        assert json.loads(b"[" + first + b"]")  # valid JSON
        assert b'"a\\"b\\\\c":"a \\"quoted\\" \\\\ back"' in first


@pytest.mark.parametrize("rows", [1, 200])  # each way of spelling rows, whatever the fixture's
@pytest.mark.parametrize("fmt", [ResultFormat.JSON, ResultFormat.RECORDS, ResultFormat.NDJSON])
def test_text_that_is_not_utf8_is_spelled_with_replacement_characters(tmp_path, fmt, rows):
    """DuckDB lets a query make such text; a JSON body must be UTF-8 and Python cannot decode
    it (value by value it was a 500, column-wise invalid JSON). With and without a control
    character, which sends a column through orjson value by value."""
    path = _store(
        tmp_path,
        f"SELECT 'a' || printf('%c', 255) || 'b' AS s, printf('%c', 255) || chr(9) AS t, "
        f"'ok' AS u, [printf('%c', 255), 'x'] AS l, {{'k': 'y' || printf('%c', 254)}} AS m "
        f"FROM range({rows})",
        batch_rows=rows,
    )
    body = _encode(path, fmt)
    text = body.decode("utf-8")  # valid UTF-8 throughout
    first = json.loads(text.splitlines()[0]) if fmt is ResultFormat.NDJSON else json.loads(text)
    if fmt is ResultFormat.JSON:
        first = dict(zip(("s", "t", "u", "l", "m"), first["rows"][0], strict=True))
    elif fmt is ResultFormat.RECORDS:
        first = first[0]
    assert first == {
        "s": "a\ufffdb",
        "t": "\ufffd\t",
        "u": "ok",
        "l": ["\ufffd", "x"],  # inside a list or a struct too
        "m": {"k": "y\ufffd"},
    }


def test_a_struct_without_field_names_is_an_array_of_its_values(tmp_path):
    """DuckDB's unnamed struct (``row(…)``, ``(1, 2)``): its fields are all named "", so as an
    object its values would collide (it was a 500 in every text format); also nested, null, and
    beside a struct of names, whose values keep their keys."""
    path = _store(
        tmp_path,
        "SELECT (1, 2) AS t, row(1, 'a', DATE '2024-02-29') AS r, [(1, (2, 3)), NULL] AS l, "
        "{'a': 1, 'b': (4, 5)} AS named, NULL::STRUCT(a INT) AS gone",
    )
    document = json.loads(_encode(path, ResultFormat.JSON))
    assert document["rows"] == [
        [[1, 2], [1, "a", "2024-02-29"], [[1, [2, 3]], None], {"a": 1, "b": [4, 5]}, None]
    ]
    assert json.loads(_encode(path, ResultFormat.NDJSON))["r"] == [1, "a", "2024-02-29"]
    assert _encode(path, ResultFormat.CSV).splitlines()[1].startswith(b'"[1,2]","[1,""a"",')


def test_csv_text_that_is_not_utf8_is_spelled_with_replacement_characters(tmp_path):
    path = _store(tmp_path, "SELECT 'a' || printf('%c', 255) AS s")
    assert _encode(path, ResultFormat.CSV).decode("utf-8") == '"s"\n"a\ufffd"\n'


# Columns of the types whose JSON text is cut from orjson's text of a whole array, in any order
# and any position (the last column's separators become the row's closing bracket), with nulls
# and non-finite doubles, beside a string column whose texts are framed by the row template.
_FAST_COLUMN_TYPES = {
    pa.int8(): st.integers(-(2**7), 2**7 - 1),
    pa.int64(): st.integers(-(2**63), 2**63 - 1),
    pa.uint64(): st.integers(0, 2**64 - 1),
    pa.float64(): st.floats(allow_nan=True, allow_infinity=True),
    pa.string(): st.text(max_size=4),
}


@st.composite
def _fast_path_tables(draw) -> pa.Table:
    rows = draw(st.integers(1, 6))
    types = draw(st.lists(st.sampled_from(list(_FAST_COLUMN_TYPES)), min_size=1, max_size=4))
    columns = {
        f"c{index}": pa.array(
            draw(st.lists(st.none() | _FAST_COLUMN_TYPES[kind], min_size=rows, max_size=rows)),
            kind,
        )
        for index, kind in enumerate(types)
    }
    return pa.table(columns)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(table=_fast_path_tables(), batch_rows=st.integers(1, 4))
def test_numbers_in_any_column_position_equal_the_value_by_value_mapping(
    tmp_path, table, batch_rows
):
    path = str(tmp_path / "numbers.arrow")
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=batch_rows):
            writer.write_batch(batch)
    document = _encode(path, ResultFormat.JSON)
    rows = document[document.index(b'"rows":') + 7 : document.rindex(b',"row_count"')]
    assert rows == _value_by_value(path, keys=False)
    assert _encode(path, ResultFormat.NDJSON) == _value_by_value(path, keys=True)


@pytest.mark.parametrize("as_text", [False, True])
def test_slices_are_bounded_by_bytes_not_rows(tmp_path, as_text):
    path = _store(tmp_path, "SELECT repeat('x', 1000) || range AS wide FROM range(20000)", 20000)
    reader = pa.ipc.open_file(pa.OSFile(path, "rb"))
    slices = list(encoders._batches(reader, 0, None, encoders.SLICE_BYTES, as_text))
    assert len(slices) > 1
    assert sum(s.num_rows for s in slices) == 20000
    assert max(s.nbytes for s in slices) <= 2 * encoders.SLICE_BYTES


def test_text_slices_count_dictionary_values_spelled_out(tmp_path):
    """50,000 rows of one 1,000-character value: 200 KB of Arrow, 50 MB once spelled out. A text
    format gets slices of a few megabytes of text; Arrow keeps the batch as stored."""
    path = tmp_path / "dictionary.arrow"
    table = pa.table({"v": pa.array(["x" * 1000] * 50_000).dictionary_encode()})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    reader = pa.ipc.open_file(pa.OSFile(str(path), "rb"))
    as_text = list(encoders._batches(reader, 0, None, encoders.SLICE_BYTES, as_text=True))
    spelled_out = [s.column(0).dictionary_decode().nbytes for s in as_text]
    assert len(as_text) > 10 and max(spelled_out) <= 2 * encoders.SLICE_BYTES
    assert len(list(encoders._batches(reader, 0, None, encoders.SLICE_BYTES, as_text=False))) == 1


@pytest.mark.parametrize(
    "fmt", [ResultFormat.JSON, ResultFormat.RECORDS, ResultFormat.NDJSON, ResultFormat.CSV]
)
def test_slices_encoded_on_a_pool_give_the_same_bytes_in_order(tmp_path, fmt):
    """Tiny slices (hundreds of them) on three threads: the body equals the one-thread body."""
    path = _store(tmp_path, FAST_PATH_SQL.replace("FROM (VALUES", "FROM range(60), (VALUES"), 7)
    alone = _encode(path, fmt)
    with ThreadPoolExecutor(3) as pool:
        chunks = encode_result(pa.OSFile(path, "rb"), fmt, slice_bytes=64, pool=pool)
        assert b"".join(chunks) == alone
        stopped = encode_result(pa.OSFile(path, "rb"), fmt, slice_bytes=64, pool=pool)
        next(stopped)
        stopped.close()  # a client gone mid-body: the slices not yet started are dropped


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", [None, "Europe/Berlin"])
def test_timestamp_text_has_a_t_between_date_and_time_in_every_year(unit, tz):
    """The separator is overwritten in place at index 10; years Arrow spells with more or fewer
    than four digits (or a sign) have it elsewhere, and there it is found (before, index 10 was
    replaced whatever it held: ``-0249-10-1T 19:33:20``)."""
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    if unit == "ns":  # nanoseconds reach the years 1677 to 2262 only
        seconds = [0, -9_000_000_000, 9_000_000_000, None, 1711848600, -1]
        wide = [*seconds, -1]
    else:
        seconds = [0, -62135596800, 253402300799, None, 1711848600, -1]
        wide = [*seconds, 2 * 253402300800, 2 * -62135596800]  # years 18029 and -1968
    for values in (seconds, wide, [None, None], []):
        raw = [None if s is None else s * per_second for s in values]
        column = pa.array(raw, pa.int64()).cast(pa.timestamp(unit, tz))
        for candidate in (column, column[1:]):
            naive = candidate.cast(pa.timestamp(unit)) if tz else candidate
            spelled = pc.cast(naive, pa.string()).to_pylist()
            expected = [None if text is None else text.replace(" ", "T", 1) for text in spelled]
            assert spell(candidate, iso=True).texts.to_pylist() == expected


_UNITS_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


@settings(max_examples=150, deadline=None)
@given(
    unit=st.sampled_from(["day", "s", "ms", "us", "ns"]),
    tz=st.sampled_from([None, "UTC", "Asia/Kolkata"]),
    start=st.integers(-719_162, 2_932_896),
    steps=st.lists(st.one_of(st.none(), st.integers(0, 10**15)), min_size=1, max_size=40),
    step=st.sampled_from([1, 997, 10**6, 86_400 * 10**6]),
    cut=st.integers(0, 3),
)
def test_laid_out_iso_texts_are_arrows_with_a_t(unit, tz, start, steps, step, cut):
    """A date or timestamp column spanning few days is spelled by numpy from tables
    (temporal_texts._iso_laid_out): for every unit, value, null and slice offset, that is
    Arrow's text with its ``T``; and such a column does take that path."""
    from data_server.temporal_texts import _iso_laid_out

    if unit == "day":
        data_type, storage, per_day = pa.date32(), pa.int32(), 1
        first, last = -719_162, 2_932_896
    else:
        data_type, storage = pa.timestamp(unit, tz), pa.int64()
        per_day = 86_400 * _UNITS_PER_SECOND[unit]
        first = max(-719_162 * per_day, -(2**63) + 2)  # DuckDB infinities: the extremes
        last = min((2_932_896 + 1) * per_day - 1, 2**63 - 2)
    origin = min(max(start * per_day, first), last)
    # values within 40 days of the origin (the last value Arrow spells, at most)
    raw = [None if n is None else min(origin + n * step % (40 * per_day), last) for n in steps]
    column = pa.array(raw, storage).view(data_type).slice(min(cut, len(raw) - 1))
    naive = column.cast(pa.timestamp(unit)) if tz and unit != "day" else column
    expected = [
        None if text is None else text.replace(" ", "T", 1)
        for text in pc.cast(naive, pa.string()).to_pylist()
    ]
    assert spell(column, iso=True).texts.to_pylist() == expected
    days = {value // per_day for value in naive.view(storage).to_pylist() if value is not None}
    if days and max(days) - min(days) < len(naive):
        assert _iso_laid_out(naive) is not None


# DuckDB's infinities (PostgreSQL's too, read through a remote datasource) and years Arrow cannot
# spell, top level and nested; each once where rows 1 and 2 fall in one batch and once apart.
FAR_TIMES_SQL = """
SELECT * FROM (VALUES
  (1, 'infinity'::TIMESTAMP, '-infinity'::TIMESTAMP_NS, 'infinity'::TIMESTAMPTZ,
   'infinity'::DATE, ['-infinity'::TIMESTAMP], {'d': 'infinity'::DATE},
   MAP {'k': '-infinity'::TIMESTAMPTZ}),
  (2, TIMESTAMP '12345-01-01 10:00:00', TIMESTAMP_NS '2024-01-01 00:00:00.5',
   TIMESTAMPTZ '2024-03-31 01:30:00+02', '5877642-06-25'::DATE, [TIMESTAMP '2024-01-01'],
   {'d': '5877641-06-25 (BC)'::DATE}, MAP {'k': TIMESTAMPTZ '2024-01-01 00:00:00+00'}),
  (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
) AS t(n, ts, ns, tz, day, tss, s, m)
"""
FAR_TIMES_JSON = [
    [
        1,
        "infinity",
        "-infinity",
        "infinity",
        "infinity",
        ["-infinity"],
        {"d": "infinity"},
        [["k", "-infinity"]],
    ],
    [
        2,
        "12345-01-01T10:00:00.000000",
        "2024-01-01T00:00:00.500000000",
        "2024-03-30T23:30:00.000000+00:00",
        "5877642-06-25",
        ["2024-01-01T00:00:00.000000"],
        {"d": "-5877640-06-25"},
        [["k", "2024-01-01T00:00:00.000000+00:00"]],
    ],
    [3, None, None, None, None, None, None, None],
]


@pytest.mark.parametrize("batch_rows", [1, 3])
def test_infinities_and_far_years_are_spelled_in_every_text_format(tmp_path, batch_rows):
    """Before: ``"<value outTof range: 9223372036854775807>"``, a zoned infinity in the year
    32103, and a 500 (or a body cut short) for one nested in a list."""
    path = _store(tmp_path, FAR_TIMES_SQL, batch_rows)
    assert json.loads(_encode(path, ResultFormat.JSON))["rows"] == FAR_TIMES_JSON
    names = ["n", "ts", "ns", "tz", "day", "tss", "s", "m"]
    expected_objects = [dict(zip(names, row, strict=True)) for row in FAR_TIMES_JSON]
    assert json.loads(_encode(path, ResultFormat.RECORDS)) == expected_objects
    ndjson = _encode(path, ResultFormat.NDJSON)
    assert ndjson == _value_by_value(path, keys=True)
    assert [json.loads(line) for line in ndjson.splitlines()] == expected_objects
    assert _encode(path, ResultFormat.JSON, offset=1, limit=1).count(b"5877642-06-25") == 1
    csv = io.BytesIO(_encode(path, ResultFormat.CSV))
    cells = pa_csv.read_csv(csv, convert_options=_AS_TEXT).to_pylist()
    assert [[row[name] for name in names[1:5]] for row in cells] == [
        ["infinity", "-infinity", "infinity", "infinity"],
        [
            "12345-01-01 10:00:00.000000",
            "2024-01-01 00:00:00.500000000",
            "2024-03-30 23:30:00.000000Z",
            "5877642-06-25",
        ],
        ["", "", "", ""],  # empty cells
    ]
    assert json.loads(cells[0]["m"]) == [["k", "-infinity"]]


def _in_every_text_format(path: str, names: list[str], expected: list[list]) -> list[dict]:
    """Asserts that JSON (whole, and a window of its first row), records and NDJSON (column-wise
    as value by value) give ``expected``, the rows of ``names``; returns the CSV's cells, read
    as text."""
    assert json.loads(_encode(path, ResultFormat.JSON))["rows"] == expected
    windowed = json.loads(_encode(path, ResultFormat.JSON, offset=0, limit=1))["rows"]
    assert windowed == expected[:1]
    expected_objects = [dict(zip(names, row, strict=True)) for row in expected]
    assert json.loads(_encode(path, ResultFormat.RECORDS)) == expected_objects
    ndjson = _encode(path, ResultFormat.NDJSON)
    assert ndjson == _value_by_value(path, keys=True)
    assert [json.loads(line) for line in ndjson.splitlines()] == expected_objects
    csv = io.BytesIO(_encode(path, ResultFormat.CSV))
    text = pa_csv.ConvertOptions(column_types={name: pa.string() for name in names})
    return pa_csv.read_csv(csv, convert_options=text).to_pylist()


# The end of a day, which DuckDB's TIME and PostgreSQL's ``time`` hold, top level and nested;
# and nested times, which once lost their fraction (``"12:00:00"``).
END_OF_DAY_SQL = """
SELECT * FROM (VALUES
  (1, '24:00:00'::TIME, ['24:00:00'::TIME], {'x': '24:00:00'::TIME}),
  (2, '12:00:00'::TIME, ['12:00:00.5'::TIME], {'x': NULL::TIME}),
  (3, NULL, NULL, NULL)
) AS t(n, t, l, s)
"""
END_OF_DAY_JSON = [
    [1, "24:00:00.000000", ["24:00:00.000000"], {"x": "24:00:00.000000"}],
    [2, "12:00:00.000000", ["12:00:00.500000"], {"x": None}],
    [3, None, None, None],
]


@pytest.mark.parametrize("batch_rows", [1, 3])
def test_the_end_of_a_day_and_nested_times_are_spelled_as_times_in_every_text_format(
    tmp_path, batch_rows
):
    """Before: ``"<value out of range: 86400000000>"`` at top level (a bare cell in CSV), and
    ``"00:00:00"``, the start of the day, nested (Python's time wraps)."""
    path = _store(tmp_path, END_OF_DAY_SQL, batch_rows)
    cells = _in_every_text_format(path, ["n", "t", "l", "s"], END_OF_DAY_JSON)
    assert [row["t"] for row in cells] == ["24:00:00.000000", "12:00:00.000000", ""]
    assert json.loads(cells[0]["l"]) == ["24:00:00.000000"]


# Decimals Arrow writes with an exponent (0E-10), top level and nested, and single-precision
# floats, which went out with their double's digits (1.100000023841858).
NUMBERS_SQL = """
SELECT * FROM (VALUES
  (1, 0::DECIMAL(30, 10), [0::DECIMAL(30, 10), 1e-12::DECIMAL(38, 12)],
   -0.0000000001::DECIMAL(30, 10), 1.1::FLOAT, [1.1::FLOAT, 'nan'::FLOAT], {'f': 3.4e38::FLOAT}),
  (2, 12.5::DECIMAL(30, 10), NULL, 2::DECIMAL(30, 10), 7.630131e-6::FLOAT, [7e13::FLOAT], NULL)
) AS t(n, d, l, neg, f, fl, s)
"""
NUMBERS_JSON = [
    [
        1,
        "0.0000000000",
        ["0.000000000000", "0.000000000001"],  # the list's type: DECIMAL(38, 12)
        "-0.0000000001",
        1.1,
        [1.1, "NaN"],
        {"f": 3.4e38},
    ],
    [2, "12.5000000000", None, "2.0000000000", 7.630131e-6, [7e13], None],
]


@pytest.mark.parametrize("batch_rows", [1, 2])
def test_decimals_keep_their_scales_digits_and_floats_their_own_in_every_text_format(
    tmp_path, batch_rows
):
    """Before: ``"0E-10"`` and ``"-1E-10"``, nested ones too, and a FLOAT's double digits."""
    path = _store(tmp_path, NUMBERS_SQL, batch_rows)
    cells = _in_every_text_format(path, ["n", "d", "l", "neg", "f", "fl", "s"], NUMBERS_JSON)
    for result_format in (ResultFormat.JSON, ResultFormat.RECORDS, ResultFormat.NDJSON):
        assert b"1.100000023841858" not in _encode(path, result_format)
    assert [(row["d"], row["neg"]) for row in cells] == [
        ("0.0000000000", "-0.0000000001"),
        ("12.5000000000", "2.0000000000"),
    ]
    assert json.loads(cells[0]["l"]) == ["0.000000000000", "0.000000000001"]


_AS_TEXT = pa_csv.ConvertOptions(
    column_types={name: pa.string() for name in ["ts", "ns", "tz", "day", "tss", "s", "m"]}
)


def test_csv_spells_ordinary_dates_and_timestamps_as_arrows_writer_does():
    """Ordinary values (the years 1 to 9999, their edges included) still go to Arrow's writer
    as they are, a zone's offset included: only a slice holding a far value is spelled by
    data_server/temporal_texts.py (its cells then quoted, as Arrow quotes text)."""
    table = pa.table(
        {
            "naive": pa.array([0, 1711848600123456, None], pa.timestamp("us")),
            "seconds": pa.array([-62135596800, 253402300799, 0], pa.timestamp("s")),
            "berlin": pa.array([1711848600000000000, None, 0], pa.timestamp("ns", "Europe/Berlin")),
            "utc": pa.array([1711848600000000, 0, None], pa.timestamp("us", "UTC")),
            "day": pa.array([19782, None, -719162], pa.date32()),
        }
    )
    written = io.BytesIO()
    pa_csv.write_csv(table, written)
    slices = iter(table.to_batches(max_chunksize=2))
    encoded = b"".join(bytes(chunk) for chunk in encoders._csv(table.schema, slices, None))
    assert encoded == written.getvalue()


def test_a_union_travels_in_parquet_as_its_json_text(tmp_path):
    """Parquet has no union type: before, any result holding one answered 500 as Parquet."""
    path = _store(
        tmp_path,
        """
        SELECT union_value(k := 1)::UNION(k INT, s VARCHAR) AS v,
               [union_value(s := 'x')::UNION(k INT, s VARCHAR)] AS l, 7 AS n
        """,
    )
    table = pq.read_table(io.BytesIO(_encode(path, ResultFormat.PARQUET)))
    assert table.schema.types == [pa.string(), pa.string(), pa.int32()]
    assert table.to_pylist() == [{"v": "1", "l": '["x"]', "n": 7}]
    assert json.loads(_encode(path, ResultFormat.RECORDS)) == [{"v": 1, "l": ["x"], "n": 7}]


@pytest.mark.parametrize("zone", ["UTC", "America/St_Johns"])
def test_zoned_timestamps_past_year_32767_are_spelled_in_utc_in_csv(tmp_path, zone):
    """Arrow's own cast wrapped such a year (40000 became -25536) or failed outright (a 500,
    or a body cut short): they are spelled by numpy, in UTC with ``Z``."""
    path = str(tmp_path / "zoned.arrow")
    seconds = [-62135596800 - 86400, 1_199_000_000, 32_100_000_000_00, 1_199_000_000_000]
    column = pa.array([s * 10**6 for s in seconds], pa.int64()).cast(pa.timestamp("us", zone))
    table = pa.table({"at": column})
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    cells = _encode(path, ResultFormat.CSV).decode().splitlines()[1:]
    local = pc.cast(column[1:2], pa.string())[0].as_py()  # an ordinary one: in its zone
    assert cells == [
        '"0000-12-31 00:00:00.000000Z"',  # 1 BC: ISO 8601's year 0
        f'"{local}"',
        '"103690-11-06 18:40:00.000000Z"',
        '"39964-10-18 19:33:20.000000Z"',
    ]
    rows = json.loads(_encode(path, ResultFormat.JSON))["rows"]
    assert [row[0] for row in rows] == [
        "0000-12-31T00:00:00.000000+00:00",
        "2007-12-30T07:33:20.000000+00:00",
        "103690-11-06T18:40:00.000000+00:00",
        "39964-10-18T19:33:20.000000+00:00",
    ]


def test_dates_and_timestamps_inside_a_union_follow_the_columns_rule(tmp_path):
    """A union's members were given to Python as they are: an infinity or a far year answered
    500 in every text format and Parquet, and an ordinary timestamp lost its fraction."""
    path = _store(
        tmp_path,
        """
        SELECT CASE
            WHEN range = 0 THEN union_value(t := TIMESTAMP 'infinity')::UNION(t TIMESTAMP, d DATE)
            WHEN range = 1 THEN union_value(d := DATE '10000-01-01')::UNION(t TIMESTAMP, d DATE)
            ELSE union_value(t := TIMESTAMP '2024-01-01')::UNION(t TIMESTAMP, d DATE) END AS u
        FROM range(3)
        """,
    )
    expected = ["infinity", "10000-01-01", "2024-01-01T00:00:00.000000"]
    assert [row[0] for row in json.loads(_encode(path, ResultFormat.JSON))["rows"]] == expected
    parquet = pq.read_table(io.BytesIO(_encode(path, ResultFormat.PARQUET)))
    assert parquet.column("u").to_pylist() == [orjson.dumps(v).decode() for v in expected]


def test_a_seconds_timestamp_with_an_infinity_travels_in_parquet(tmp_path):
    """Parquet has no seconds; Arrow's writer scaled them to milliseconds and failed on an
    infinity, whose largest integer has no thousandfold (a 500 or a body cut short)."""
    path = _store(
        tmp_path,
        "SELECT * FROM (VALUES ('infinity'::TIMESTAMP_S), ('-infinity'::TIMESTAMP_S),"
        " (TIMESTAMP_S '2024-03-31 01:30:00'), (NULL)) AS t(moment)",
    )
    table = pq.read_table(io.BytesIO(_encode(path, ResultFormat.PARQUET)))
    assert table.schema.types == [pa.timestamp("ms")]
    largest = 2**63 - 1
    assert table.column("moment").cast(pa.int64()).to_pylist() == [
        largest,
        -largest,
        1711848600000,
        None,
    ]


def test_laid_out_texts_give_way_where_string_offsets_would_overflow(monkeypatch):
    """Offsets of a string array are 32-bit: texts that would reach past them are left to
    Arrow's cast instead of wrapping around (shown with the reach made small)."""
    from data_server import temporal_texts

    column = pa.array([1_700_000_000 + n for n in range(10)], pa.int64()).view(pa.timestamp("s"))
    assert temporal_texts._iso_laid_out(column) is not None
    monkeypatch.setattr(temporal_texts, "_OFFSETS_REACH", 19 * 10)
    assert temporal_texts._iso_laid_out(column) is None
    assert spell(column, iso=True).texts.to_pylist()[0] == "2023-11-14T22:13:20"


def test_years_before_1_keep_four_digits_after_their_sign(tmp_path):
    """numpy spells 44 BC ``-043``; ISO 8601's expanded years (and docs/result-formats.md) say
    ``-0043`` (1 BC is year 0), in every text format and inside nested values."""
    path = _store(
        tmp_path,
        "SELECT DATE '0044-03-15 (BC)' AS d, (DATE '0001-01-01' - 400) AS near,"
        " TIMESTAMP '0044-03-15 (BC) 10:00:00' AS t, [DATE '0999-01-01 (BC)'] AS l,"
        " DATE '1000-01-01 (BC)' AS far, DATE '0001-01-01 (BC)' AS zero",
    )
    (row,) = json.loads(_encode(path, ResultFormat.JSON))["rows"]
    assert row == [
        "-0043-03-15",
        "-0001-11-28",
        "-0043-03-15T10:00:00.000000",
        ["-0998-01-01"],
        "-0999-01-01",
        "0000-01-01",
    ]
    csv_text = _encode(path, ResultFormat.CSV).decode()
    assert '"-0043-03-15 10:00:00.000000"' in csv_text and "-0043-03-15" in csv_text
