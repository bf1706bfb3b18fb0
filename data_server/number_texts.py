"""Decimals and single-precision floats as JSON and CSV spell them.

Arrow's cast of a decimal to text writes a value whose exponent, adjusted, is below -6 in
scientific notation, as Java's BigDecimal does: ``0E-10`` for a zero of scale 10, ``-1E-10``. The
mapping promises a decimal's text with exactly its scale's digits (docs/result-formats.md), so
those values are written out. A ``float32`` handed to Python or Arrow as a double is spelled by its
double's digits (``1.100000023841858`` for ``1.1``); as the double its shortest text reads back
to, it is spelled as written.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

# Arrow writes plain digits down to this scale whatever the value; beyond it, small values (and
# zero) get an exponent.
_PLAIN_UP_TO_SCALE = 6


def decimal_texts(column: pa.Array) -> pa.Array:
    """A decimal column's texts, each with exactly its scale's digits after the point."""
    texts = pc.cast(column, pa.string())
    exponent = _with_exponent(column, texts)
    if exponent is None:
        return texts
    written_out = [format(value, "f") for value in pc.filter(column, exponent).to_pylist()]
    return pc.replace_with_mask(texts, exponent, pa.array(written_out, pa.string()))


def ordinary_decimals(column: pa.Array) -> bool:
    """Whether Arrow writes every value of a decimal column without an exponent."""
    return _with_exponent(column, pc.cast(column, pa.string())) is None


def _with_exponent(column: pa.Array, texts: pa.Array) -> pa.Array | None:
    """Which of Arrow's ``texts`` of a decimal column hold an exponent; None when none does."""
    if column.type.scale <= _PLAIN_UP_TO_SCALE:
        return None
    exponent = pc.fill_null(pc.match_substring(texts, "E"), False)
    return exponent if pc.any(exponent).as_py() else None


def float32_widened(column: pa.Array) -> pa.Array:
    """A ``float32`` column as the doubles its values' shortest texts read back to."""
    return pc.cast(pc.cast(column, pa.string()), pa.float64())
