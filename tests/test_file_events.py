"""Task output is read when the task writes it (inotify on its folder), not on a timer: the
watcher itself on real files, and a running daemon whose timers are all pushed far away still
delivering a line the moment it is printed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runner import logs
from runner.file_events import FileEvents
from tests.conftest import api_for, running_server, shell


async def test_a_write_in_a_watched_folder_sets_its_event(tmp_path: Path) -> None:
    other = tmp_path / "scratch"
    other.mkdir()
    events = FileEvents()
    try:
        watched = events.watch(str(tmp_path), frozenset({"stdout.log"}))
        assert watched is not None, "inotify is there on Linux"
        key, changed = watched
        (other / "x").write_text("in a folder below the watched one")
        (tmp_path / "checkpoint.bin").write_bytes(b"a file of the task's own, beside its output")
        await asyncio.sleep(0.05)
        assert not changed.is_set()
        with (tmp_path / "stdout.log").open("ab") as out:  # created, then written
            out.write(b"hello\n")
        await asyncio.wait_for(changed.wait(), 10)
        changed.clear()
        with (tmp_path / "stdout.log").open("ab") as out:
            out.write(b"again\n")
        await asyncio.wait_for(changed.wait(), 10)
        events.unwatch(key)
        changed.clear()
        (tmp_path / "stdout.log").write_text("after unwatch")
        await asyncio.sleep(0.05)
        assert not changed.is_set()
    finally:
        events.close()


def test_a_folder_that_cannot_be_watched_falls_back(tmp_path: Path) -> None:
    events = FileEvents()
    try:
        assert events.watch(str(tmp_path / "missing"), frozenset({"stdout.log"})) is None  # it polls
    finally:
        events.close()


async def test_a_line_is_read_when_printed_with_every_timer_far_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were output read only on timers, nothing would arrive for a minute.
    monkeypatch.setattr(logs, "_SAFETY_POLL_S", 60.0)
    reads = 0
    drain = logs.OutputCollector.drain

    async def counted(self: logs.OutputCollector, final: bool) -> int:
        nonlocal reads
        reads += 1
        return await drain(self, final)

    monkeypatch.setattr(logs.OutputCollector, "drain", counted)
    gate = tmp_path / "go"
    script = f"sleep 1; while [ ! -e {gate} ]; do sleep 0.02; done; echo printed; sleep 60"
    async with running_server(tmp_path, log_poll_max_s=60.0) as srv, api_for(srv) as api:
        await api.create_job([shell("quiet", script)], name="quiet")
        await api.wait_job("quiet", {"active"}, timeout_s=30)
        await asyncio.sleep(2.5)  # the collector is waiting, quiet, by now
        # A timer doubling from 10 ms would have read ~8 times by now; a quiet task is not read.
        assert reads <= 2, reads
        gate.touch()
        async with api.session.get(f"{api.ws}/jobs/quiet/logs", params={"follow": "true"}) as resp:
            first = await asyncio.wait_for(resp.content.readline(), 20)
        assert b'"printed"' in first
        await api.request("POST", "/jobs/quiet/cancel")
        await api.wait_job("quiet", timeout_s=30)


async def test_a_task_that_prints_nothing_is_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launcher tells the daemon of a task's first output and, with its end, where its
    files end: a quiet task's files are neither followed nor read at its end."""
    reads = finals = 0
    drain = logs.OutputCollector.drain

    async def counted(self: logs.OutputCollector, final: bool) -> int:
        nonlocal reads, finals
        reads += 1
        finals += final
        return await drain(self, final)

    monkeypatch.setattr(logs.OutputCollector, "drain", counted)
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        await api.create_job([shell("main", "sleep 0.5; exit 4")], name="quiet")
        job = await api.wait_job("quiet", timeout_s=30)
        assert (job["status"], job["error_details"]["exit_code"]) == ("error", 4)
        assert reads == 0
        assert await api.logs("quiet") == []
        # Output after a quiet spell, and an unfinished last line, are all stored.
        await api.create_job([shell("main", "sleep 0.5; echo late; printf 'no end'")], name="late")
        assert (await api.wait_job("late", timeout_s=30))["status"] == "completed"
        assert await api.logs("late") == ["late", "no end"]
        assert reads >= 1
        # Followed up to where its files end: not read again at its end.
        gate = tmp_path / "go"
        await api.create_job(
            [shell("main", f"echo one; while [ ! -e {gate} ]; do sleep 0.02; done")], name="followed"
        )
        await api.logs_until("followed", lambda lines: lines == ["one"], "the followed line")
        final_reads = finals
        gate.touch()
        assert (await api.wait_job("followed", timeout_s=30))["status"] == "completed"
        assert finals == final_reads
        assert await api.logs("followed") == ["one"]


async def test_a_watch_shared_by_two_collectors_lasts_until_both_let_go(tmp_path: Path) -> None:
    events = FileEvents()
    try:
        first = events.watch(str(tmp_path), frozenset({"stdout.log"}))
        second = events.watch(str(tmp_path), frozenset({"stderr.log"}))
        assert first is not None and second is not None and first[0] == second[0]
        events.unwatch(first[0])
        changed = second[1]
        changed.clear()
        (tmp_path / "stderr.log").write_text("still watched for the other\n")
        await asyncio.wait_for(changed.wait(), 10)
        events.unwatch(second[0])
    finally:
        events.close()
