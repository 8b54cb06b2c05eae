"""The tests' `run_cli` forks each command from a server that has imported it already
(tests/cli_forks.py). These hold it to what the installed script gives for the same call:
the same stdout, stderr and exit status, on success, on a fixable error and on a usage
error, in the environment the test gave and nothing else; and calls it cannot run as the
script would go to the script."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from cli_forks import forkable, run_cli, run_installed, serving
from conftest import cli_env

from agent.config import Settings

CALLS = [
    (("--help",), {}),
    (("config", "--json"), {"GOOGLE_API_KEY": "k", "SIGHTLINE_SAMPLE_FPS": "2"}),
    (("costs", "--tenant", "nobody"), {}),
    (("vision", "scan", "/nonexistent/frames"), {}),  # a fixable error: one line, exit 2
    (("kb", "search", " ", "--tenant", "acme"), {}),  # refused by the argument parser
    (("costs", "--since", "1h"), {}),  # a usage error
    (("costs",), {"DATABASE_URL": "postgresql://sightline@127.0.0.1:9/none"}),  # exit 1
]


@pytest.mark.parametrize(("args", "more"), CALLS, ids=[" ".join(args) for args, _ in CALLS])
async def test_a_forked_command_says_what_the_installed_script_says(
    settings: Settings, args: tuple[str, ...], more: dict[str, str],
) -> None:
    env = cli_env(settings) | more
    assert forkable(args, env) and await asyncio.to_thread(serving)
    forked = await run_cli(*args, env=env)
    assert forked == await run_installed(*args, env=env)
    assert "Traceback" not in forked[2]


async def test_a_forked_command_sees_only_the_environment_it_was_given(tmp_path: Path) -> None:
    """The server's own variables (its HOME) and the test process's are not the child's;
    Python's locale coercion is, as it is the script's."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "SIGHTLINE_DATA_DIR": str(tmp_path / "data")}
    code, out, err = await run_cli("config", "--json", env=env)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["SIGHTLINE_DATA_DIR"]["value"] == str(tmp_path / "data")
    assert shown["SIGHTLINE_SAMPLE_FPS"]["value"] == "1.0"
    assert (code, out, err) == await run_installed("config", "--json", env=env)


@pytest.mark.parametrize(("args", "env"), [
    (("config",), {"PYTHONPATH": "/elsewhere"}),  # read when the interpreter starts
    (("config",), {"LANG": "de_DE.UTF-8"}),
    (("config",), {"OPENAI_API_TYPE": "azure"}),  # read by openai when imported
    (("start",), {}),  # a worker: processes and signals of its own
])
def test_calls_a_fork_cannot_run_as_the_script_would_run_the_script(
    args: tuple[str, ...], env: dict[str, str],
) -> None:
    assert not forkable(args, {"PATH": "/usr/bin", **env})
