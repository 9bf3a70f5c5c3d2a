"""The search impression event: one row per item shown for a search.

The schema is the contract between producers, the landing zone, training and backtests.
Required fields must be present (non-null) for a row to be trained on; optional fields may be
null and are encoded as "missing".
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EVENT_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("query", pa.string()),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("device", pa.string()),
        pa.field("clicked", pa.bool_(), nullable=False),
        pa.field("purchased", pa.bool_()),
    ]
)
"""Column names and types of an event shard (parquet)."""

REQUIRED_FIELDS: tuple[str, ...] = tuple(f.name for f in EVENT_SCHEMA if not f.nullable)
"""Columns that must be non-null for a row to be used; rows missing one are dropped and counted."""


def schema_problem(schema: pa.Schema) -> str | None:
    """Say what keeps ``schema`` from being an event schema, or ``None`` when it is one.

    Column order and nullability flags do not matter; names and types do.

    >>> schema_problem(EVENT_SCHEMA) is None
    True
    >>> schema_problem(EVENT_SCHEMA.remove(EVENT_SCHEMA.get_field_index("clicked")))
    "missing column 'clicked' (bool)"
    """
    for field in EVENT_SCHEMA:
        idx = schema.get_field_index(field.name)
        if idx < 0:
            return f"missing column {field.name!r} ({field.type})"
        got = schema.field(idx).type
        if got != field.type:
            return f"column {field.name!r} has type {got}, expected {field.type}"
    extra = sorted(set(schema.names) - set(EVENT_SCHEMA.names))
    if extra:
        return f"unexpected columns {extra}"
    return None


def valid_row_mask(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """Boolean mask of the rows that have every required field.

    >>> t = pa.table({"a": [1, None, 3]})
    >>> valid_row_mask(t).tolist()  # no required column present: all valid
    [True, True, True]
    """
    mask = np.ones(table.num_rows, dtype=bool)
    for name in REQUIRED_FIELDS:
        if name in table.column_names:
            col = table.column(name)
            if col.null_count:
                mask &= np.asarray(pc.is_valid(col).to_numpy(zero_copy_only=False), dtype=bool)
    return mask


def drop_invalid_rows(table: pa.Table) -> tuple[pa.Table, int]:
    """Return ``(table without rows missing a required field, number of rows dropped)``."""
    mask = valid_row_mask(table)
    dropped = int((~mask).sum())
    if dropped == 0:
        return table, 0
    return table.filter(pa.array(mask)), dropped


def conform(table: pa.Table) -> pa.Table:
    """Select and order the event columns of ``table`` and cast to the event schema's types.

    Raises ``ValueError`` naming the problem when the table cannot be an event table.
    """
    problem = schema_problem(table.schema)
    if problem is not None:
        raise ValueError(f"not an event table: {problem}")
    cols = [table.column(f.name) for f in EVENT_SCHEMA]
    return pa.Table.from_arrays(cols, schema=_nullable_schema())


def _nullable_schema() -> pa.Schema:
    # Arrow refuses nulls in non-nullable fields at construction time; the landing zone must be
    # able to hold such rows (they are dropped and counted when read), so files are written with
    # every field nullable and REQUIRED_FIELDS is enforced by valid_row_mask.
    return pa.schema([f.with_nullable(True) for f in EVENT_SCHEMA])


def empty_events() -> pa.Table:
    """An event table with no rows."""
    return _nullable_schema().empty_table()


FILE_SCHEMA: pa.Schema = _nullable_schema()
"""The schema shards are written with (every field nullable; see REQUIRED_FIELDS)."""
