"""A failed append cannot tear the promotion log for good, and a garbled pointer is read as
"none" with a warning and a count (issue 17, faults 2 and 7)."""

import argparse
import errno
import logging
import os

import pytest
from _tiny import _publish as publish_tiny

from freshrank.apps.registry_cli import add_registry_commands
from freshrank.registry import Registry, UnreadablePointer
from freshrank.registry import promotion_log as plog


def _save(reg, cursor):
    return publish_tiny(reg, cursor)


@pytest.fixture
def reg(tmp_path):
    reg = Registry(tmp_path / "reg")
    for cursor in range(4):
        _save(reg, cursor)
    reg.set_champion(1)
    reg.set_champion(2)
    reg.set_champion(3)
    return reg


def _cli(*argv):
    parser = argparse.ArgumentParser(prog="freshrank")
    add_registry_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["registry", *argv])
    return args.func(args)


def _log_bytes(reg):
    return (reg.root / "promotions.jsonl").read_bytes()


def test_a_torn_tail_is_cut_and_everything_reads_again(reg, capsys, caplog):
    with open(reg.root / "promotions.jsonl", "ab") as f:
        f.write(b'{"at": 5.0, "kind": "promoted", "to_ver')  # an append that died half way
    assert reg.rollback_target() == 2  # readers never raised on it
    with caplog.at_level(logging.WARNING):
        reg.log_event("error", reason="after the tear")
    assert "cut 39 bytes of a torn last line" in caplog.text
    assert _log_bytes(reg).endswith(b'"reason": "after the tear"}\n')
    events = reg.promotions()
    assert [e["kind"] for e in events] == ["promoted"] * 3 + ["error"]
    assert reg.skipped_log_lines == 0
    assert reg.rollback_target() == 2
    assert reg.prune(keep_last=1) == [1]  # v4 newest, v3 champion, v2 rollback target
    assert _cli("log", "--registry", str(reg.root)) == 0
    out = capsys.readouterr().out
    assert "after the tear" in out and out.count("promoted") == 3


def test_a_garbled_line_in_the_middle_is_skipped_counted_and_logged(reg, caplog):
    with open(reg.root / "promotions.jsonl", "ab") as f:
        f.write(b'{"at": 5.0, "kind": "prom\xff\n[1, 2]\n')  # e.g. two tears healed by hand
    reg.log_event("error", reason="later")
    with caplog.at_level(logging.WARNING):
        events = reg.promotions()
    assert [e["kind"] for e in events] == ["promoted"] * 3 + ["error"]
    assert reg.skipped_log_lines == 2 and "skipped 2 line(s)" in caplog.text
    assert "line 4, 5" in caplog.text
    assert reg.rollback_target() == 2


def test_enospc_half_way_raises_clearly_and_leaves_the_log_intact(reg, monkeypatch):
    before = _log_bytes(reg)
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plog.os, "write", half_then_full)
    with pytest.raises(OSError) as info:
        reg.log_event("error", reason="disk full")
    assert info.value.errno == errno.ENOSPC
    assert "promotion log" in str(info.value) and "No space left" in str(info.value)
    assert "free space" in str(info.value)
    assert _log_bytes(reg) == before  # its partial line was taken back
    monkeypatch.undo()
    reg.log_event("error", reason="space is back")
    assert [e.get("reason") for e in reg.promotions()][-1] == "space is back"
    assert len(reg.promotions()) == 4


def test_when_even_the_cleanup_fails_the_next_append_heals(reg, monkeypatch):
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def no_truncate(fd, length):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(plog.os, "write", half_then_full)
    monkeypatch.setattr(plog.os, "ftruncate", no_truncate)
    with pytest.raises(OSError, match="promotion log"):
        reg.log_event("error", reason="disk full")
    monkeypatch.undo()
    assert not _log_bytes(reg).endswith(b"\n")  # torn, as on the adversary's full disk
    assert len(reg.promotions()) == 3 and reg.rollback_target() == 2
    reg.log_event("rejected", to_version=4, reason="space is back")
    events = reg.promotions()
    assert [e["kind"] for e in events] == ["promoted"] * 3 + ["rejected"]
    assert reg.skipped_log_lines == 0  # the tail was cut, not glued onto the new line


def test_a_short_write_is_continued(reg, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(plog.os, "write", lambda fd, data: real_write(fd, data[:7]))
    reg.log_event("error", reason="written in 7-byte pieces")
    monkeypatch.undo()
    assert reg.promotions()[-1]["reason"] == "written in 7-byte pieces"


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00\x01\x02", b'{"version": "7"}', b'{"version": true}', b"[3]", b'{"version": 0}'],
)
def test_a_garbled_champion_reads_as_none_and_the_next_promotion_replaces_it(reg, content, caplog):
    (reg.root / "CHAMPION").write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert reg.champion_version() is None
        assert reg.champion_version() is None
    assert caplog.text.count("treated as no CHAMPION") == 1  # warned once per problem
    assert "CHAMPION" in reg.pointer_problems
    assert "freshrank registry promote" in reg.pointer_problems["CHAMPION"]
    with pytest.raises(UnreadablePointer, match="CHAMPION"):
        reg.read_pointer("CHAMPION")
    assert reg.champion_record() is None and reg.serving_target() is None
    assert reg.rollback_target() == 3  # the newest champion of the log that verifies
    reg.set_champion(4, expected=None)  # what a trainer that read "none" does
    assert reg.champion_version() == 4 and "CHAMPION" not in reg.pointer_problems
    assert reg.promotions()[-1]["from_version"] is None


def test_a_garbled_pin_reads_as_none(reg):
    (reg.root / "PINNED").write_bytes(b"{not json")
    assert reg.pinned_version() is None and reg.serving_target() == 3
    assert "PINNED" in reg.pointer_problems


def test_heal_torn_tail_reads_back_across_blocks(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"a\n" + b"x" * 200_000)  # the last newline is several blocks back
    fd = os.open(path, os.O_RDWR)
    try:
        assert plog.heal_torn_tail(fd) == 200_000
        assert plog.heal_torn_tail(fd) == 0
    finally:
        os.close(fd)
    assert path.read_bytes() == b"a\n"
    path.write_bytes(b"no newline at all")
    fd = os.open(path, os.O_RDWR)
    try:
        assert plog.heal_torn_tail(fd) == 17
    finally:
        os.close(fd)
    assert path.read_bytes() == b""
