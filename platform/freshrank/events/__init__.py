"""Events: the schema, the landing zone of parquet shards, the simulator and public-log adapters."""

from freshrank.events.landing import (
    InvalidShard,
    LandingZone,
    ShardRead,
    ShardRef,
    shard_name,
)
from freshrank.events.produce import EventTime, ProducerConfig, ProducerStats, run_producer
from freshrank.events.schema import (
    EVENT_SCHEMA,
    FILE_SCHEMA,
    REQUIRED_FIELDS,
    conform,
    drop_invalid_rows,
    empty_events,
    schema_problem,
    valid_row_mask,
)
from freshrank.events.selection import DROP_REASONS, RowSelection, TimeBounds
from freshrank.events.simulator import DEVICES, Simulator, SimulatorConfig

__all__ = [
    "DEVICES",
    "DROP_REASONS",
    "EVENT_SCHEMA",
    "FILE_SCHEMA",
    "REQUIRED_FIELDS",
    "EventTime",
    "InvalidShard",
    "LandingZone",
    "ProducerConfig",
    "ProducerStats",
    "RowSelection",
    "ShardRead",
    "ShardRef",
    "Simulator",
    "SimulatorConfig",
    "TimeBounds",
    "conform",
    "drop_invalid_rows",
    "empty_events",
    "run_producer",
    "schema_problem",
    "shard_name",
    "valid_row_mask",
]
