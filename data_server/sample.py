"""The built-in sample datasource: a deterministic DuckDB file generated once per data server.

Every organisation's sample datasource reads the same file (read-only). Values come from integer
arithmetic on row numbers, not from a random generator, so every region and every run produce the
same rows, and a test can state expected answers.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import duckdb

logger = logging.getLogger(__name__)

SAMPLE_VERSION = 1

# Row counts at scale 1.0: about 4 million rows in all.
_BASE_ROWS = {"customers": 50_000, "products": 2_000, "orders": 600_000, "events": 1_500_000}

_SCRIPT = """
CREATE TABLE countries AS
SELECT * FROM (VALUES
    ('DE', 'Germany', 'Europe/Berlin'), ('FR', 'France', 'Europe/Paris'),
    ('GB', 'United Kingdom', 'Europe/London'), ('US', 'United States', 'America/New_York'),
    ('CA', 'Canada', 'America/Toronto'), ('JP', 'Japan', 'Asia/Tokyo'),
    ('BR', 'Brazil', 'America/Sao_Paulo'), ('CZ', 'Czech Republic', 'Europe/Prague')
) AS t(country_code, country_name, time_zone);

CREATE TABLE customers AS
SELECT
    i::INTEGER AS customer_id,
    'Customer ' || i AS name,
    'customer' || i || '@example.com' AS email,
    (['DE', 'FR', 'GB', 'US', 'CA', 'JP', 'BR', 'CZ'])[1 + (i * 7919) % 8] AS country_code,
    (['consumer', 'small_business', 'enterprise'])[1 + (i * 104729) % 3] AS segment,
    DATE '2020-01-01' + ((i * 2654435761) % 1826)::INTEGER AS signup_date
FROM range(1, {customers} + 1) AS r(i);

CREATE TABLE products AS
SELECT
    i::INTEGER AS product_id,
    'Product ' || i AS name,
    (['books', 'electronics', 'garden', 'toys', 'clothing', 'food'])[1 + (i * 31) % 6] AS category,
    (1 + (i * 2654435761) % 50000 / 100.0)::DECIMAL(10, 2) AS price
FROM range(1, {products} + 1) AS r(i);

CREATE TABLE orders AS
SELECT
    i::BIGINT AS order_id,
    (1 + (i * 2654435761) % {customers})::INTEGER AS customer_id,
    TIMESTAMP '2023-01-01 00:00:00'
        + to_seconds(((i * 40503) % 63072000)::BIGINT) AS ordered_at,
    (['completed', 'completed', 'completed', 'shipped', 'cancelled', 'returned'])[1 + (i * 13) % 6]
        AS status,
    (['web', 'mobile', 'store'])[1 + (i * 17) % 3] AS channel
FROM range(1, {orders} + 1) AS r(i);

CREATE TABLE order_items AS
SELECT
    o.order_id,
    n::INTEGER AS line_number,
    (1 + (o.order_id * 7 + n * 104729) % {products})::INTEGER AS product_id,
    (1 + (o.order_id + n) % 5)::INTEGER AS quantity
FROM orders AS o, range(1, 1 + 1 + o.order_id % 4) AS r(n);

CREATE TABLE events AS
SELECT
    i::BIGINT AS event_id,
    (1 + (i * 48271) % {customers})::INTEGER AS customer_id,
    TIMESTAMP '2023-01-01 00:00:00'
        + to_seconds(((i * 69621) % 63072000)::BIGINT) AS occurred_at,
    (['page_view', 'page_view', 'page_view', 'search', 'add_to_cart', 'checkout'])[1 + (i * 11) % 6]
        AS event_type,
    (['/', '/products', '/cart', '/checkout', '/account', '/help'])[1 + (i * 19) % 6] AS page
FROM range(1, {events} + 1) AS r(i);
"""


def sample_database_path(state_dir: Path, scale: float) -> Path:
    return state_dir / "sample" / f"sample-v{SAMPLE_VERSION}-scale{scale:g}.duckdb"


def ensure_sample_database(state_dir: Path, scale: float) -> Path:
    """Generate the sample file unless it exists; concurrent callers never see a partial file.
    Processes write drafts of their own (named by pid); a process's threads take turns, since
    they would share one draft."""
    path = sample_database_path(state_dir, scale)
    if path.exists():
        return path
    with _generating:
        if path.exists():  # another thread generated it meanwhile
            return path
        return _generate(path, scale)


_generating = threading.Lock()


def _generate(path: Path, scale: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_drafts(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    counts = {name: max(1, int(rows * scale)) for name, rows in _BASE_ROWS.items()}
    logger.info("generating sample datasource scale=%s at %s", scale, path)
    try:
        _remove_draft(tmp)
        with duckdb.connect(str(tmp)) as connection:
            connection.execute(_SCRIPT.format(**counts))
            connection.execute("CHECKPOINT")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        _remove_draft(tmp)
    return path


def _remove_draft(tmp: Path) -> None:
    tmp.unlink(missing_ok=True)
    tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)


def _remove_abandoned_drafts(path: Path) -> None:
    """Drafts of processes that died mid-generation (killed, out of memory) would stay for ever:
    each is named after its writer's pid, so one whose writer is gone is removed."""
    for draft in path.parent.glob(f".{path.name}.*.tmp"):
        pid = draft.name.removeprefix(f".{path.name}.").removesuffix(".tmp")
        if pid.isdigit() and not _process_exists(int(pid)):
            logger.info("removing an abandoned sample draft %s", draft.name)
            _remove_draft(draft)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True
