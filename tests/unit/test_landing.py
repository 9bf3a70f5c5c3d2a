"""The landing zone: publishing, listing, reading, quarantine and the producer marker."""

from __future__ import annotations

import dataclasses
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from freshrank.events import (
    FILE_SCHEMA,
    REQUIRED_FIELDS,
    InvalidShard,
    LandingZone,
    ShardRef,
    Simulator,
    SimulatorConfig,
)

_SMALL = SimulatorConfig(seed=3, n_users=50, n_items=100, n_categories=5, n_brands=7)


def _events(n_requests: int = 20, seed: int = 3) -> pa.Table:
    return Simulator(dataclasses.replace(_SMALL, seed=seed)).generate(n_requests)


def _wrong_schema_bytes() -> bytes:
    t = _events(2)
    idx = t.schema.get_field_index("clicked")
    t = t.set_column(idx, pa.field("clicked", pa.int64()), pc.cast(t.column(idx), pa.int64()))
    sink = pa.BufferOutputStream()
    pq.write_table(t, sink)
    return sink.getvalue().to_pybytes()


def test_nothing_is_created_until_the_first_write(tmp_path):
    zone = LandingZone(tmp_path / "zone")
    assert zone.list_shards() == []
    assert zone.quarantined() == []
    assert not zone.is_done()
    assert not (tmp_path / "zone").exists()


def test_round_trip_keeps_schema_rows_and_time_range(tmp_path):
    zone = LandingZone(tmp_path / "zone")
    table = _events(30)
    ref = zone.write_shard(table)

    assert ref.seq == 1
    assert os.path.basename(ref.path) == "shard-000000000001.parquet"
    assert ref.num_bytes == os.path.getsize(ref.path) > 0
    assert zone.list_shards() == [ref]

    read = zone.read_shard(ref)
    assert read.table.schema == FILE_SCHEMA
    assert read.table.equals(table)
    assert (read.rows_total, read.rows_dropped, read.rows_kept) == (300, 0, 300)
    times = table.column("event_time").to_pylist()
    assert read.min_event_time == min(times)
    assert read.max_event_time == max(times)
    assert read.min_event_time.utcoffset() == timedelta(0)


def test_columns_are_reordered_to_the_schema(tmp_path):
    zone = LandingZone(tmp_path)
    table = _events(5)
    shuffled = table.select(list(reversed(table.column_names)))
    read = zone.read_shard(zone.write_shard(shuffled))
    assert read.table.column_names == FILE_SCHEMA.names
    assert read.table.equals(table)


def test_empty_table_is_a_valid_shard_without_a_time_range(tmp_path):
    zone = LandingZone(tmp_path)
    read = zone.read_shard(zone.write_shard(FILE_SCHEMA.empty_table()))
    assert (read.rows_total, read.rows_dropped) == (0, 0)
    assert read.min_event_time is None and read.max_event_time is None
    assert read.table.schema == FILE_SCHEMA


def test_a_table_that_is_not_an_event_table_is_refused(tmp_path):
    zone = LandingZone(tmp_path / "zone")
    with pytest.raises(ValueError, match="missing column 'clicked'"):
        zone.write_shard(_events(2).drop_columns(["clicked"]))
    with pytest.raises(ValueError, match="pyarrow.Table"):
        zone.write_shard({"event_id": ["x"]})  # type: ignore[arg-type]
    assert zone.list_shards() == []
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "zone").glob("*"))


def test_sequence_numbers_increase_and_explicit_ones_are_never_overwritten(tmp_path):
    zone = LandingZone(tmp_path)
    assert [zone.write_shard(_events(1)).seq for _ in range(3)] == [1, 2, 3]
    assert zone.write_shard(_events(1), seq=10).seq == 10
    assert zone.write_shard(_events(1)).seq == 11
    before = zone.list_shards()
    with pytest.raises(FileExistsError, match="seq 10 already exists"):
        zone.write_shard(_events(2), seq=10)
    assert zone.list_shards() == before
    with pytest.raises(ValueError, match="seq must be an int"):
        zone.write_shard(_events(1), seq=0)


def test_listing_after_a_cursor(tmp_path):
    zone = LandingZone(tmp_path)
    refs = [zone.write_shard(_events(1)) for _ in range(5)]
    assert [r.seq for r in zone.list_shards(after=0)] == [1, 2, 3, 4, 5]
    assert zone.list_shards(after=3) == refs[3:]
    assert zone.list_shards(after=5) == []


def test_temp_and_foreign_files_are_ignored(tmp_path):
    zone = LandingZone(tmp_path)
    zone.write_shard(_events(1))
    (tmp_path / ".tmp-abc").write_bytes(b"half written")
    (tmp_path / ".tmp-shard-000000000009.parquet").write_bytes(b"x")
    (tmp_path / "shard-1.parquet").write_bytes(b"wrong digits")
    (tmp_path / "shard-000000000050.parquet.bak").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    assert [r.seq for r in zone.list_shards()] == [1]
    assert zone.write_shard(_events(1)).seq == 2


def test_concurrent_writers_never_lose_a_shard_or_share_a_seq(tmp_path):
    zone = LandingZone(tmp_path)
    n_threads, per_thread = 8, 10
    barrier = threading.Barrier(n_threads)
    written: list[list[ShardRef]] = [[] for _ in range(n_threads)]
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            table = _events(1, seed=100 + k)
            barrier.wait()
            for _ in range(per_thread):
                written[k].append(zone.write_shard(table))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    seqs = sorted(r.seq for refs in written for r in refs)
    assert seqs == list(range(1, n_threads * per_thread + 1))
    listed = zone.list_shards()
    assert [r.seq for r in listed] == seqs
    # Each file holds the table of the writer that got its seq.
    for k, refs in enumerate(written):
        expected = _events(1, seed=100 + k)
        for ref in refs:
            assert zone.read_shard(ref).table.equals(expected)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_bad_files_are_quarantined_with_a_reason_and_reading_continues(tmp_path):
    zone = LandingZone(tmp_path)
    good1 = zone.write_shard(_events(4))
    garbage = zone.write_raw(b"this is not parquet at all")
    wrong = zone.write_raw(_wrong_schema_bytes())
    full = pa.BufferOutputStream()
    pq.write_table(_events(4), full)
    truncated = zone.write_raw(full.getvalue().to_pybytes()[:-20])
    good2 = zone.write_shard(_events(6))

    reads = [zone.validate(ref) for ref in zone.list_shards()]
    kept = [r for r in reads if r is not None]
    assert [r.ref.seq for r in kept] == [good1.seq, good2.seq]
    assert sum(r.rows_kept for r in kept) == 100

    assert [r.seq for r in zone.list_shards()] == [good1.seq, good2.seq]
    reasons = dict(zone.quarantined())
    assert sorted(reasons) == sorted(r.name for r in (garbage, wrong, truncated))
    assert reasons[garbage.name].startswith("not readable as parquet")
    assert reasons[truncated.name].startswith("not readable as parquet")
    assert reasons[wrong.name] == "wrong schema: column 'clicked' has type int64, expected bool"

    reason_text = (zone.quarantine_dir / f"{wrong.name}.reason.txt").read_text()
    stamp = reason_text.splitlines()[1].removeprefix("quarantined_at: ")
    age = datetime.now(timezone.utc) - datetime.fromisoformat(stamp)
    assert timedelta(0) <= age < timedelta(minutes=5)

    assert zone.quarantined_seqs() == {garbage.seq, wrong.seq, truncated.seq}
    # Quarantined sequence numbers are never reused.
    assert zone.write_shard(_events(1)).seq == good2.seq + 1
    with pytest.raises(FileExistsError, match="quarantine"):
        zone.write_shard(_events(1), seq=garbage.seq)


def test_read_shard_raises_invalid_shard_with_a_reason(tmp_path):
    zone = LandingZone(tmp_path)
    ref = zone.write_raw(b"garbage")
    with pytest.raises(InvalidShard) as info:
        zone.read_shard(ref)
    assert info.value.reason.startswith("not readable as parquet")
    assert zone.list_shards() == [ref]  # read_shard alone does not move anything


def test_quarantine_twice_and_validate_after_another_reader(tmp_path):
    zone = LandingZone(tmp_path)
    ref = zone.write_raw(b"garbage")
    first = zone.quarantine(ref, "first reader")
    assert zone.quarantine(ref, "second reader") == first
    assert zone.validate(ref) is None
    assert [name for name, _ in zone.quarantined()] == [ref.name]
    assert not os.path.exists(ref.path)


def test_rows_missing_required_fields_are_dropped_and_counted_exactly(tmp_path):
    zone = LandingZone(tmp_path)
    table = _events(10)  # 100 rows
    null_rows = {
        "user_id": [0, 5, 17],
        "item_id": [5, 40],  # row 5 is missing two fields: counted once
        "clicked": [99],
        "event_time": [50, 51],
    }
    for name, rows in null_rows.items():
        assert name in REQUIRED_FIELDS
        idx = table.schema.get_field_index(name)
        mask = pa.array([i in rows for i in range(table.num_rows)])
        col = pc.if_else(mask, pa.scalar(None, table.schema.field(idx).type), table.column(idx))
        table = table.set_column(idx, table.schema.field(idx), col)
    # Nulls in optional fields keep the row.
    idx = table.schema.get_field_index("brand")
    table = table.set_column(idx, "brand", pa.nulls(table.num_rows, pa.string()))

    read = zone.read_shard(zone.write_shard(table))
    dropped = {r for rows in null_rows.values() for r in rows}
    assert (read.rows_total, read.rows_dropped) == (100, len(dropped)) == (100, 7)
    assert read.table.num_rows == 93
    for name in REQUIRED_FIELDS:
        assert read.table.column(name).null_count == 0
    assert read.table.column("brand").null_count == 93
    kept_ids = set(read.table.column("event_id").to_pylist())
    all_ids = table.column("event_id").to_pylist()
    assert kept_ids == {e for i, e in enumerate(all_ids) if i not in dropped}


def test_every_row_invalid_gives_an_empty_read_without_time_range(tmp_path):
    zone = LandingZone(tmp_path)
    table = _events(2)
    idx = table.schema.get_field_index("item_id")
    table = table.set_column(idx, "item_id", pa.nulls(table.num_rows, pa.string()))
    read = zone.read_shard(zone.write_shard(table))
    assert (read.rows_total, read.rows_dropped, read.rows_kept) == (20, 20, 0)
    assert read.min_event_time is None


def test_producer_done_marker(tmp_path):
    zone = LandingZone(tmp_path / "zone")
    assert not zone.is_done()
    zone.mark_done()
    assert zone.is_done()
    assert zone.list_shards() == []  # the marker is not a shard
    zone.clear_done()
    assert not zone.is_done()


def test_read_source_locally_gives_the_paths_and_no_filesystem(tmp_path):
    zone = LandingZone(tmp_path / "zone")
    refs = [zone.write_shard(_events(1, seed=s)) for s in (1, 2)]
    paths, fs = zone.read_source([r.path for r in refs])
    assert (paths, fs) == ([r.path for r in refs], None)  # what read_parquet(paths) got before
    assert zone.read_source([refs[0].name]) == ([refs[0].path], None)
    assert pq.read_table(paths[1]).equals(_events(1, seed=2))
    with pytest.raises(ValueError, match="not a shard of the landing zone"):
        zone.read_source([str(tmp_path / "elsewhere" / refs[0].name)])
    with pytest.raises(ValueError, match="not a shard name"):
        zone.read_source([str(tmp_path / "zone" / "_PRODUCER_DONE")])


def test_a_relative_root_and_a_file_uri_are_local_zones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = LandingZone("landing")
    ref = rel.write_shard(_events(1))
    assert rel.root == Path("landing") and rel.is_local
    assert ref.path == os.path.join("landing", "shard-000000000001.parquet")  # as before
    assert rel.read_source([ref.path]) == ([ref.path], None)
    uri = LandingZone(f"file://{tmp_path}/landing")
    assert uri.root == tmp_path / "landing"
    assert [r.seq for r in uri.list_shards()] == [1]
    assert uri.list_shards()[0].path == str(tmp_path / "landing" / ref.name)


def test_a_storage_error_is_not_taken_for_a_bad_shard(tmp_path, monkeypatch):
    """A read that fails in the store (a network error on S3) must not quarantine the shard."""
    zone = LandingZone(tmp_path)
    ref = zone.write_shard(_events(2))

    def broken_read(name: str) -> bytes:
        raise OSError("connection reset by peer")

    monkeypatch.setattr(zone.storage, "read", broken_read)
    with pytest.raises(OSError, match="connection reset"):
        zone.validate(ref)
    monkeypatch.undo()
    assert zone.quarantined() == [] and zone.list_shards() == [ref]
