"""`sightline` — the command line: run the worker, replay fixtures, read costs, show config.

Each command group lives in a `cli_*` module whose parser needs only argparse; the group's module
is imported when its command runs, and imports its heavy dependencies (LiveKit, the model SDKs,
Postgres, OpenCV) inside `run`, so `sightline --help` loads nothing but the parsers.

Errors a user can fix (configuration, an unreachable database, a bad fixture) print one line
naming the problem and exit with status 2; they never print a traceback. Nor does Ctrl-C: one
line, `interrupted`, and status 130.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

from . import (
    cli_alerts,
    cli_console,
    cli_costs,
    cli_gaps,
    cli_kb,
    cli_memory,
    cli_quality,
    cli_replay,
    cli_report,
    cli_screen,
    cli_usage,
    cli_vision,
    cli_worker,
)
from .cli_common import one_line

log = logging.getLogger("sightline")

# failures a user can fix, by the module that defines them: one line, exit 2
_USER_ERRORS = {
    "agent.cli_common": ("UserError",),
    "agent.config": ("ConfigError",),
    "agent.replay_script": ("FixtureError",),
    "memory.db": ("DatabaseUnavailable",),
    "memory.knowledge": ("KnowledgeError",),
    "vision.video_file": ("VideoUnreadable",),
    "bench.vision_eval": ("LabelError",),
}


def is_user_error(exc: BaseException) -> bool:
    """Only a module that was imported can have raised its error: no import happens here."""
    return any(
        isinstance(exc, getattr(sys.modules[module], name))
        for module, names in _USER_ERRORS.items() if module in sys.modules
        for name in names
    )


def _version() -> str:
    try:
        return version("sightline")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """argparse, with a misused option reported the way every other fixable error is: one line
    and status 2 (argparse's own puts the whole usage above it). Subcommands inherit it."""

    def error(self, message: str) -> NoReturn:
        hint = f"(`{self.prog} --help` lists what it accepts)"
        self.exit(2, f"{self.prog}: {one_line(message)} {hint}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        return super().parse_known_args(self._values_joined(args), namespace)

    def _values_joined(self, args: Sequence[str] | None) -> list[str]:
        """argparse takes a value that starts with `-` (`--since -1h`) for an option, and says
        the option "expected one argument"; joined to its option (`--since=-1h`), the value
        meets the option's own check, which says what is wrong with it. A real option after
        an option that wants a value (`--since --json`) is left as it is."""
        given = list(sys.argv[1:] if args is None else args)
        wants_value = {s for a in self._actions if a.option_strings and a.nargs is None
                       for s in a.option_strings}
        joined: list[str] = []
        for arg in given:
            if (joined and joined[-1] in wants_value and arg.startswith("-") and arg != "--"
                    and arg.split("=", 1)[0] not in self._option_string_actions):
                joined[-1] = f"{joined[-1]}={arg}"
            else:
                joined.append(arg)
        return joined


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sightline", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sightline {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_worker.add_parser(sub)
    config = sub.add_parser(
        "config", help="print the effective configuration, secrets masked, with what the unset "
                       "and `auto` settings resolve to; exit 2 if the price table is unusable")
    config.add_argument("--json", action="store_true",
                        help="one JSON object: variable -> value, effective value, note")
    cli_replay.add_parser(sub)
    cli_costs.add_parser(sub)
    cli_vision.add_parser(sub)
    cli_kb.add_parser(sub)
    cli_memory.add_parser(sub)
    cli_screen.add_parser(sub)
    cli_console.add_parser(sub)
    cli_quality.add_parser(sub)
    cli_usage.add_parser(sub)
    cli_alerts.add_parser(sub)
    cli_report.add_parser(sub)
    cli_gaps.add_parser(sub)
    return parser


def _config(as_json: bool) -> int:
    """Each variable's value, and what the unset and `auto` ones resolve to here: the cascade
    the worker would run, the embedder, the capacity, the directories and the price table,
    loaded as a session loads it (an unusable one raises ConfigError: exit 2)."""
    from .capacity import Limits
    from .config import Settings
    from .pricing import PriceTable
    from .worker_processes import process_count

    settings = Settings.from_env()
    prices = PriceTable.load(settings.prices_file)
    limits = Limits.for_host(settings.max_sessions, settings.worker_memory_mb)
    tiers = settings.cascade_tiers()
    unpriced = sorted({t.model for t in tiers if prices.get(t.model) is None})
    keyless = not (settings.gemini_api_key or settings.anthropic_api_key)
    resolved = {
        "DATABASE_URL": None if settings.database_url
        else f"embedded Postgres in {settings.data_dir / 'pgdata'}",
        "SIGHTLINE_TIERS": " > ".join(map(str, tiers))
        + (" (no model key: `dev`/`start` need one; replay runs without)" if keyless else ""),
        "SIGHTLINE_EMBEDDINGS": settings.embeddings_in_use()
        + (" (a tenant whose knowledge is stored with the other keeps that)"
           if settings.embeddings == "auto" else ""),
        "SIGHTLINE_COST_LOG_DIR": str(settings.costs_dir),
        "SIGHTLINE_PRICES": prices.describe()
        + (f" (no price for {', '.join(unpriced)})" if unpriced else ""),
        "SIGHTLINE_MAX_SESSIONS": str(limits.sessions),
        "SIGHTLINE_WORKER_PROCESSES": str(process_count(settings, limits.sessions)),
        "SIGHTLINE_WORKER_MEMORY_MB": f"{limits.memory_mb:.0f}",
    }
    rows = [(env, value, resolved.get(env) or value, note)
            for env, value, note in settings.describe()]
    if as_json:
        print(json.dumps({env: {"value": value, "effective": effective, "note": note}
                          for env, value, effective, note in rows}, indent=2))
        return 0
    width = max(len(env) for env, *_ in rows)
    for env, value, effective, note in rows:
        shown = value if effective == value else f"{value} -> {effective}"
        print(f"{env:<{width}}  {shown}" + (f"    # {note}" if note else ""))
    return 0


def _run(args: argparse.Namespace) -> Any:
    if args.command == "config":
        return _config(args.json)
    if args.command == "vision":  # offline analysis: no settings, services or keys
        return cli_vision.run(args)
    from .config import Settings

    settings = Settings.from_env()
    if args.command in ("dev", "start"):
        return cli_worker.run(settings, args)
    command = {"replay": cli_replay, "costs": cli_costs, "kb": cli_kb, "memory": cli_memory,
               "screen": cli_screen, "console": cli_console, "quality": cli_quality,
               "usage": cli_usage, "alerts": cli_alerts,
               "report": cli_report, "gaps": cli_gaps}[args.command]
    return asyncio.run(_interruptible(command.run(settings, args)))


async def _interruptible(command: Coroutine[Any, Any, Any]) -> Any:
    """`command`, which Ctrl-C cancels from the event loop, between two of its callbacks, and
    then ends as a KeyboardInterrupt (a second Ctrl-C at once). asyncio.run's own handler
    cancels from a signal handler, which may run inside a callback: one completing a
    connection (`_sock_connect_cb`) then set the result of the future it had just cancelled,
    and asyncio logged the InvalidStateError with a traceback before "interrupted"."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        if interrupted:
            raise KeyboardInterrupt
        interrupted = True
        task.cancel()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        return await command
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command not in ("dev", "start"):  # the worker sets up livekit-agents' own logging
        logging.basicConfig(
            level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
    try:
        return int(_run(args))
    except BrokenPipeError:  # `sightline ... | head`: the reader has all it wanted
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:  # Ctrl-C: where it stopped is of no use to the user
        # nor what it left half done: a connection being opened fails once collected, and
        # asyncio would log it as a "Future exception was never retrieved" on the way out
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        failure = database_failure(exc)
        if failure is None and isinstance(exc, TimeoutError):
            failure = timeout_failure(exc)
        if failure:
            print(f"sightline: {failure}", file=sys.stderr)
            return 1
        if not is_user_error(exc):
            raise
        print(f"sightline: {one_line(str(exc))}", file=sys.stderr)
        return 2


def database_failure(exc: BaseException) -> str | None:
    """One line for a database that failed in the middle of a command (it refused a
    statement, dropped the connection, or a statement outran its time limit). Only what
    came up through asyncpg is the database's: a TimeoutError from a provider, LiveKit or a
    lock is not, even in a command that has a database open."""
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is None:
        return None
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        # a server-side statement_timeout is one of these: QueryCanceledError
        return f"the database failed: {one_line(str(exc))}"
    if not (isinstance(exc, OSError) and _raised_in(exc, "asyncpg")):
        return None
    if isinstance(exc, TimeoutError):  # one of asyncpg's limits; it says none in the message
        where = _innermost_module(exc)
        if where.startswith("asyncpg.protocol"):  # a statement's wait for its result
            return ("a database statement took longer than its time limit (30 s for most): "
                    "the command stopped there")
        if where == "asyncpg.pool":
            return "no database connection came free in time: the command stopped there"
        return "connecting to the database took too long: the command stopped there"
    # refused, reset: it went away
    return f"the database connection failed: {type(exc).__name__}: {one_line(str(exc))}"


def timeout_failure(exc: TimeoutError) -> str:
    """One line for a TimeoutError that is not the database's: what timed out, as far as
    the exception tells (its message; the module it was raised in, or for a deadline set
    around a call, the module that call was waiting in when the deadline passed)."""
    where = _innermost_module(exc)
    said = one_line(str(exc))
    return ("timed out" + (f" in {where}" if where else "") + (f": {said}" if said else "")
            + ": the command stopped there")


def _innermost_module(exc: BaseException) -> str:
    """The module of the innermost frame of `exc`'s traceback that is not the standard
    library's (asyncio's timeouts raise it for whoever set the deadline); for a deadline's
    TimeoutError, whose cause is the cancelled wait, the innermost of that wait. '' when no
    frame is outside the standard library."""
    modules = _modules(exc)
    if isinstance(exc.__cause__, asyncio.CancelledError):
        modules += _modules(exc.__cause__)
    outside = [m for m in modules if m.partition(".")[0] not in sys.stdlib_module_names]
    return outside[-1] if outside else ""


def _raised_in(exc: BaseException, package: str) -> bool:
    """Whether `exc` passed through `package`'s code on its way up."""
    return any(module.partition(".")[0] == package for module in _modules(exc))


def _modules(exc: BaseException) -> list[str]:
    """The modules of the frames `exc` passed through, outermost first."""
    modules = []
    frame = exc.__traceback__
    while frame is not None:
        modules.append(str(frame.tb_frame.f_globals.get("__name__", "")))
        frame = frame.tb_next
    return modules


if __name__ == "__main__":
    sys.exit(main())
