"""The structure the code promises: dependencies point one way, and the worker's import path
carries no evaluation or development tooling.

Protects: `memory/` and `vision/` import nothing from `agent/` (nor from `tools/` or `bench/`),
`tools/` nothing from `agent/`, and no runtime package imports `bench/` at module level (the CLI
reaches it lazily); importing the worker loads none of the eval / dev libraries; `sightline
--help` loads none of the heavy runtime libraries (checked by what is imported, never by time).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "memory", "vision", "tools", "bench")
# what each package may import of the others; anything else is a layering error
ALLOWED = {
    "agent": {"memory", "vision", "tools"},  # and bench, only lazily inside functions
    "tools": {"memory", "vision"},
    "memory": set(),
    "vision": set(),
    "bench": {"agent", "memory", "vision", "tools"},
}
EVAL_AND_DEV = ("scipy", "imagehash", "scenedetect", "pandas", "llama_index.retrievers",
                "llama_index.readers", "bm25s", "pytest", "ruff", "bench")
HEAVY = ("livekit.agents", "livekit.rtc", "google.genai", "anthropic", "asyncpg", "cv2", "av",
         "numpy", "llama_index", "cohere", "wordllama", "tokenizers", "safetensors")


def imports_of(path: Path, *, top_level_only: bool) -> set[str]:
    """The Sightline packages a module imports (module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks are not imports at run time
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found |= {name.split(".")[0] for name in names if name.split(".")[0] in PACKAGES}
    return found


def package_graph(*, top_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            graph[package] |= imports_of(path, top_level_only=top_level_only) - {package}
    return graph


def test_dependencies_point_one_way() -> None:
    anywhere = package_graph(top_level_only=False)
    for package, allowed in ALLOWED.items():
        lazily = {"bench"} if package == "agent" else set()
        assert anywhere[package] <= allowed | lazily, (
            f"{package}/ imports {sorted(anywhere[package] - allowed - lazily)}")
    at_import = package_graph(top_level_only=True)
    assert "bench" not in at_import["agent"], "the CLI must import bench/ only when it runs"


def loaded_after(statement: str) -> set[str]:
    """Modules present in a fresh interpreter after running `statement`."""
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO / "tests").stdout
    return set(json.loads(out.splitlines()[-1]))


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if n in modules or any(m.startswith(n + ".") for m in modules))


@pytest.mark.parametrize("entry", [
    "import agent.worker", "import agent.session", "import agent.replay",
])
def test_the_worker_import_path_has_no_eval_or_dev_tooling(entry: str) -> None:
    assert loaded(loaded_after(entry), EVAL_AND_DEV) == []


def test_help_loads_no_heavy_library() -> None:
    modules = loaded_after("from agent.cli import _parser\n_parser().format_help()")
    assert loaded(modules, HEAVY) == []


MODEL_SDKS = ("livekit.agents", "google.genai", "anthropic", "openai")  # cohere loads lazily


@pytest.mark.parametrize("entry", [
    # what `sightline gaps list|dismiss|resolve`, `kb list|search|delete` and
    # `memory show|forget` import before they answer: none of them calls a model
    "from memory.gaps import gaps, set_status",
    "from memory.knowledge import KnowledgeBase, stored_models",
    "from agent.components import make_embedder",
    "from memory.spill_recovery import recover_spills",
])
def test_read_only_commands_import_no_model_sdk(entry: str) -> None:
    """Those SDKs take 1-2 s each to import: ops commands answer in about a second without
    them (`sightline gaps list` took 7 s when it loaded them)."""
    assert loaded(loaded_after(entry), MODEL_SDKS) == []


def test_cli_copies_of_choices_match_their_source() -> None:
    """The CLI repeats two lists so that --help need not import their modules."""
    from agent import cli_kb, cli_vision
    from bench.vision_eval import SYSTEMS
    from memory.knowledge import FUSIONS

    assert cli_kb.FUSIONS == FUSIONS and cli_vision.SYSTEMS == SYSTEMS


def uv() -> Path:
    """The uv that `make` installed (its version is the Makefile's)."""
    version = next(line.split(":=")[1].strip() for line in
                   (REPO / "Makefile").read_text().splitlines()
                   if line.startswith("UV_VERSION"))
    return Path.home() / ".cache" / "sightline" / f"uv-{version}" / "bin" / "uv"


def locked_set(*flags: str) -> set[str]:
    out = subprocess.run(
        [str(uv()), "export", "--locked", "--format", "requirements-txt", "--no-hashes",
         "--no-emit-project", *flags],
        capture_output=True, text=True, check=True, cwd=REPO).stdout
    return {line.split("==")[0].lower() for line in out.splitlines() if "==" in line}


def test_the_runtime_set_leaves_out_dev_and_eval_packages() -> None:
    """What the worker image installs (`uv sync --no-dev`, as in the Dockerfile)."""
    runtime, everything = locked_set("--no-dev"), locked_set("--all-extras")
    dev_and_eval = {"pytest", "ruff", "scipy", "imagehash", "scenedetect-headless",
                    "llama-index-retrievers-bm25", "bm25s"}
    assert dev_and_eval <= everything and not dev_and_eval & runtime
    assert {"livekit-agents", "google-genai", "anthropic", "asyncpg"} <= runtime
    dockerfile = (REPO / "Dockerfile").read_text()
    syncs = [line for line in dockerfile.splitlines() if line.startswith("RUN uv sync")]
    assert syncs and all("--no-dev" in s and "--extra" not in s for s in syncs)
    assert "COPY bench" not in dockerfile and "COPY tests" not in dockerfile
