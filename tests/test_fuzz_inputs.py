"""Property-based fuzzing (Hypothesis) of the inputs the command line takes: environment
settings, command-line options and detector settings, and label files for `vision eval`.

Protects (issue 14): whatever a user types, the answer is a result or one line naming the input
(exit 2), never a traceback; an accepted number is inside its documented range. Bounded: each
test runs a fixed number of examples, derandomized in CI so a run is reproducible.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.cli import main
from agent.config import RANGES, ConfigError, Settings
from bench.vision_eval import LabelError, load_labels
from vision.change import SETTINGS

FUZZ = settings(deadline=None, derandomize=bool(os.environ.get("CI")),
                suppress_health_check=[HealthCheck.function_scoped_fixture])
VARIABLES = [env for env, _, _ in Settings.from_env({}).describe()] + ["GEMINI_API_KEY"]

# what people type into numeric settings, and what breaks parsers: signs, exponents, the
# special floats, whitespace, huge and unicode digits, and any text at all
numberish = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["nan", "-inf", "Infinity", "1e400", "0x10", "1_000", " 7 ", "٣", "", "-0",
                     "9" * 5000, "1.", ".5", "+3", "true"]),
    st.text(max_size=12),
)


def one_line_naming(message: str, names: list[str]) -> None:
    assert len(message.splitlines()) == 1, message
    assert any(message.startswith(f"{name}=") for name in names), message


@settings(FUZZ, max_examples=100)
@given(env=st.dictionaries(st.sampled_from(VARIABLES), numberish, max_size=6))
def test_settings_from_any_environment_are_in_range_or_one_line(env: dict[str, str]) -> None:
    try:
        loaded = Settings.from_env(env)
    except ConfigError as exc:
        one_line_naming(str(exc), list(env))
        return
    values = {env_: getattr(loaded, field) for env_, field in _fields().items()}
    for variable, accepted in RANGES.items():
        value = values[variable]
        assert value is None or accepted.contains(value), (variable, value)
    assert 0 <= loaded.budget_max_tier < len(loaded.cascade_tiers())
    for tier in loaded.cascade_tiers():
        assert 0 <= tier.threshold <= 1 and tier.max_output_tokens >= 1 and tier.model


def _fields() -> dict[str, str]:
    """Variable -> Settings attribute, for the numeric ones: the attribute is the variable's
    name without its SIGHTLINE_ prefix, lower-cased."""
    return {env: env.removeprefix("SIGHTLINE_").lower() for env in RANGES}


tier_field = st.one_of(numberish, st.sampled_from(["gemini", "anthropic", "claude-sonnet-4-6"]))


@settings(FUZZ, max_examples=100)
@given(tiers=st.lists(st.lists(tier_field, min_size=1, max_size=5).map(":".join),
                      min_size=1, max_size=4).map(",".join),
       budget_tier=numberish, google=st.booleans())
def test_any_tiers_spec_is_a_cascade_or_one_line(
    tiers: str, budget_tier: str, google: bool
) -> None:
    env = {"SIGHTLINE_TIERS": tiers, "SIGHTLINE_BUDGET_MAX_TIER": budget_tier,
           **({"GOOGLE_API_KEY": "g-key"} if google else {})}
    try:
        loaded = Settings.from_env(env)
    except ConfigError as exc:
        one_line_naming(str(exc), list(env))
        return
    assert 0 <= loaded.budget_max_tier < len(loaded.cascade_tiers())


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """A clean environment for one in-process run of `main` (Hypothesis reruns the test body,
    so pytest's per-test monkeypatch cannot reset it between examples)."""
    keep = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    with mock.patch.dict(os.environ, {**keep, **values}, clear=True):
        yield


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """`sightline ARGV` in this process: (exit code, stdout, stderr). Any exception other than
    argparse's exit escapes and fails the test: that is a traceback a user would see."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_clean(code: int, err: str) -> None:
    event(f"exit {code}")  # --hypothesis-show-statistics: how many examples got how far
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 160x90 PNG frames: a screen that changes once, and one corrupt file."""
    folder = tmp_path_factory.mktemp("frames")
    for i in range(4):
        image = np.full((90, 160, 3), 40, np.uint8)
        cv2.putText(image, "ok" if i < 2 else "changed", (10, 50), cv2.FONT_HERSHEY_SIMPLEX,
                    0.8, (230, 230, 230), 2)
        cv2.imwrite(str(folder / f"frame-{i:03d}.png"), image)
    (folder / "frame-004.png").write_bytes(b"not a png")
    return folder


def _in_range(name: str) -> st.SearchStrategy[str]:
    """A value the setting accepts, as text: most examples should get to run the detector."""
    accepted = SETTINGS[name].range
    low = math.nextafter(accepted.low, math.inf) if accepted.open_low else accepted.low
    if accepted.kind is int:
        return st.integers(int(low), int(accepted.high)).map(str)
    return st.floats(low, accepted.high).map(str)


setting = st.one_of(
    st.sampled_from(sorted(SETTINGS)).flatmap(lambda name: _in_range(name).map(f"{name}=".__add__)),
    st.tuples(st.one_of(st.sampled_from(sorted(SETTINGS)), st.text(max_size=10)), numberish)
    .map("=".join),
)


@settings(FUZZ, max_examples=60)
@given(sets=st.lists(setting, max_size=3),
       fps=st.one_of(st.none(), st.floats(0.1, 60).map(str), numberish), as_json=st.booleans())
def test_vision_scan_with_any_settings_scans_or_says_one_line(
    frames: Path, sets: list[str], fps: str | None, as_json: bool
) -> None:
    argv = ["vision", "scan", str(frames), *(f"--set={s}" for s in sets),
            *([f"--fps={fps}"] if fps is not None else []), *(["--json"] if as_json else [])]
    with environment():
        code, out, err = run_main(argv)
    assert_clean(code, err)
    if code == 0 and as_json:
        summary = json.loads(out.splitlines()[-1])
        assert summary["sampled"] >= 1 and summary["invalid"] == 1


@settings(FUZZ, max_examples=60)
@given(argv=st.one_of(
    st.lists(st.sampled_from(["--json", "--help", "-x", "extra", "--set", "--fps=2"]),
             max_size=3).map(lambda rest: ["vision", "settings", *rest]),
    st.lists(st.one_of(st.sampled_from(["--json", "--bogus"]), st.text(max_size=8)),
             max_size=3).map(lambda rest: ["config", *rest]),
    st.tuples(st.sampled_from(["show", "forget"]), st.text(max_size=8), st.text(max_size=8))
    .map(lambda a: ["memory", a[0], "--tenant", a[1], "--user", a[2], "--help"]),
    st.lists(st.text(max_size=10), max_size=4),
))
def test_any_argv_of_the_offline_commands_is_clean(argv: list[str]) -> None:
    """Commands that need no database: a result, their help, or one line and exit 2."""
    with environment(SIGHTLINE_DATA_DIR=str(Path.cwd() / "no-such-dir" / "data")):
        code, _, err = run_main(argv)
    assert_clean(code, err)


def _can_be_in_environ(value: str) -> bool:
    """What a real environment can hold: no NUL, and encodable for the OS."""
    try:
        return b"\0" not in os.fsencode(value)
    except UnicodeEncodeError:
        return False


@settings(FUZZ, max_examples=100)
@given(env=st.dictionaries(st.sampled_from(VARIABLES), numberish.filter(_can_be_in_environ),
                           max_size=4),
       as_json=st.booleans())
def test_config_under_any_environment_is_clean(env: dict[str, str], as_json: bool) -> None:
    with environment(**env):
        code, out, err = run_main(["config", *(["--json"] if as_json else [])])
    assert_clean(code, err)
    if code == 0 and as_json:
        assert set(json.loads(out)) >= set(RANGES)


LABELS = Path(__file__).parent.parent / "fixtures" / "vision_eval" / "sessions"
ORIGINAL = json.loads((LABELS / "dev5-errors.labels.json").read_text())

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
label_keys = st.sampled_from(["name", "split", "video", "duration", "events", "busy",
                              "video_segments", "t", "kind", "text", "start", "end"])


def _mutate(document: object, path: list[int], key: str, value: object) -> object:
    """Replace or add `key` in the dict found by following `path` (indices into the dicts and
    lists on the way): a small, structure-aware change to a real labels file."""
    node = document
    for step in path:
        children = list(node.values()) if isinstance(node, dict) else node
        if not isinstance(children, list) or not children:
            break
        candidate = children[step % len(children)]
        if not isinstance(candidate, dict | list):
            break
        node = candidate
    if isinstance(node, dict):
        node[key] = value
    elif isinstance(node, list) and node:
        node[path[-1] % len(node) if path else 0] = value
    return document


@settings(FUZZ, max_examples=150)
@given(mutations=st.lists(st.tuples(st.lists(st.integers(0, 50), max_size=3), label_keys,
                                    json_values), min_size=1, max_size=3))
def test_mutated_label_files_load_or_give_one_line(
    tmp_path: Path, mutations: list[tuple[list[int], str, object]]
) -> None:
    document = json.loads(json.dumps(ORIGINAL))
    for path, key, value in mutations:
        document = _mutate(document, path, key, value)
    labels = tmp_path / "fuzzed.labels.json"
    labels.write_text(json.dumps(document))
    (tmp_path / "dev5-errors.webm").write_bytes(b"")  # the video it names exists
    try:
        session = load_labels(labels)
    except LabelError as exc:
        assert len(str(exc).splitlines()) == 1, str(exc)
        assert str(labels) in str(exc)
        return
    numbers = [session.duration, *(e.t for e in session.events),
               *(x for s in (*session.busy, *session.video_segments) for x in (s.start, s.end))]
    assert all(math.isfinite(x) and x >= 0 for x in numbers), numbers
