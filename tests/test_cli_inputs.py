"""Bad command-line and environment input: one line naming the input and what to do, exit 2.

Protects (issue 14, CLI and configuration): a data or cost-log directory that cannot be one, a
log level that is not one, absurd numbers (out of range, NaN, infinite), a budget tier the
cascade lacks, blank tenant or user names, a price table that cannot be read; `sightline config`
shows the cascade and what `auto` settings resolve to, also as JSON; every option of the
commands here has help text; a database that fails mid-command is one line, exit 1, and a
timeout elsewhere is one line not taken for the database's; a rate or duration so near zero
it means nothing, free text that is not UTF-8, a DATABASE_URL asyncpg could not use (a port,
an sslmode), a named pipe to ingest and a model key that is missing are each one line; Ctrl-C
is one line, exit 130.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from conftest import SIGHTLINE, run_cli

from agent import cli
from agent.cli import _parser
from agent.config import ConfigError, Settings
from agent.pricing import GENAI_SOURCE
from memory.db import POOL_OPTIONS

GOOGLE_KEY = "AIzaSy-google-secret-value-1234"
ROOT = Path(__file__).parent.parent


def bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Nothing from the developer's shell: only what the test sets."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
            "LANG": "C.UTF-8", "SIGHTLINE_DATA_DIR": str(tmp_path / "data"), **extra}


def one_line(code: int, out: str, err: str) -> str:
    """The single stderr line of a fixable error (exit 2, nothing on stdout, no traceback)."""
    assert code == 2, (out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def untouched(a_file: Path) -> bool:
    return not (a_file / "sub").exists() and a_file.read_text() == "not a directory"


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "in-the-way"
    path.write_text("not a directory")
    return path


@pytest.mark.parametrize("variable", ["SIGHTLINE_DATA_DIR", "SIGHTLINE_COST_LOG_DIR"])
@pytest.mark.parametrize("under_file", [False, True])
@pytest.mark.parametrize("command", [["config"], ["costs"]])
async def test_a_directory_setting_that_is_a_file_is_one_line(
    tmp_path: Path, a_file: Path, variable: str, under_file: bool, command: list[str]
) -> None:
    path = a_file / "sub" if under_file else a_file
    line = one_line(*await run_cli(*command, env=bare_env(tmp_path, **{variable: str(path)})))
    assert line.startswith(f"sightline: {variable}='{path}' is invalid")
    assert f"'{a_file}' is a file" in line or "is a file:" in line
    assert "point the variable at a directory" in line
    assert untouched(a_file)


def test_an_unset_cost_log_dir_names_the_data_dir(tmp_path: Path) -> None:
    """Cost logs go to DATA_DIR/costs by default: a file there is the data dir's problem."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "costs").write_text("")
    with pytest.raises(ConfigError, match=r"^SIGHTLINE_DATA_DIR=.* cost log directory .*costs"):
        Settings.from_env({"SIGHTLINE_DATA_DIR": str(tmp_path / "data")})


def test_directories_that_do_not_exist_yet_are_fine_and_not_created(tmp_path: Path) -> None:
    settings = Settings.from_env({"SIGHTLINE_DATA_DIR": str(tmp_path / "a" / "b"),
                                  "SIGHTLINE_COST_LOG_DIR": str(tmp_path / "c")})
    assert settings.costs_dir == tmp_path / "c"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "env", "shown"),
    [
        (["dev", "--log-level", "LOUD"], {}, "--log-level: invalid choice: 'loud'"),
        (["start"], {"LIVEKIT_LOG_LEVEL": "loud"},
         "LIVEKIT_LOG_LEVEL='loud' is invalid: must be one of debug, info, warning, error"),
    ],
)
async def test_a_log_level_that_is_not_one_is_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], shown: str
) -> None:
    """With everything else a worker needs set, the bad level is what stops it, at once."""
    worker = {"LIVEKIT_URL": "ws://127.0.0.1:9", "LIVEKIT_API_KEY": "k",
              "LIVEKIT_API_SECRET": "s", "GOOGLE_API_KEY": GOOGLE_KEY,
              "SIGHTLINE_HEALTH_PORT": "0", "SIGHTLINE_WEBHOOK_PORT": "0"}
    line = one_line(*await run_cli(*args, env=bare_env(tmp_path, **worker, **env)))
    assert shown in line
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("command", ["report --tenant t", "quality", "alerts check",
                                     "gaps refresh --tenant t"])
async def test_a_window_counted_back_with_a_minus_says_what_a_window_is(
        tmp_path: Path, command: str) -> None:
    """`--since -1h` is the window's own error (what a window is), not argparse's "expected one
    argument"; an option where the window should be still is that error."""
    line = one_line(*await run_cli(*command.split(), "--since", "-1h", env=bare_env(tmp_path)))
    assert "argument --since: must be a number > 0 followed by m, h or d" in line
    assert "got '-1h'" in line


def test_an_option_where_a_value_should_be_is_still_missing_its_value(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        _parser().parse_args(["report", "--since", "-o", "out.html", "--tenant", "t"])
    assert stopped.value.code == 2
    assert "argument --since: expected one argument" in capsys.readouterr().err
    window = _parser().parse_args(["report", "--tenant", "-t-", "--since", "2d"])
    assert (window.tenant, window.since) == ("-t-", 2 * 86400.0)


async def test_log_level_is_accepted_in_any_case() -> None:
    args = _parser().parse_args(["start", "--log-level", "DeBuG"])
    assert args.log_level == "debug"
    assert Settings.from_env({"LIVEKIT_LOG_LEVEL": " Warning "}).log_level == "warning"


async def test_config_checks_and_shows_the_log_level(tmp_path: Path) -> None:
    """`sightline config` checks LIVEKIT_LOG_LEVEL as the worker does, and shows it."""
    line = one_line(*await run_cli("config", env=bare_env(tmp_path, LIVEKIT_LOG_LEVEL="loud")))
    assert line.startswith("sightline: LIVEKIT_LOG_LEVEL='loud' is invalid")
    code, out, _ = await run_cli("config", "--json", env=bare_env(tmp_path,
                                                                  LIVEKIT_LOG_LEVEL="ERROR"))
    assert code == 0
    assert json.loads(out)["LIVEKIT_LOG_LEVEL"]["effective"] == "error"


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("SIGHTLINE_SAMPLE_FPS", "500", "[0.01, 30]"),
        ("SIGHTLINE_SAMPLE_FPS", "nan", "[0.01, 30]"),
        ("SIGHTLINE_MODEL_TIMEOUT_S", "inf", "[0.1, 600]"),
        ("SIGHTLINE_TURN_DEADLINE_S", "-inf", "[0.1, 600]"),
        # near zero: above 0, and no rate or duration anything can run at
        ("SIGHTLINE_SAMPLE_FPS", "5e-324", "[0.01, 30]"),
        ("SIGHTLINE_MODEL_TIMEOUT_S", "1e-300", "[0.1, 600]"),
        ("SIGHTLINE_TURN_DEADLINE_S", "1e-300", "[0.1, 600]"),
        ("SIGHTLINE_SESSION_STALL_S", "1e-300", "[0.1, 3600]"),
        ("SIGHTLINE_SYNTHESIS_PROBE_S", "1e-300", "[0.1, 3600]"),
        ("SIGHTLINE_SESSION_BUDGET_USD", "NaN", "(0, 1000000]"),
        ("SIGHTLINE_TENANT_BUDGET_USD", "1e400", "(0, 1000000]"),
        ("SIGHTLINE_MODEL_RETRIES", "1000000", "[0, 10]"),
        ("SIGHTLINE_OCR_THREADS", "0", "[1, 64]"),
        ("SIGHTLINE_HEALTH_PORT", "65536", "[0, 65535]"),
        ("SIGHTLINE_FRAME_RETENTION_DAYS", "0", "(0, 3650]"),
        ("SIGHTLINE_HISTORY_MESSAGES", "9" * 5000, "[0, 1000]"),
    ],
)
def test_absurd_numbers_name_the_variable_value_and_range(
    variable: str, value: str, accepted: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    message = str(info.value)
    assert message.startswith(f"{variable}={value!r} is invalid: must be ")
    assert message.endswith(f"in {accepted}")


@pytest.mark.parametrize(("keys", "tiers"), [({"GOOGLE_API_KEY": GOOGLE_KEY}, 2),
                                             ({"ANTHROPIC_API_KEY": "a-key"}, 1)])
def test_a_budget_tier_the_cascade_lacks_is_refused(keys: dict[str, str], tiers: int) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**keys, "SIGHTLINE_BUDGET_MAX_TIER": "7"})
    assert str(info.value) == (f"SIGHTLINE_BUDGET_MAX_TIER=7 is invalid: the cascade has {tiers} "
                               f"tiers, numbered 0 to {tiers - 1}; set one of those")
    top = Settings.from_env({**keys, "SIGHTLINE_BUDGET_MAX_TIER": str(tiers - 1)})
    assert top.budget_max_tier == tiers - 1


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("gemini:flash:0.5:100,anthropic:sonnet:high:100", "tier 1 threshold 'high' must be"),
        ("gemini:flash:nan:100", "tier 0 threshold 'nan' must be a number in [0, 1]"),
        ("gemini:flash:0.5:lots", "tier 0 max_tokens 'lots' must be a whole number"),
        ("gemini:flash:0.5:100,openai:gpt:0.5:100", "tier 1 provider 'openai' must be one of"),
        ("gemini:flash:0.5:100,gemini: :0.5:100", "tier 1 model is empty"),
        ("gemini:flash:0.5", "tier 0 'gemini:flash:0.5' must be provider:model:threshold:"),
    ],
)
def test_tier_errors_name_the_tier_and_its_field(spec: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIGHTLINE_TIERS": spec})
    assert str(info.value).startswith(f"SIGHTLINE_TIERS={spec!r} is invalid: {named}")


@pytest.mark.parametrize("value", ["", "   ", "\t", "a\nb"])
@pytest.mark.parametrize("option", ["--tenant", "--user"])
async def test_memory_refuses_blank_tenant_and_user(
    tmp_path: Path, option: str, value: str
) -> None:
    names = {"--tenant": "acme", "--user": "dev-1", option: value}
    args = [part for pair in names.items() for part in pair]
    line = one_line(*await run_cli("memory", "show", *args, env=bare_env(tmp_path)))
    assert f"argument {option}: must be a non-empty printable name" in line
    assert not (tmp_path / "data").exists()  # refused before any database is started


async def test_config_shows_the_effective_cascade_and_resolves_auto(tmp_path: Path) -> None:
    env = bare_env(tmp_path, GOOGLE_API_KEY=GOOGLE_KEY, SIGHTLINE_MAX_SESSIONS="3")
    code, out, err = await run_cli("config", env=env)
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert ("(unset) -> gemini:gemini-2.5-flash-lite:0.7:512 > gemini:gemini-2.5-flash:0.7:512"
            in lines["SIGHTLINE_TIERS"])
    assert "auto -> gemini" in lines["SIGHTLINE_EMBEDDINGS"]
    assert f"(unset) -> {tmp_path / 'data' / 'costs'}" in lines["SIGHTLINE_COST_LOG_DIR"]
    assert "SIGHTLINE_MAX_SESSIONS          3    #" in lines["SIGHTLINE_MAX_SESSIONS"]
    assert "0 -> " in lines["SIGHTLINE_WORKER_MEMORY_MB"]
    assert GOOGLE_KEY not in out + err

    code, out, err = await run_cli("config", "--json", env=bare_env(tmp_path))
    assert code == 0, err
    shown = json.loads(out)
    assert shown["SIGHTLINE_EMBEDDINGS"]["value"] == "auto"
    assert shown["SIGHTLINE_EMBEDDINGS"]["effective"].startswith("offline (a tenant whose")
    tiers = shown["SIGHTLINE_TIERS"]
    assert tiers["value"] == "(unset)"
    assert tiers["effective"].startswith("gemini:gemini-2.5-flash-lite:0.7:512 > ")
    assert "no model key" in tiers["effective"]
    assert shown["SIGHTLINE_SAMPLE_FPS"]["note"].endswith("range [0.01, 30]")
    assert int(shown["SIGHTLINE_MAX_SESSIONS"]["effective"]) >= 1


@pytest.mark.parametrize("content", [None, "{not json", '{"models": {"m": {}}}'])
async def test_config_exits_2_when_the_price_table_is_unusable(
    tmp_path: Path, content: str | None
) -> None:
    prices = tmp_path / "prices.json"
    if content is not None:
        prices.write_text(content)
    line = one_line(*await run_cli("config", env=bare_env(tmp_path, SIGHTLINE_PRICES=str(prices))))
    assert line.startswith("sightline: SIGHTLINE_PRICES:") and str(prices) in line


async def test_config_names_cascade_models_without_a_price(tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"claude-sonnet-4-6": {
        "input_per_mtok": 0.3, "output_per_mtok": 2.5, "date": "2026-01-01", "source": "test"}}}))
    code, out, err = await run_cli("config", "--json", env=bare_env(
        tmp_path, SIGHTLINE_PRICES=str(prices), GOOGLE_API_KEY=GOOGLE_KEY,
        SIGHTLINE_TIERS="gemini:gemini-9-ultra:0.7:256,gemini:gemini-2.5-flash:0:256"))
    assert code == 0, err
    # genai-prices prices gemini-2.5-flash; neither it nor the file knows gemini-9-ultra
    assert json.loads(out)["SIGHTLINE_PRICES"]["effective"] == (
        f"{GENAI_SOURCE} (bundled data, no auto-update), overridden by {prices} "
        "(no price for gemini-9-ultra)")


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*path, name))
    return found


OWNED = ("config", "dev", "start", "vision", "memory", "screen")


def test_every_option_of_these_commands_has_help() -> None:
    missing = [
        f"{' '.join(path)} {action.dest}"
        for path, parser in _commands(_parser()) if path and path[0] in OWNED
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
        and not isinstance(action, argparse._SubParsersAction)
    ]
    assert missing == []


# a `python3` that is not 3.11, as `make` sees one
OTHER_PYTHON = """#!/bin/sh
if [ "$1" = --version ]; then echo "Python 3.13.1"; exit 0; fi
exit 1
"""


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("uv_cached", [False, True])
@pytest.mark.parametrize("target", ["install", "runtime"])
def test_make_refuses_another_python_before_any_long_step(
    tmp_path: Path, target: str, uv_cached: bool
) -> None:
    """Also when uv is already cached (a second checkout): the check is not uv's to make."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("Makefile", "pyproject.toml", "uv.lock"):
        shutil.copy(ROOT / name, project)
    python = executable(tmp_path / "bin" / "python3", OTHER_PYTHON)
    home = tmp_path / "home"
    uv_ran = tmp_path / "uv-ran"
    if uv_cached:
        uv_version = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
        assert uv_version
        executable(home / ".cache" / "sightline" / f"uv-{uv_version[1]}" / "bin" / "uv",
                   f"#!/bin/sh\ntouch {uv_ran}\n")
    proc = subprocess.run(
        ["make", "--no-print-directory", target, f"PYTHON={python}"], cwd=project,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert proc.stdout.strip() == (f"Sightline needs Python 3.11 as '{python}' (found: Python "
                                   "3.13.1); set PYTHON=/path/to/python3.11")
    assert not uv_ran.exists()
    assert sorted(p.name for p in project.iterdir()) == ["Makefile", "pyproject.toml", "uv.lock"]


@pytest.mark.parametrize("failure, expected", [
    (asyncpg.exceptions.DiskFullError("could not extend file: No space left on device"),
     "the database failed: could not extend file: No space left on device"),
    (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of "
                                                    "operation"),
     "the database failed: connection was closed"),
])
def test_a_database_failing_mid_command_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    failure: Exception, expected: str,
) -> None:
    """A statement that outruns its limit or a database that fails mid-command (seen: a
    10,000-chunk `kb eval` ingest) ends the command with one line and exit 1, no traceback."""
    def fail(_args: argparse.Namespace) -> int:
        raise failure
    monkeypatch.setattr(cli, "_run", fail)
    assert cli.main(["costs"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"sightline: {expected}") and err.count("\n") == 1


def failing_with(monkeypatch: pytest.MonkeyPatch, failing: Callable[[], Awaitable[object]],
                 ) -> None:
    """The command line's command, whichever is named, runs `failing` (as `costs` would run
    its own work) and fails with what it raises."""
    monkeypatch.setattr(cli, "_run", lambda _args: asyncio.run(failing()))


def the_one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The line a failing command ends with: exit 1, no traceback."""
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.removesuffix("\n")


async def sleeping_statement(url: str, limit_s: float | None,
                             server_settings: dict[str, str] | None = None) -> None:
    """A statement that runs for a minute, on a pool opened as the commands open theirs,
    with a limit of `limit_s` (the pool's 30 s would make the test wait 30 s)."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1, **POOL_OPTIONS | {
        "command_timeout": limit_s, "server_settings": server_settings or {}})
    try:
        await pool.fetchval("SELECT pg_sleep(60)")
    finally:
        pool.terminate()  # the statement may still run server-side: no goodbye to wait on


@pytest.mark.parametrize(("limit", "expected"), [
    ("command_timeout", "a database statement took longer than its time limit"),
    ("statement_timeout", "the database failed: canceling statement due to statement timeout"),
])
def test_a_statement_past_its_time_limit_is_the_databases_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    postgres_admin_url: str, limit: str, expected: str,
) -> None:
    """asyncpg's own limit on a statement (the pool's `command_timeout`, what the commands
    set) raises TimeoutError out of its protocol; Postgres's `statement_timeout` cancels the
    statement (QueryCanceledError). Each is said as the database's, against the real server."""
    if limit == "command_timeout":
        failing_with(monkeypatch, lambda: sleeping_statement(postgres_admin_url, 0.3))
    else:
        failing_with(monkeypatch, lambda: sleeping_statement(
            postgres_admin_url, None, {"statement_timeout": "300"}))
    assert the_one_line(capsys, ["costs"]).startswith(f"sightline: {expected}")


async def unanswered_call() -> None:
    """A call to a service that takes the request and never answers, through aiohttp (which
    the LiveKit API client is built on) with a deadline on its reply."""
    held: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda _reader, writer: held.append(writer),
                                        "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=0.3)) as http:
            await http.post(f"http://127.0.0.1:{port}/twirp/livekit.RoomService/ListRooms")
    finally:
        for writer in held:
            writer.close()
        server.close()


def test_a_timeout_elsewhere_is_one_line_not_the_databases(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    postgres_admin_url: str,
) -> None:
    """Once asyncpg was imported, every TimeoutError was said to be a database statement past
    its 30 s limit: a service that does not answer, or a deadline of the command's own around
    a statement, is not the database's limit. Each is one line naming where it timed out."""
    failing_with(monkeypatch, unanswered_call)
    line = the_one_line(capsys, ["costs"])
    assert line.startswith("sightline: timed out in aiohttp.") and "database" not in line
    assert line.endswith(": Timeout on reading data from socket: the command stopped there")

    async def deadline_around_a_statement() -> None:
        async with asyncio.timeout(0.3):
            await sleeping_statement(postgres_admin_url, 30)
    failing_with(monkeypatch, deadline_around_a_statement)
    line = the_one_line(capsys, ["costs"])
    # the wait the deadline ended was in the database's driver, but the limit was not its own
    assert line.startswith("sightline: timed out in asyncpg.") and "limit" not in line


def test_a_database_refusing_connections_mid_command_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Postgres gone mid-command (its socket refuses): asyncpg raises the OSError itself,
    which is said in one line like its own errors; an OSError from elsewhere is not taken for
    the database's."""
    def fail(_args: argparse.Namespace) -> int:
        return asyncio.run(asyncpg.connect("postgresql://u@127.0.0.1:1/db", timeout=5))
    monkeypatch.setattr(cli, "_run", fail)
    assert cli.main(["costs"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sightline: the database connection failed: ConnectionRefusedError")
    assert err.count("\n") == 1

    def elsewhere(_args: argparse.Namespace) -> int:
        raise ConnectionRefusedError(111, "Connection refused")
    monkeypatch.setattr(cli, "_run", elsewhere)
    with pytest.raises(ConnectionRefusedError):
        cli.main(["costs"])


async def test_a_sample_rate_near_zero_is_refused_not_printed_as_nan(tmp_path: Path) -> None:
    """At 5e-324 frames a second the second sample's time overflows: `{"t": NaN}` is no JSON."""
    (tmp_path / "frames").mkdir()
    line = one_line(*await run_cli("vision", "scan", str(tmp_path / "frames"), "--fps",
                                   "5e-324", "--json", env=bare_env(tmp_path)))
    assert "argument --fps: must be a number in [0.01, 60], got '5e-324'" in line


@pytest.mark.parametrize("args", [
    ["kb", "search", "router \udcff", "--tenant", "t"],
    ["screen", "search", "router \udcff", "--tenant", "t"],
    ["kb", "delete", "notes\udcff.md", "--tenant", "t"],
    ["kb", "search", "router", "--tenant", "t", "--where", "team=\udcff"],
    ["costs", "s-\udcff"],
])
async def test_text_that_is_not_utf8_is_one_line(tmp_path: Path, args: list[str]) -> None:
    """Bytes of the command line that are not UTF-8 (\\xff, here as Python keeps it) cannot
    be stored or searched for: refused before any database is started, not a traceback."""
    line = one_line(*await run_cli(*args, env=bare_env(tmp_path)))
    assert "is not UTF-8 text, got '" in line and "\\udcff" in line
    assert not (tmp_path / "data").exists()


async def test_ctrl_c_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """Ctrl-C while a command waits (here on a database that accepts and never answers)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"postgresql://u:p@127.0.0.1:{silent.getsockname()[1]}/db"
        proc = await asyncio.create_subprocess_exec(
            str(SIGHTLINE), "costs", env=bare_env(tmp_path, DATABASE_URL=url),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        connection, _ = await asyncio.to_thread(silent.accept)
        with connection:
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert (proc.returncode, out, err) == (130, b"", b"interrupted\n")


def test_ctrl_c_cancels_a_command_between_its_callbacks_not_inside_one() -> None:
    """The test above failed now and then with asyncio's InvalidStateError traceback before
    "interrupted": asyncio.run's handler cancels the command from a signal handler, inside
    whatever callback runs, and one completing a connection then set the result of the
    future just cancelled. A callback that sends itself SIGINT shows where the cancel lands:
    after the callback, never within it."""
    seen: list[int] = []

    async def command() -> None:
        task = asyncio.current_task()
        assert task is not None

        def callback() -> None:
            os.kill(os.getpid(), signal.SIGINT)
            seen.append(task.cancelling())  # the signal handled, still inside the callback

        asyncio.get_running_loop().call_soon(callback)
        await asyncio.sleep(30)

    before = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            asyncio.run(cli._interruptible(command()))
    finally:
        signal.signal(signal.SIGINT, before)
    assert seen == [0]


async def test_gaps_refresh_without_tier_0_s_key_names_the_variable(tmp_path: Path) -> None:
    line = one_line(*await run_cli("gaps", "refresh", "--tenant", "t", env=bare_env(tmp_path)))
    assert line == ("sightline: `gaps refresh` asks tier 0 (gemini-2.5-flash-lite) to name the "
                    "gaps: set GOOGLE_API_KEY (README: Configuration)")


async def test_kb_ingest_of_a_named_pipe_says_what_it_is_not(tmp_path: Path) -> None:
    pipe = tmp_path / "notes.md"
    os.mkfifo(pipe)
    line = one_line(*await run_cli("kb", "ingest", str(pipe), "--tenant", "t",
                                   env=bare_env(tmp_path)))
    assert f"argument paths: '{pipe}' is not a regular file or folder" in line
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(("url", "why"), [
    ("postgresql://u:pw@127.0.0.1:abc/x", "its port 'abc' must be a whole number in [1, 65535]"),
    ("postgresql://u:pw@127.0.0.1:99999/x", "its port '99999' must be"),
    ("postgresql://u:pw@h1:5432,h2:abc/x", "its port 'abc' must be"),
    ("postgresql:///x?host=/run/pg&port=0", "its port '0' must be"),
    ("postgresql://u:pw@127.0.0.1/x?sslmode=bogus",
     "its sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full"),
    ("postgresql://u:pw@127.0.0.1/x?target_session_attrs=bogus",
     "its target_session_attrs must be one of any, read-write, read-only, primary, standby, "
     "prefer-standby"),
])
async def test_a_database_url_asyncpg_cannot_use_is_one_line(
    tmp_path: Path, url: str, why: str,
) -> None:
    """Said at start, naming the variable (not its value: a secret); not a traceback at the
    first connection, nor "the database failed" with a method's repr in it."""
    line = one_line(*await run_cli("costs", env=bare_env(tmp_path, DATABASE_URL=url)))
    assert line.startswith(f"sightline: DATABASE_URL=*** is invalid: {why}")
