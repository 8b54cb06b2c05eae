"""`sightline` — the command line: run the worker, replay fixtures, read costs, show config.

Each command group lives in a `cli_*` module whose parser needs only argparse; the group's module
is imported when its command runs, and imports its heavy dependencies (LiveKit, the model SDKs,
Postgres, OpenCV) inside `run`, so `sightline --help` loads nothing but the parsers.

Errors a user can fix (configuration, an unreachable database, a bad fixture) print one line
naming the problem and exit with status 2; they never print a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import cli_costs, cli_kb, cli_memory, cli_replay, cli_screen, cli_vision, cli_worker

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


def _is_user_error(exc: BaseException) -> bool:
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sightline", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sightline {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_worker.add_parser(sub)
    sub.add_parser("config", help="print the effective configuration, secrets masked")
    cli_replay.add_parser(sub)
    cli_costs.add_parser(sub)
    cli_vision.add_parser(sub)
    cli_kb.add_parser(sub)
    cli_memory.add_parser(sub)
    cli_screen.add_parser(sub)
    return parser


def _config() -> int:
    from .config import Settings

    rows = Settings.from_env().describe()
    width = max(len(env) for env, _, _ in rows)
    for env, value, note in rows:
        print(f"{env:<{width}}  {value}" + (f"    # {note}" if note else ""))
    return 0


def _run(args: argparse.Namespace) -> Any:
    if args.command == "config":
        return _config()
    if args.command == "vision":  # offline analysis: no settings, services or keys
        return cli_vision.run(args)
    from .config import Settings

    settings = Settings.from_env()
    if args.command in ("dev", "start"):
        return cli_worker.run(settings, args)
    command = {"replay": cli_replay, "costs": cli_costs, "kb": cli_kb, "memory": cli_memory,
               "screen": cli_screen}[args.command]
    return asyncio.run(command.run(settings, args))


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
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        print(f"sightline: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
