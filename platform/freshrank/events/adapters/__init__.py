"""Adapters that turn public interaction logs into tables in the event schema."""

from freshrank.events.adapters.diginetica import (
    DATA_DIR_ENV,
    DEFAULT_DATA_DIR,
    N_PERIODS,
    DigineticaConfig,
    NegativeSampling,
    PeriodEvents,
    PeriodViews,
    available_periods,
    default_data_dir,
    load_periods,
    period_events,
    read_period,
)

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_DATA_DIR",
    "N_PERIODS",
    "DigineticaConfig",
    "NegativeSampling",
    "PeriodEvents",
    "PeriodViews",
    "available_periods",
    "default_data_dir",
    "load_periods",
    "period_events",
    "read_period",
]
