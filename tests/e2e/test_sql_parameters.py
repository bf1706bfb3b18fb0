"""Cluvio parameters end to end: SQL + parameters in, rows out, through real server processes.

The events table puts rows on both sides of the 2024 DST changes of Europe/Berlin (31 March,
27 October) and America/New_York (10 March, 3 November), so ranges, zone conversions and date
truncation are checked where an off-by-one-hour mistake would show.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import duckdb
import httpx
import pytest

from tests.support.client import DataferryClient
from tests.support.log_watch import remember
from tests.support.processes import running_region

pytestmark = pytest.mark.e2e

EVENTS_SQL = """
CREATE TABLE events AS
SELECT *, timezone('UTC', happened_tz) AS happened_at,
       timezone('Europe/Berlin', happened_tz) AS berlin_wall,
       timezone('America/New_York', happened_tz) AS ny_wall,
       strftime(timezone('UTC', happened_tz), '%Y-%m-%dT%H:%M:%SZ') AS happened_text,
       strftime(timezone('Europe/Berlin', happened_tz), '%Y-%m-%dT%H:%M:%S') AS berlin_wall_text,
       CAST(day AS VARCHAR) AS day_text
FROM (VALUES
  (1, 'DE', 10.5, 1, TIMESTAMPTZ '2024-03-30 22:30:00+00', DATE '2024-03-30', TRUE),
  (2, 'DE', 20.0, 2, TIMESTAMPTZ '2024-03-30 23:30:00+00', DATE '2024-03-31', FALSE),
  (3, 'FR', 30.0, 3, TIMESTAMPTZ '2024-03-31 00:30:00+00', DATE '2024-03-31', TRUE),
  (4, 'US', 40.0, 4, TIMESTAMPTZ '2024-03-31 01:30:00+00', DATE '2024-04-01', NULL),
  (5, 'US', 50.0, 5, TIMESTAMPTZ '2024-03-10 06:30:00+00', DATE '2024-03-10', TRUE),
  (6, NULL, NULL, NULL, TIMESTAMPTZ '2024-03-10 07:30:00+00', DATE '2024-03-10', FALSE),
  (7, 'O''Brien', 70.0, 7, TIMESTAMPTZ '2024-11-03 05:30:00+00', DATE '2024-11-03', TRUE),
  (8, '''; DROP TABLE x; --', 80.0, 8, TIMESTAMPTZ '2024-11-03 06:30:00+00', DATE '2024-11-03', TRUE),
  (9, '1', 90.0, 9, TIMESTAMPTZ '2024-10-27 00:30:00+00', DATE '2024-10-27', FALSE),
  (10, 'Zürich ✓', 100.0, 10, TIMESTAMPTZ '2024-10-27 01:30:00+00', DATE '2024-10-28', TRUE)
) AS v(id, country, amount, qty, happened_tz, day, flag)
"""

INJECTIONS = [
    "'; DROP TABLE x; --",
    ") OR 1=1 --",
    "$1",
    "{timerange}",
    "[snippet]",
    "' OR '1'='1",
    "Zürich ✓ 😀 \u202e \u200b \ufeff",  # NUL is refused before binding: tests/shared/test_http_limits.py
    "x" * 1_000_000,
]
WORDS = ["plain", *INJECTIONS]


def unix(moment: str) -> int:
    return int(datetime.fromisoformat(moment).timestamp())


def span(start: str, end: str) -> str:
    return f"{unix(start)}~{unix(end)}"


def pick(name: str, *values) -> dict:
    return {"filters": [{"variable_name": name, "selected_values": list(values)}]}


ALL_IDS = [[i] for i in range(1, 11)]
IDS = "SELECT id FROM events WHERE {} ORDER BY id"
BUCKETS = (
    "SELECT CAST({} AS VARCHAR) AS bucket, count(*) AS n FROM events WHERE id IN ({}) "
    "GROUP BY 1 ORDER BY 1"
)
SHIFTED = "{[happened_at + INTERVAL 17 SECOND]:aggregation}"
BERLIN_DAY_MARCH_31 = span("2024-03-30T23:00:00+00:00", "2024-03-31T22:00:00+00:00")  # 23 hours
NY_DAY_MARCH_10 = span("2024-03-10T05:00:00+00:00", "2024-03-11T04:00:00+00:00")  # 23 hours
NY_DAY_NOVEMBER_3 = span("2024-11-03T04:00:00+00:00", "2024-11-04T05:00:00+00:00")  # 25 hours
TWO_HOURS = span("2024-03-30T23:30:00+00:00", "2024-03-31T01:30:00+00:00")

# (case id, datasource zone, SQL, parameters, expected JSON rows)
CASES = [
    # --- {col=timerange}: start inclusive, end exclusive; no range is TRUE
    ("range-tstz", "UTC", IDS.format("{happened_tz=timerange}"), {"timerange": TWO_HOURS}, [[2], [3]]),
    ("range-naive", "UTC", IDS.format("{happened_at=timerange}"), {"timerange": TWO_HOURS}, [[2], [3]]),
    ("range-bracket", "UTC", IDS.format("{[happened_tz]=timerange}"), {"timerange": TWO_HOURS}, [[2], [3]]),
    ("range-absent", "UTC", IDS.format("{happened_tz=timerange}"), {}, ALL_IDS),
    ("range-date-column", "UTC", IDS.format("{day=timerange}"),
     {"timerange": span("2024-03-31T00:00:00+00:00", "2024-04-01T00:00:00+00:00")}, [[2], [3]]),
    ("range-next", "UTC", IDS.format("{happened_tz=timerange.next}"),
     {"timerange": span("2024-03-30T22:30:00+00:00", "2024-03-30T23:30:00+00:00")}, [[2]]),
    ("range-next-absent", "UTC", IDS.format("{happened_tz=timerange.next}"), {}, ALL_IDS),
    ("range-berlin-spring-day", "Europe/Berlin", IDS.format("{berlin_wall=timerange}"),
     {"timerange": BERLIN_DAY_MARCH_31}, [[2], [3], [4]]),
    ("range-ny-spring-day", "America/New_York", IDS.format("{ny_wall=timerange}"),
     {"timerange": NY_DAY_MARCH_10}, [[5], [6]]),
    ("range-ny-autumn-day", "UTC", IDS.format("{happened_tz=timerange}"),
     {"timerange": NY_DAY_NOVEMBER_3}, [[7], [8]]),
    ("range-ny-first-01:30", "UTC", IDS.format("{happened_tz=timerange}"),
     {"timerange": span("2024-11-03T05:00:00+00:00", "2024-11-03T06:00:00+00:00")}, [[7]]),
    ("range-custom-filter", "UTC", IDS.format("{happened_tz=period}"), pick("period", TWO_HOURS), [[2], [3]]),
    # ISO 8601 text: with an offset an instant, without one wall-clock time in the data zone
    ("range-iso-text", "UTC", IDS.format("{happened_text=timerange}"), {"timerange": TWO_HOURS}, [[2], [3]]),
    ("range-iso-text-date", "UTC", IDS.format("{day_text=timerange}"),
     {"timerange": span("2024-03-31T00:00:00+00:00", "2024-04-01T00:00:00+00:00")}, [[2], [3]]),
    ("range-iso-text-berlin-spring-day", "Europe/Berlin", IDS.format("{berlin_wall_text=timerange}"),
     {"timerange": BERLIN_DAY_MARCH_31}, [[2], [3], [4]]),
    ("range-iso-text-next", "UTC", IDS.format("{happened_text=timerange.next}"),
     {"timerange": span("2024-03-30T22:30:00+00:00", "2024-03-30T23:30:00+00:00")}, [[2]]),
    # --- {[expr]:tz}: wall-clock time in the zone, across DST gaps and repeats
    ("tz-berlin-spring", "UTC", "SELECT id, CAST({happened_tz:tz} AS VARCHAR) FROM events WHERE id <= 4 ORDER BY id",
     {"tz": "Europe/Berlin"}, [[1, "2024-03-30 23:30:00"], [2, "2024-03-31 00:30:00"],
                               [3, "2024-03-31 01:30:00"], [4, "2024-03-31 03:30:00"]]),
    ("tz-ny-both-changes", "UTC", "SELECT id, CAST({[happened_tz]:tz} AS VARCHAR) FROM events WHERE id BETWEEN 5 AND 8 ORDER BY id",
     {"tz": "America/New_York"}, [[5, "2024-03-10 01:30:00"], [6, "2024-03-10 03:30:00"],
                                  [7, "2024-11-03 01:30:00"], [8, "2024-11-03 01:30:00"]]),
    ("tz-default-is-data-zone", "Europe/Berlin", "SELECT id, CAST({happened_tz:tz} AS VARCHAR) FROM events WHERE id IN (9, 10) ORDER BY id",
     {}, [[9, "2024-10-27 02:30:00"], [10, "2024-10-27 02:30:00"]]),
    ("tz-naive-in-data-zone", "UTC", "SELECT id, CAST({happened_at:tz} AS VARCHAR) FROM events WHERE id IN (3, 4) ORDER BY id",
     {"tz": "Europe/Berlin"}, [[3, "2024-03-31 01:30:00"], [4, "2024-03-31 03:30:00"]]),
    # --- {col:aggregation}: every unit, the default, all_time, custom and fixed forms
    ("agg-second", "UTC", BUCKETS.format(SHIFTED, "1, 2, 3, 9"), {"aggregation": "second"},
     [["2024-03-30 22:30:17", 1], ["2024-03-30 23:30:17", 1], ["2024-03-31 00:30:17", 1], ["2024-10-27 00:30:17", 1]]),
    ("agg-minute", "UTC", BUCKETS.format(SHIFTED, "1, 2, 3, 9"), {"aggregation": "minute"},
     [["2024-03-30 22:30:00", 1], ["2024-03-30 23:30:00", 1], ["2024-03-31 00:30:00", 1], ["2024-10-27 00:30:00", 1]]),
    ("agg-hour", "UTC", BUCKETS.format("{happened_at:aggregation}", "1, 2, 3, 9"), {"aggregation": "hour"},
     [["2024-03-30 22:00:00", 1], ["2024-03-30 23:00:00", 1], ["2024-03-31 00:00:00", 1], ["2024-10-27 00:00:00", 1]]),
    ("agg-day", "UTC", BUCKETS.format("{happened_at:aggregation}", "1, 2, 3, 9"), {"aggregation": "day"},
     [["2024-03-30 00:00:00", 2], ["2024-03-31 00:00:00", 1], ["2024-10-27 00:00:00", 1]]),
    ("agg-week-starts-monday", "UTC", BUCKETS.format("{happened_at:aggregation}", "1, 2, 3, 9"), {"aggregation": "week"},
     [["2024-03-25 00:00:00", 3], ["2024-10-21 00:00:00", 1]]),
    ("agg-month", "UTC", BUCKETS.format("{happened_at:aggregation}", "1, 2, 3, 9"), {"aggregation": "month"},
     [["2024-03-01 00:00:00", 3], ["2024-10-01 00:00:00", 1]]),
    ("agg-quarter", "UTC", BUCKETS.format("{happened_at:aggregation}", "1, 2, 3, 9"), {"aggregation": "quarter"},
     [["2024-01-01 00:00:00", 3], ["2024-10-01 00:00:00", 1]]),
    ("agg-year", "UTC", BUCKETS.format("{happened_at:aggregation}", "1, 2, 3, 9"), {"aggregation": "year"},
     [["2024-01-01 00:00:00", 4]]),
    ("agg-all-time-one-group", "UTC", BUCKETS.format("{happened_at:aggregation}", "1, 2, 3, 9"), {"aggregation": "all_time"},
     [[None, 4]]),
    ("agg-default-is-day", "UTC", BUCKETS.format("{happened_at:aggregation}", "1, 2, 3, 9"), {},
     [["2024-03-30 00:00:00", 2], ["2024-03-31 00:00:00", 1], ["2024-10-27 00:00:00", 1]]),
    ("agg-date-column", "UTC", BUCKETS.format("{day:aggregation}", "3, 4"), {"aggregation": "month"},
     [["2024-03-01 00:00:00", 1], ["2024-04-01 00:00:00", 1]]),
    ("agg-custom-filter", "UTC", BUCKETS.format("{happened_at:granularity}", "1, 2, 3, 9"), pick("granularity", "month"),
     [["2024-03-01 00:00:00", 3], ["2024-10-01 00:00:00", 1]]),
    ("agg-custom-unselected-is-day", "UTC", BUCKETS.format("{happened_at:granularity}", "1, 2, 3, 9"), pick("granularity"),
     [["2024-03-30 00:00:00", 2], ["2024-03-31 00:00:00", 1], ["2024-10-27 00:00:00", 1]]),
    ("agg-fixed-week", "UTC", BUCKETS.format("{happened_at:week}", "1, 2, 3, 9"), {},
     [["2024-03-25 00:00:00", 3], ["2024-10-21 00:00:00", 1]]),
    ("agg-berlin-days", "UTC", BUCKETS.format("{[{happened_tz:tz}]:aggregation}", "1, 2, 3, 4"),
     {"tz": "Europe/Berlin", "aggregation": "day"}, [["2024-03-30 00:00:00", 1], ["2024-03-31 00:00:00", 3]]),
    ("agg-utc-days", "UTC", BUCKETS.format("{[{happened_tz:tz}]:aggregation}", "1, 2, 3, 4"),
     {"aggregation": "day"}, [["2024-03-30 00:00:00", 2], ["2024-03-31 00:00:00", 2]]),
    ("agg-ny-days", "UTC", BUCKETS.format("{[{happened_tz:tz}]:aggregation}", "5, 6, 7, 8"),
     {"tz": "America/New_York", "aggregation": "day"}, [["2024-03-10 00:00:00", 2], ["2024-11-03 00:00:00", 2]]),
    ("agg-berlin-repeated-hour", "UTC", BUCKETS.format("{[{happened_tz:tz}]:aggregation}", "9, 10"),
     {"tz": "Europe/Berlin", "aggregation": "hour"}, [["2024-10-27 02:00:00", 2]]),
    # --- {col=var}: one value =, several IN, none TRUE, NULL matches NULL
    ("filter-one", "UTC", IDS.format("{country=country}"), pick("country", "DE"), [[1], [2]]),
    ("filter-several", "UTC", IDS.format("{country=country}"), pick("country", "DE", "FR"), [[1], [2], [3]]),
    ("filter-none-selected", "UTC", IDS.format("{country=country}"), pick("country"), ALL_IDS),
    ("filter-not-sent", "UTC", IDS.format("{country=country}"), {}, ALL_IDS),
    ("filter-null", "UTC", IDS.format("{country=country}"), pick("country", None), [[6]]),
    ("filter-value-and-null", "UTC", IDS.format("{country=country}"), pick("country", "US", None), [[4], [5], [6]]),
    ("filter-number", "UTC", IDS.format("{qty=qty}"), pick("qty", 3), [[3]]),
    ("filter-numbers", "UTC", IDS.format("{qty=qty}"), pick("qty", 1, 5, 99), [[1], [5]]),
    ("filter-numeric-string-on-integer", "UTC", IDS.format("{qty=qty}"), pick("qty", "3"), [[3]]),
    ("filter-fraction", "UTC", IDS.format("{amount=amount}"), pick("amount", 10.5), [[1]]),
    ("filter-boolean", "UTC", IDS.format("{flag=flag}"), pick("flag", True), [[1], [3], [5], [7], [8], [10]]),
    ("filter-string-that-looks-numeric", "UTC", IDS.format("{country=country}"), pick("country", "1"), [[9]]),
    # an ad hoc variable's number is text, so it matches a text column as well
    ("filter-number-on-text", "UTC", IDS.format("{country=country}"), pick("country", 1), [[9]]),
    ("filter-numbers-on-text", "UTC", IDS.format("{country=country}"), pick("country", 1, 2), [[9]]),
    ("value-number-on-text", "UTC", "SELECT id FROM events WHERE country = {c.value} ORDER BY id", pick("c", 1), [[9]]),
    ("filter-quote-in-value", "UTC", IDS.format("{country=country}"), pick("country", "O'Brien"), [[7]]),
    ("filter-unicode", "UTC", IDS.format("{country=country}"), pick("country", "Zürich ✓"), [[10]]),
    ("filter-expression", "UTC", IDS.format("{[lower(country)]=country}"), pick("country", "de"), [[1], [2]]),
    ("filter-qualified-column", "UTC", "SELECT e.id FROM events e WHERE {e.country=country} ORDER BY 1",
     pick("country", "FR"), [[3]]),
    ("filter-negated", "UTC", IDS.format("NOT {country=country}"), pick("country", "DE"),
     [[3], [4], [5], [7], [8], [9], [10]]),
    ("filter-used-twice", "UTC", IDS.format("{country=country} AND {[country]=country}"), pick("country", "FR"), [[3]]),
    # --- {var.selector} values
    ("value-selected", "UTC", "SELECT {country.value} AS v, {country.selected} AS s", pick("country", "DE"), [["DE", True]]),
    ("value-nothing-selected", "UTC", "SELECT {country.value} IS NULL AS v, {country.selected} AS s", pick("country"),
     [[True, False]]),
    ("value-number", "UTC", "SELECT id FROM events WHERE qty > {min_qty.value} ORDER BY id", pick("min_qty", 8), [[9], [10]]),
    ("value-range-bounds", "UTC", "SELECT CAST({timerange.start} AS VARCHAR), CAST({timerange.end} AS VARCHAR), {timerange.selected}",
     {"timerange": TWO_HOURS}, [["2024-03-30 23:30:00+00", "2024-03-31 01:30:00+00", True]]),
    ("value-range-absent", "UTC", "SELECT {timerange.start} IS NULL, {timerange.selected}", {}, [[True, False]]),
    ("value-custom-range", "UTC", "SELECT CAST({period.end} AS VARCHAR)", pick("period", TWO_HOURS),
     [["2024-03-31 01:30:00+00"]]),
    ("value-aggregation-and-zone", "UTC", "SELECT {aggregation.value}, {tz.value}, {tz.selected}",
     {"aggregation": "week", "tz": "Europe/Berlin"}, [["week", "Europe/Berlin", True]]),
    ("value-zone-defaults-to-data-zone", "America/New_York", "SELECT {tz.value}, {tz.selected}", {},
     [["America/New_York", False]]),
    # --- text that is not a placeholder stays as written
    ("literal-and-comment-untouched", "UTC",
     "SELECT '{country=country}' AS t, count(*) AS n -- {nope=nope}\nFROM events WHERE {country=country}",
     pick("country", "DE"), [["{country=country}", 2]]),
    ("struct-literal-untouched", "UTC", "SELECT {'a': 1}.a AS a, {b: 2}.b AS b", {}, [[1, 2]]),
    ("snippet-holding-a-placeholder", "UTC", IDS.format("[de_only]"), pick("country", "DE"), [[1], [2]]),
]  # fmt: skip


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("parameters-region")
    env = {"DATAFERRY_WORKER_PROCESSES": "2", "DATAFERRY_POLL_INTERVAL_SECONDS": "0.05"}
    with running_region(cwd, env) as started:
        yield started


@pytest.fixture(scope="module")
def database(region, client):
    path = region.area(client.organization_id) / "events.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute(EVENTS_SQL)
        connection.execute("CREATE TABLE words (id INTEGER, word VARCHAR)")
        connection.executemany("INSERT INTO words VALUES (?, ?)", list(enumerate(WORDS, 1)))
    return path


@pytest.fixture(scope="module")
def datasources(client, database):
    """One datasource per data time zone, all reading the same file, and two snippets."""
    ids = {}
    for zone in ("UTC", "Europe/Berlin", "America/New_York"):
        ids[zone] = _post(
            client,
            "/datasources",
            "datasources",
            {
                "name": f"events {zone}",
                "database_type": "duckdb",
                "database": database.name,
                "data_time_zone": zone,
            },
        )
    _post(client, "/sql_snippets", "sql_snippets", {"name": "de_only", "sql": "{country=country}"})
    _post(client, "/sql_snippets", "sql_snippets", {"name": "snippet", "sql": "TRUE OR TRUE"})
    return ids


def _post(client: DataferryClient, path: str, kind: str, attributes: dict) -> str:
    response = client.http.post(
        f"{client.api_url}{path}",
        headers={**client.headers, "Content-Type": "application/vnd.api+json"},
        json={"data": {"type": kind, "attributes": attributes}},
    )
    assert response.status_code == 201, response.text
    return response.json()["data"]["id"]


def _rows(client: DataferryClient, datasource_id: str, sql: str, parameters: dict) -> list:
    response = client.query(datasource_id, sql, parameters=parameters, format="json")
    assert response.status_code == 200, response.text
    return response.json()["rows"]


@pytest.mark.parametrize(
    ("zone", "sql", "parameters", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_sql_and_parameters_give_the_expected_rows(
    client, datasources, zone, sql, parameters, expected
):
    assert _rows(client, datasources[zone], sql, parameters) == expected


def test_the_table_covers_every_form():
    assert len(CASES) >= 40
    text = " ".join(case[2] for case in CASES)
    for form in ("=timerange}", "=timerange.next}", "]=", ":tz}", "]:tz}", ":aggregation}"):
        assert form in text
    for selector in (".value}", ".selected}", ".start}", ".end}"):
        assert selector in text
    units = {case[3].get("aggregation") for case in CASES}
    assert {
        "second",
        "minute",
        "hour",
        "day",
        "week",
        "month",
        "quarter",
        "year",
        "all_time",
    } <= units


@pytest.mark.parametrize(
    "needle", INJECTIONS, ids=lambda value: value if len(value) < 30 else f"{len(value)} chars"
)
def test_injected_values_match_only_equal_rows(client, datasources, database, needle):
    """Every value position gives exactly the rows an equality match gives; nothing changes."""
    datasource = datasources["UTC"]
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    expected_id = WORDS.index(needle) + 1
    one = pick("needle", needle)
    several = pick("needle", needle, "plain")
    words = "SELECT id FROM words WHERE {} ORDER BY id"

    assert _rows(client, datasource, words.format("{word=needle}"), one) == [[expected_id]]
    assert _rows(client, datasource, words.format("{[word]=needle}"), several) == sorted(
        [[1], [expected_id]]
    )
    assert _rows(
        client,
        datasource,
        "SELECT id, length({needle.value}) = length(word) FROM words "
        "WHERE word = {needle.value} AND {needle.selected}",
        one,
    ) == [[expected_id, True]]
    assert _rows(client, datasource, "SELECT count(*) FROM words", {}) == [[len(WORDS)]]
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before


def test_owner_sees_the_sql_that_ran_and_its_values(client, datasources):
    run = client.run(datasources["UTC"], IDS.format("{country=country}"), pick("country", "DE"))
    shown = client.execution(run["execution_id"])
    assert shown["expanded_sql"] == ("SELECT id FROM events WHERE ((country) = $1) ORDER BY id")
    assert shown["bound_parameters"] == ["DE"]


def test_bad_parameters_are_refused_through_the_server(client, datasources):
    response = httpx.post(
        f"{client.api_url}/datasources/{datasources['UTC']}/executions",
        headers=client.headers,
        json={"sql_query": IDS.format("{day=timerange}"), "parameters": {"timerange": "5~1"}},
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["source"] == {"pointer": "/parameters/timerange"}


def test_bound_values_never_reach_the_logs(region, client, datasources):
    secret = "bound-value-9f1c2e7a"
    remember(secret)
    ok = client.run(datasources["UTC"], IDS.format("{country=country}"), pick("country", secret))
    failing = client.run(
        datasources["UTC"], "SELECT id FROM events WHERE qty = {q.value}", pick("q", secret)
    )
    assert client.wait_until_done(ok["execution_id"])["execution_status"] == "completed"
    failed = client.wait_until_done(failing["execution_id"])
    assert failed["execution_status"] == "failed"
    assert secret not in region.log()
    # DuckDB names the value it could not convert; the message names the parameter instead.
    assert secret not in failed["error_message"]
    assert "(the value of $1)" in failed["error_message"]
