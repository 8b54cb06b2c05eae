"""Run the `sightline` command in a process forked from one that has already imported it.

A CLI test used to start Python and import the command's modules anew for every call: ~0.5 s
of `kb list`, ~4 s of a `replay` (livekit-agents and the SDKs), ~170 calls in the suite. A
fork server, one per pytest process, imports them once and forks a child per call. The child
is still a process of its own: its own environment (set before the command reads any),
working directory, stdin (/dev/null), stdout and stderr, exit status, and interpreter
shutdown (atexit, thread joins, what is logged as objects are collected on the way out), as
the installed script's would be. It differs only in having imported modules before it was
given its environment, so a call whose environment acts at interpreter start or on import
(PYTHON*, locale, vendor settings) or that starts a worker runs the installed script, as does
any call when the server cannot start. `tests/test_cli_forks.py` holds the two paths to the
same output. (multiprocessing's forkserver ends its children with `os._exit`, skipping the
shutdown the script goes through, and hands them no stdout or stderr of their own: hence
this small server.)

Run as a script, this module is the server: `python cli_forks.py SOCKET`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import importlib
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Any

SIGHTLINE = Path(sys.executable).with_name("sightline")
REPO = Path(__file__).resolve().parent.parent
CLI_TIMEOUT = 60  # seconds a command may take before the test fails

# The environment a forked child may be given: what the tests' commands read when they run.
# Anything else may be read by a preloaded module at import (openai's OPENAI_API_TYPE,
# websockets' limits) or by the interpreter or a native library at start (PYTHON*, locale,
# TZ, malloc and OpenMP settings): such a call runs the installed script.
_FORKABLE_ENV = re.compile(
    r"PATH|HOME|LANG|DATABASE_URL|SIGHTLINE_\w+|\w+_API_KEY|LIVEKIT_(URL|API_KEY|API_SECRET)")
_LOCALE = "C.UTF-8"  # the server's (Python's own in the C locale): LANG may name only it
# commands that start workers, servers or processes of their own: as the installed script
_OWN_PROCESS = {"dev", "start", "console"}
# What a command imports that takes long (livekit-agents and the SDKs ~4 s in all), and
# starts no thread when imported. numpy starts OpenBLAS's, which it stops and starts again
# around a fork (pthread_atfork); onnxruntime and OpenCV start threads that do not, so what
# imports them (the embedders, vision's JPEG and OCR) is imported in each child.
_PRELOAD = ("agent.cli", "livekit.agents", "google.genai", "google.genai.types", "anthropic",
            "openai", "aiohttp", "asyncpg", "av", "PIL.Image", "rapidfuzz", "detect_secrets",
            "genai_prices", "tesserocr", "scipy")


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _preload() -> None:
    """Import what `_PRELOAD` names, then check it started no thread a fork would lose."""
    importlib.import_module("numpy")
    with_blas = _threads()
    for name in _PRELOAD:
        importlib.import_module(name)
    if _threads() != with_blas:
        raise RuntimeError(f"the fork server's imports started {_threads() - with_blas} "
                           "threads: forking it would lose them")


def _serve(path: str) -> None:
    """Import, then fork a child per call on the socket at `path` and send its caller the
    child's pid, then its exit status; until the pytest process that started it is gone."""
    _preload()
    sys.path[0] = str(SIGHTLINE.parent)  # as the installed script's
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print("ready", flush=True)
    callers: dict[int, socket.socket] = {}
    while os.getppid() == parent:
        if select.select([listener], [], [], 0.02)[0]:
            conn, _ = listener.accept()
            size = struct.unpack("!I", _read(conn, 4))[0]
            request = json.loads(_read(conn, size))
            sys.stdout.flush()
            sys.stderr.flush()
            # the collector leaves what the server holds alone: a child walking it copies each
            # page it touches, 1.2 s of a `sightline --help` that takes 0.2 s on its own
            gc.freeze()
            pid = os.fork()
            if pid == 0:
                listener.close()
                for caller in callers.values():
                    caller.close()
                conn.close()
                _child(request)  # raises SystemExit: the interpreter's own shutdown
            conn.sendall(f"{pid}\n".encode())
            callers[pid] = conn
        while callers:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = callers.pop(pid)
            with contextlib.suppress(OSError):
                conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
            conn.close()


def _read(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the caller went away")
        data += chunk
    return data


def _child(request: dict[str, Any]) -> None:
    """Become the command: its files, directory and environment, then `sightline ARGS`. Ends
    in SystemExit, as the installed script does, so the interpreter shuts down as its would."""
    try:
        _redirect(0, os.devnull, os.O_RDONLY)
        _redirect(1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        _redirect(2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.chdir(request["cwd"])
        env = request["env"]
        if not {"LANG", "LC_ALL", "LC_CTYPE"} & env.keys():
            # Python's start in the C locale sets it (PEP 538), in the server as in the script
            env = {"LC_CTYPE": os.environ["LC_CTYPE"], **env}
        os.environ.clear()
        os.environ.update(env)
        sys.argv = [str(SIGHTLINE), *request["args"]]
        from agent.cli import main
    except BaseException:  # never back into the server's loop
        traceback.print_exc()
        os._exit(1)
    try:
        code = main(request["args"])
    except SystemExit as exc:
        raise SystemExit(exc.code) from None
    except BaseException:  # what Python prints for an exception that escapes the script
        traceback.print_exc()
        code = 1
    raise SystemExit(code)


def _redirect(fd: int, path: str, flags: int) -> None:
    opened = os.open(path, flags, 0o600)
    os.dup2(opened, fd)
    os.close(opened)


class ServerGone(Exception):
    """The fork server no longer takes calls."""


class ForkServer:
    """One server per pytest process, started on first use and stopped with the process."""

    def __init__(self) -> None:
        self._dir = self._socket = ""
        self._lock = threading.Lock()
        self._up: bool | None = None

    def up(self) -> bool:
        """Whether the server serves, started on the first call (it blocks: from a thread)."""
        with self._lock:
            if self._up is None:
                self._dir = tempfile.mkdtemp(prefix="sightline-forks-")
                self._socket = os.path.join(self._dir, "server")
                proc = subprocess.Popen(
                    [sys.executable, __file__, self._socket], cwd=REPO,
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self._dir},
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True)
                atexit.register(self._stop, proc)
                assert proc.stdout is not None
                self._up = proc.stdout.readline() == b"ready\n"
            return self._up

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.kill()
        proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def run(self, args: tuple[str, ...], env: dict[str, str]) -> tuple[int, str, str]:
        scratch = await asyncio.to_thread(tempfile.mkdtemp, dir=self._dir)
        out, err = os.path.join(scratch, "out"), os.path.join(scratch, "err")
        request = json.dumps({"args": args, "env": env, "cwd": os.getcwd(),
                              "stdout": out, "stderr": err}).encode()
        try:
            reader, writer = await asyncio.open_unix_connection(self._socket)
        except OSError:  # it was killed: the calls from now on run the installed script
            self._up = False
            raise ServerGone from None
        try:
            try:
                writer.write(struct.pack("!I", len(request)) + request)
                await writer.drain()
                forked = await reader.readline()
            except OSError:
                forked = b""
            if not forked:  # it died before it forked (or in the instant after: not seen)
                self._up = False
                raise ServerGone
            pid = int(forked)
            try:
                async with asyncio.timeout(CLI_TIMEOUT):
                    ended = await reader.readline()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                raise
            if not ended:
                raise RuntimeError(f"the fork server died while `sightline {' '.join(args)}` "
                                   "ran: its exit status is lost")
            code = int(ended)
        finally:
            writer.close()
        return code, *await asyncio.to_thread(_outputs, scratch)


def _outputs(scratch: str) -> tuple[str, str]:
    """What a child wrote, its scratch directory then removed."""
    found = tuple(Path(scratch, name).read_text() for name in ("out", "err"))
    shutil.rmtree(scratch)
    return found  # type: ignore[return-value]


_server = ForkServer()


def serving() -> bool:
    """Whether this process's fork server runs (started if not yet: it blocks a few seconds)."""
    return _server.up()


def forkable(args: tuple[str, ...], env: dict[str, str]) -> bool:
    """Whether a forked child runs `sightline ARGS` in `env` as the installed script would."""
    return (all(_FORKABLE_ENV.fullmatch(key) for key in env)
            and env.get("LANG", _LOCALE) == _LOCALE
            and not (args and args[0] in _OWN_PROCESS))


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """`sightline ARGS` in `env`: (exit code, stdout, stderr), forked where that runs it as
    the installed script would."""
    if forkable(args, env) and await asyncio.to_thread(_server.up):
        with contextlib.suppress(ServerGone):
            return await _server.run(args, env)
    return await run_installed(*args, env=env)


async def run_installed(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run the installed `sightline` script as a user would; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        str(SIGHTLINE), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=CLI_TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


if __name__ == "__main__":
    _serve(sys.argv[1])
