"""bench/load.py splits each answered question's round trip into its hops from the sessions'
event logs (the `chat` event says when a question reached the worker), gives the overhead of the
steady window's questions apart, and counts the screen-text reads the sessions folded because their
reader fell behind and the shares they subscribed to again; reads the cores the hypervisor
stole beside each process group's CPU, and the screen-text readers' threads apart; and,
comparing two builds in pairs, alternates which runs first and sums the pairs up per build."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from google import genai
from google.genai import types
from pytest import approx

from bench.load import (
    Meter,
    ModelServer,
    Sessions,
    _questions,
    hops,
    pair_order,
    pairs_summary,
    read_cost_logs,
    steady_round_trips,
)
from bench.load_users import UserResult, serve_models
from vision.screen_text import OCR_THREAD_NAME, shared_pool


def _event(kind: str, ts: float, **detail: object) -> dict[str, object]:
    return {"kind": kind, "ts": ts, "detail": detail}


def test_a_round_trip_is_split_into_to_the_worker_at_the_worker_and_back() -> None:
    """...and the hop at the worker into its lookup (until the turn's `context` event) and
    its answer (from there to the turn's end); the session loop's CPU for a question is its
    reply's `cpu_ms` (the reply after its turn, not one before)."""
    events = [
        _event("session", 99.0, room="r1"),
        _event("reply", 99.5, cpu_ms=900.0),  # an offer of help before any question
        _event("chat", 100.6, sent_at=100.0, received_at=100.5, characters=9),
        _event("context", 100.8),
        _event("turn", 101.5),
        _event("reply", 101.6, cpu_ms=42.0),
        _event("chat", 130.2, sent_at=130.0, received_at=130.1, characters=9),
        _event("turn", 131.0),  # no context recorded: its lookup and answer are not split
        _event("reply", 131.1),  # no CPU recorded (a build before it was)
        _event("reply", 140.0, cpu_ms=5.0),  # not the second question's: its reply came first
        _event("chat", 160.0, sent_at=0.0, received_at=160.0, characters=9),  # no sender time
        _event("context", 160.2),
    ]
    sessions = Sessions(questions={"r1": _questions(events)})
    user = UserResult("r1", answered_at=[(100.001, 102.0), (130.0, 131.25), (145.0, 146.0)])
    split = hops([user], sessions)
    # the third answer matches no question the worker recorded (none sent near 145 s)
    assert split == {"to_worker": approx([0.5, 0.1]), "at_worker": approx([1.0, 0.9]),
                     "back": approx([0.5, 0.25]), "lookup": approx([0.3]),
                     "answer": approx([0.7]), "loop_cpu": approx([0.042])}


def test_the_steady_overhead_leaves_out_questions_asked_before_the_steady_window() -> None:
    early = UserResult("r1", answered_at=[(100.0, 104.0), (130.0, 130.3)],
                       round_trips_s=[4.0, 0.3])
    late = UserResult("r2", answered_at=[(131.0, 131.2)], round_trips_s=[0.2])
    assert steady_round_trips([early, late], since=120.0) == [0.3, 0.2]


def test_reads_waits_subscriptions_again_and_timed_out_lookups_are_summed_over_the_sessions(
        tmp_path: Path) -> None:
    costs = tmp_path / "costs"
    costs.mkdir()
    for name, submitted, coalesced in (("live_a", 10, 4), ("live_b", 6, 0)):
        events = [_event("frame", 100.0), _event("screen_reader", 200.0, submitted=submitted,
                                                  read=submitted - coalesced,
                                                  coalesced=coalesced, failed=0,
                                                  waited_s=2.5 * coalesced,
                                                  forced=coalesced // 2),
                  _event("frame_count", 201.0, received=50, failed=0,
                         resubscribed=int(name == "live_b")),
                  *(_event("context", 150.0 + i, recall=outcome, recall_ms=500.0)
                    for i, outcome in enumerate(("timeout", "done", "failed", "timeout")))]
        (costs / f"{name}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    sessions = read_cost_logs([tmp_path], (90.0, 110.0))
    assert (sessions.count, sessions.screen_reads_submitted, sessions.screen_reads_folded,
            sessions.shares_resubscribed, sessions.screen_read_wait_s,
            sessions.screen_reads_forced, sessions.recalls_timed_out) == (2, 16, 4, 1, 10.0, 2, 4)
    assert sessions.frames_per_s == approx([0.05, 0.05])


def test_the_overhead_subtracts_the_models_time_in_its_server_not_memory_updates() -> None:
    """The models process answers `service_times()` with its answers' own times (the memory
    updates left out), each once; anything else stops it."""
    here, there = mp.Pipe()
    process = threading.Thread(target=serve_models, args=(there,), daemon=True)
    process.start()
    server = ModelServer(here.recv(), os.getpid(), here)
    for purpose in ("answer", "memory", "answer"):
        client = genai.Client(api_key="k", http_options=types.HttpOptions(
            base_url=server.url, headers={"x-sightline-purpose": purpose}))
        reply = client.models.generate_content(model="gemini-2.5-flash-lite", contents="why?")
        assert reply.text
        client.close()
    times = server.service_times()
    assert len(times) == 2 and all(0 < t < 5 for t in times)
    assert server.service_times() == []  # only what came since the last ask
    here.send("stop")
    process.join(5)
    assert not process.is_alive()


def test_the_meter_reads_the_machines_stolen_time_beside_each_groups_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`stolen_cores` is the machine's steal over the measured window, like the groups' cores:
    the meter reads it where it reads theirs (a scripted machine's counter here)."""
    machine = SimpleNamespace(user=100.0, system=10.0, steal=40.0)
    monkeypatch.setattr(psutil, "cpu_times", lambda percpu=False: machine)
    meter = Meter()
    meter.set("bench", [psutil.Process()])
    before = meter.cpu_s()
    # busy for 50 ms of CPU, several of the kernel's accounting ticks (a fixed amount of work
    # could end within one tick and read as none on a busy machine)
    started = time.process_time()
    while time.process_time() - started < 0.05:
        pass
    machine.steal = 43.5
    after = meter.cpu_s()
    assert after["stolen"] - before["stolen"] == approx(3.5)
    assert after["bench"] > before["bench"]  # the group's own CPU, read from its processes


def _busy(cpu_s: float) -> None:
    started = time.thread_time()
    while time.thread_time() - started < cpu_s:
        pass


def test_the_meter_gives_the_screen_text_readers_cpu_apart() -> None:
    """The OCR threads carry their name to the OS, so `worker_ocr_cores` is their CPU alone:
    here 0.4 s of CPU in the process's reader thread and 0.4 s in this one."""
    me = psutil.Process()
    meter = Meter()
    meter.set("process", [me])
    meter.set_threads("ocr", [me], (OCR_THREAD_NAME,))
    before = meter.cpu_s()
    shared_pool().submit(_busy, 0.4).result()
    _busy(0.4)
    after = meter.cpu_s()
    ocr, process = after["ocr"] - before["ocr"], after["process"] - before["process"]
    assert 0.35 <= ocr < 0.6
    assert process >= ocr + 0.35


def test_pairs_alternate_which_build_runs_first() -> None:
    assert [pair_order(i) for i in range(3)] == [("sightline", "reference"),
                                                 ("reference", "sightline"),
                                                 ("sightline", "reference")]


def test_the_pairs_summary_takes_each_builds_median_and_counts_the_pairs_won() -> None:
    def run(p50: float, p95: float, steady_p95: float | None) -> dict[str, float | None]:
        return {"overhead_ms_p50": p50, "overhead_ms_p95": p95,
                "steady_overhead_ms_p50": p50, "steady_overhead_ms_p95": steady_p95}

    entries = [{"sightline": run(100, 400, 300), "reference": run(150, 500, 450)},
               {"sightline": run(120, 600, None), "reference": run(140, 550, 500)},
               {"sightline": run(110, 300, 250), "reference": run(160, 700, 650)}]
    summary = pairs_summary(entries)
    assert summary["pairs"] == 3 and summary["won_p95"] == 2
    assert summary["sightline_overhead_ms_p95"] == 400
    assert summary["reference_overhead_ms_p95"] == 550
    assert summary["sightline_overhead_ms_p50"] == 110
    # a run without a steady window is left out of that median, not counted as zero
    assert summary["sightline_steady_overhead_ms_p95"] == 275
    assert summary["reference_steady_overhead_ms_p95"] == 500


def test_a_pair_where_a_build_answered_nothing_is_won_by_the_one_that_answered() -> None:
    """A build whose level answered no question has no overhead (None): the pairs summary
    still sums up, the pair counted as won only by the build that answered."""
    def run(p95: float | None) -> dict[str, float | None]:
        return {"overhead_ms_p50": p95, "overhead_ms_p95": p95,
                "steady_overhead_ms_p50": p95, "steady_overhead_ms_p95": p95}

    entries = [{"sightline": run(None), "reference": run(500)},
               {"sightline": run(400), "reference": run(None)},
               {"sightline": run(None), "reference": run(None)},
               {"sightline": run(300), "reference": run(350)}]
    summary = pairs_summary(entries)
    assert summary["pairs"] == 4 and summary["won_p95"] == 2
    assert summary["sightline_overhead_ms_p95"] == 350
    assert summary["reference_overhead_ms_p95"] == 425
