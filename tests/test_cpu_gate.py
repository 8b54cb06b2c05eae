"""The screen-read gate: screen text is read only while the machine has CPU to spare.

Protects: a read starts at once on a machine under the limit, waits while the machine is over
it and starts when it drops, and starts anyway after `max_wait_s` (screen memory slows down,
never stops); each read is told its wait and whether it was forced through; the reads' own CPU
counts in the measurement (they fill the machine up to the limit, no further); a reader whose
gate holds keeps sampling and folds the waiting frames onto the newest; the machine's CPU
counter really moves with CPU work, on the CPUs a pinned process may use, and counts the time a
virtual machine's hypervisor stole; absurd settings are refused.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from synthetic_screen import CODE, Desk

from agent import capacity
from agent.capacity import machine_cpu
from vision.cpu_gate import POLL_S, CpuGate, GateWait
from vision.sampler import FrameSampler
from vision.screen import ScreenWatcher
from vision.screen_text import ScreenText, ScreenTextReader


class Machine:
    """A scripted machine: a clock, and a CPU counter that runs at `cores_busy` cores, or at
    `quiet_cores` from `quiet_at` on."""

    def __init__(self, cores_busy: float, quiet_at: float = float("inf"),
                 quiet_cores: float = 0.0) -> None:
        self.now = 100.0
        self.busy = 0.0
        self.cores_busy, self.quiet_at, self.quiet_cores = cores_busy, quiet_at, quiet_cores

    def clock(self) -> float:
        return self.now

    def sleep(self, _wake: threading.Event, seconds: float) -> None:
        self.busy += seconds * (self.cores_busy if self.now < self.quiet_at
                                else self.quiet_cores)
        self.now += seconds

    def busy_seconds(self) -> float:
        return self.busy


def gate_on(machine: Machine, *, limit: float = 0.7, max_wait_s: float = 10.0) -> CpuGate:
    return CpuGate(machine.busy_seconds, 2.0, limit=limit, max_wait_s=max_wait_s,
                   clock=machine.clock, sleep=machine.sleep)


def test_a_quiet_machine_reads_at_once_once_it_has_measured() -> None:
    machine = Machine(cores_busy=0.4)  # 20% of two cores
    gate = gate_on(machine)
    first = gate.wait()  # the first read measures the machine
    assert first.seconds == pytest.approx(2 * POLL_S)
    assert not first.forced
    machine.sleep(threading.Event(), 1.0)
    assert gate.wait() == GateWait(0.0, forced=False)


def test_a_busy_machine_holds_the_read_until_it_quiets_down() -> None:
    machine = Machine(cores_busy=1.8)  # 90%
    gate = gate_on(machine)
    forced = gate.wait()  # the machine stayed busy for max_wait_s
    assert forced.forced
    assert forced.seconds == pytest.approx(10.0, abs=POLL_S)

    machine.quiet_at, machine.quiet_cores = machine.now + 3.0, 0.6
    waited = gate.wait()
    # it waits past the moment the machine quiets down, until its last second shows it
    assert 3.0 < waited.seconds < 5.0
    assert not waited.forced


def test_a_read_a_question_waits_for_starts_as_soon_as_it_is_hurried() -> None:
    """A busy machine holds the read; a question hurries it (after three polls here): it starts
    then, neither waiting for the machine nor counted as forced through."""
    machine = Machine(cores_busy=1.8)
    hurry, polls = threading.Event(), []

    def sleep(wake: threading.Event, seconds: float) -> None:
        assert wake is hurry  # the gate sleeps on the read's own event, so it wakes at once
        machine.sleep(wake, seconds)
        polls.append(seconds)
        if len(polls) == 3:
            hurry.set()

    gate = CpuGate(machine.busy_seconds, 2.0, limit=0.7, max_wait_s=10.0,
                   clock=machine.clock, sleep=sleep)
    assert gate.wait(hurry) == GateWait(pytest.approx(3 * POLL_S), forced=False)
    assert gate.wait(hurry) == GateWait(0.0, forced=False)  # hurried from the start: no wait


def test_the_reads_own_cpu_counts_so_they_fill_the_machine_only_up_to_the_limit() -> None:
    """The rest of the machine uses 1.0 of 2 cores; each read takes 0.5 s of one core. With
    a limit of 0.7 the reads may add 0.4 cores: about 0.8 reads a second, not 2."""
    machine = Machine(cores_busy=1.0)
    gate = gate_on(machine)
    reads = 0
    started = machine.now
    while machine.now - started < 60.0:
        assert not gate.wait().forced
        machine.now += 0.5  # the read: half a second on one core, besides the rest
        machine.busy += 0.5 * (1.0 + 1.0)
        reads += 1
    rate = reads / (machine.now - started)
    assert 0.5 < rate < 1.0, rate


def test_settings_out_of_range_are_refused() -> None:
    machine = Machine(0.0)
    for cores, limit, wait in ((0.0, 0.7, 1.0), (2.0, 0.0, 1.0), (2.0, 1.5, 1.0),
                               (2.0, 0.7, -1.0)):
        with pytest.raises(ValueError):
            CpuGate(machine.busy_seconds, cores, limit=limit, max_wait_s=wait)


def _burn(seconds: float, burning: ProcessEvent) -> None:
    burning.set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _cpu_share_with_burners() -> float | None:
    """The gate's real measurement while busy loops run on each core it counts (the loops'
    processes inherit this one's CPU affinity). The window opens once every loop says it
    burns: a spawned process's start-up on a loaded machine (CI's) waits on the disk, and
    1.5 s of sleep was once not enough (0.798 read)."""
    busy_seconds, cores = machine_cpu()
    gate = CpuGate(busy_seconds, cores, limit=0.7, max_wait_s=0.0)
    ctx = multiprocessing.get_context("spawn")
    burning = [ctx.Event() for _ in range(max(1, round(cores)))]
    burners = [ctx.Process(target=_burn, args=(4.0, started)) for started in burning]
    for burner in burners:
        burner.start()
    try:
        for started in burning:
            assert started.wait(60.0), "a busy loop's process did not start in 60 s"
        time.sleep(0.2)
        gate.share()
        time.sleep(1.0)
        share = gate.share()
    finally:
        for burner in burners:
            burner.join()
    return share


def test_the_machines_cpu_counter_moves_with_real_work() -> None:
    """Busy loops on every core: the gate's real measurement reads the machine as full."""
    share = _cpu_share_with_burners()
    assert share is not None and share > 0.8, share


def test_a_pinned_process_counts_its_own_cores_only() -> None:
    """A worker pinned to one CPU (taskset, a cpuset) measures that CPU: a busy loop on it
    reads as full whatever the other CPUs do."""
    everywhere = os.sched_getaffinity(0)
    if len(everywhere) < 2:
        pytest.skip("one CPU: nothing to pin to")
    first = min(everywhere)
    os.sched_setaffinity(0, {first})
    try:
        assert machine_cpu()[1] == 1.0
        share = _cpu_share_with_burners()
    finally:
        os.sched_setaffinity(0, everywhere)
    assert share is not None and share > 0.8, share


class _Host:
    """psutil's CPU times of a scripted virtual machine: `work` seconds busy and `steal`
    seconds stolen by the hypervisor so far, on each CPU."""

    def __init__(self, cpus: int) -> None:
        self.cpus, self.work, self.steal = cpus, 0.0, 0.0

    def times(self, percpu: bool = False) -> object:
        def one(cpus: int) -> SimpleNamespace:  # the fields of psutil's scputimes on Linux
            return SimpleNamespace(user=self.work * cpus, nice=0.0, system=0.0, idle=0.0,
                                   iowait=0.0, irq=0.0, softirq=0.0, steal=self.steal * cpus)
        return [one(1)] * self.cpus if percpu else one(self.cpus)


@pytest.mark.parametrize("source", ["cgroup", "machine", "pinned"])
def test_time_the_hypervisor_stole_counts_as_taken(
    source: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """On a virtual machine whose CPUs wait on the host (steal), the gate counts the stolen
    seconds as taken: from the CPUs a pinned process may use, or the whole machine's, or, beside
    a cgroup's own usage (which has no steal), the machine's in the cgroup's share of its CPUs."""
    host = _Host(cpus=4)
    monkeypatch.setattr(psutil, "cpu_times", host.times)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: host.cpus)
    usage = tmp_path / "cpuacct.usage"
    usage.write_text("0\n")
    cgroup = [(usage, "", 1e-9)] if source == "cgroup" else []
    monkeypatch.setattr(capacity, "_CGROUP_CPU_USAGE", cgroup)
    monkeypatch.setattr(capacity, "usable_cores", lambda: 2.0 if source == "cgroup" else 4.0)
    pinned = {0, 2} if source == "pinned" else set(range(host.cpus))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: pinned)
    busy_seconds, cores = machine_cpu()
    before = busy_seconds()
    host.work, host.steal = 0.5, 0.25  # per CPU
    usage.write_text(f"{int(0.5 * 2 * 1e9)}\n")  # the cgroup's 2 cores worked 0.5 s each
    taken = busy_seconds() - before
    expected = {"cgroup": 1.0 + 0.25 * 4 * 2 / 4,  # its work and half the machine's steal
                "machine": (0.5 + 0.25) * 4, "pinned": (0.5 + 0.25) * 2}
    assert (cores, taken) == (4.0 if source == "machine" else 2.0, pytest.approx(
        expected[source]))


async def test_a_held_reader_keeps_sampling_and_reads_the_newest_screen_when_let_through(
) -> None:
    """The gate holds (a busy machine): kept frames keep coming and fold onto the newest, and
    a question's screenshot does not wait for their reads; once the machine is quiet the
    newest screen is read, with the wait recorded, and a question waits for that read."""
    busy = threading.Event()
    busy.set()
    counter = {"t": time.monotonic(), "busy": 0.0}

    def busy_seconds() -> float:  # a machine at 95% while `busy` is set, else at 10%
        now = time.monotonic()
        counter["busy"] += (now - counter["t"]) * (1.9 if busy.is_set() else 0.2)
        counter["t"] = now
        return counter["busy"]

    gate = CpuGate(busy_seconds, 2.0, limit=0.7, max_wait_s=60.0)
    pool = ThreadPoolExecutor(max_workers=1)
    results: list[ScreenText] = []
    reader = ScreenTextReader(results.append, executor=pool, gate=gate, max_pending=3)
    screen = ScreenWatcher(FrameSampler(1.0), lambda _d: None,
                           on_kept=lambda c: reader.submit(c.frame, c.decision))
    desk = Desk(width=1280, height=720, pointer=None, cursor_on=False)
    for t in range(8):  # a new page every second (not a scroll): each frame is kept
        desk.lines = [f"Build {t} finished", *random.Random(t).sample(CODE, len(CODE))]
        screen.offer(float(t), desk.frame())
        await asyncio.sleep(0.05)
    assert screen.frames_received == 8 and not results  # nothing read while the gate holds
    unread, hurried, held = await asyncio.wait_for(reader.read_through(7.0, timeout_s=600), 30)
    assert held and unread == len(reader._pending) + 1 >= 2  # one under way, held at the gate
    assert hurried == 0
    busy.clear()
    for _ in range(600):  # until the gate's measure of the last second comes down
        unread, hurried, held = await reader.read_through(7.0, timeout_s=30)
        if not held:
            break
    assert (unread, hurried, held) == (0, 0, False)
    await reader.aclose()
    pool.shutdown()
    assert results and results[-1].t == 7.0
    assert any("Build 7 finished" in line for line in results[-1].lines)
    assert results[0].waited_ms > 300  # it waited for the machine, and says so
    assert reader.stats.waited_ms >= results[0].waited_ms - 0.05  # the event rounds to 0.1 ms
    assert reader.stats.read + reader.stats.coalesced == 8 and reader.stats.coalesced > 0
    assert reader.stats.forced == 0 and not any(read.forced for read in results)


async def test_a_read_forced_through_by_the_longest_wait_says_so() -> None:
    """A machine that never quiets down: the read starts after `max_wait_s` all the same, and
    it, the reader's count and the session's event say it was forced."""
    gate = CpuGate(lambda: time.monotonic() * 1.9, 2.0, limit=0.7, max_wait_s=0.5)  # 95%
    pool = ThreadPoolExecutor(max_workers=1)
    results: list[ScreenText] = []
    reader = ScreenTextReader(results.append, executor=pool, gate=gate)
    screen = ScreenWatcher(FrameSampler(1.0), lambda _d: None,
                           on_kept=lambda c: reader.submit(c.frame, c.decision))
    desk = Desk(width=1280, height=720, pointer=None, cursor_on=False)
    desk.lines = ["Deploy failed: disk full", *CODE]
    screen.offer(0.0, desk.frame())
    await reader.drain(timeout_s=30)
    await reader.aclose()
    pool.shutdown()
    assert len(results) == 1 and results[0].forced and results[0].waited_ms >= 500
    assert reader.stats.forced == 1

