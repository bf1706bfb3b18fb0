"""Decimals and single-precision floats as JSON and CSV spell them.

Arrow's cast of a decimal to text writes a value whose exponent, adjusted, is below -6 in
scientific notation, as Java's BigDecimal does: ``0E-10`` for a zero of scale 10, ``-1E-10``. The
mapping promises a decimal's text with exactly its scale's digits (docs/result-formats.md), so
those values are written out. A ``float32`` handed to Python or Arrow as a double is spelled by its
double's digits (``1.100000023841858`` for ``1.1``); as the double its shortest text reads back
to, it is spelled as written.
"""

from __future__ import annotations

import decimal

import pyarrow as pa
import pyarrow.compute as pc

# Arrow writes plain digits down to this scale whatever the value; beyond it, a value below a
# millionth, zero included, gets an exponent.
_PLAIN_UP_TO_SCALE = 6
_MILLIONTH = decimal.Decimal("0.000001")


def decimal_texts(column: pa.Array) -> pa.Array:
    """A decimal column's texts, each with exactly its scale's digits after the point: zeros
    (money columns hold many) by one kernel, only other values below a millionth one by one."""
    texts = pc.cast(column, pa.string())
    small = _written_with_exponent(column)
    if small is None:
        return texts
    scale = column.type.scale
    zero = pc.fill_null(pc.equal(column, pa.scalar(decimal.Decimal(0), column.type)), False)
    texts = pc.if_else(zero, pa.scalar("0." + "0" * scale), texts)
    rest = pc.and_(small, pc.invert(zero))
    if not pc.any(rest).as_py():
        return texts
    written_out = [format(value, "f") for value in pc.filter(column, rest).to_pylist()]
    return pc.replace_with_mask(texts, rest, pa.array(written_out, pa.string()))


def ordinary_decimals(column: pa.Array) -> bool:
    """Whether Arrow writes every value of a decimal column without an exponent."""
    return _written_with_exponent(column) is None


def _written_with_exponent(column: pa.Array) -> pa.Array | None:
    """Which values of a decimal column Arrow writes with an exponent; None when none: by one
    comparison, no text made."""
    if column.type.scale <= _PLAIN_UP_TO_SCALE:
        return None
    millionth = pa.scalar(_MILLIONTH, column.type)
    small = pc.fill_null(pc.less(pc.abs(column), millionth), False)
    return small if pc.any(small).as_py() else None


def float32_widened(column: pa.Array) -> pa.Array:
    """A ``float32`` column as the doubles its values' shortest texts read back to."""
    return pc.cast(pc.cast(column, pa.string()), pa.float64())
