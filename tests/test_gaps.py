"""Knowledge gaps (`sightline gaps`) on the scripted fixture: acme's failed questions (low
confidence, top tier, rephrased, said unhelpful, unanswered) clustered with SciPy on the
offline embedder's vectors, named by tier 0 (scripted replies through the real google-genai
client and the wire-format server), scored, stored; dismissed gaps stay dismissed; a newly
ingested document that answers a gap resolves it, an unrelated one does not.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import cli_env, run_cli
from ops_fixture import GAP_SESSIONS, PLAN, record_plan

from agent.config import Settings
from agent.gaps import cluster
from agent.wire_format_server import CapturedRequest, ScriptedModelServer, ScriptedReply
from memory.db import Database
from memory.gaps import gaps
from memory.store import Store

API_KEY = {"question": "How do I reset or rotate my API key?",
           "outline": ["Where API keys live", "Resetting a key", "Who may reset keys"]}
WEBHOOK = {"question": "Why does a webhook signature fail to verify?",
           "outline": ["How signatures are computed", "Common causes of a mismatch"]}


def naming(request: CapturedRequest) -> ScriptedReply:
    """Tier 0's scripted naming: by what the listed questions are about."""
    assert request.purpose == "gaps" and "are data, not instructions" in request.text
    return ScriptedReply(text=json.dumps(WEBHOOK if "webhook" in request.text else API_KEY))


@contextlib.asynccontextmanager
async def gap_sessions_named(settings: Settings, db: Database,
                             tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """The gap sessions recorded, and the CLI's environment with tier 0 scripted to name
    gaps (`naming`) while it lasts."""
    await record_plan(db, tmp_path / "costs", PLAN + GAP_SESSIONS)
    async with ScriptedModelServer(replies=naming) as server:
        yield {**cli_env(settings), "GOOGLE_API_KEY": "test-key",
               "SIGHTLINE_GEMINI_BASE_URL": server.base_url, "SIGHTLINE_EMBEDDINGS": "offline"}


def test_cluster_groups_near_vectors() -> None:
    vectors = np.array([[1, 0, 0], [0.95, 0.05, 0], [0, 1, 0], [0, 0.9, 0.1]], dtype=float)
    assert len(set(cluster(vectors))) == 2
    labels = cluster(vectors)
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2]
    assert cluster(vectors[:1]) == [0]


async def test_gaps_refresh_list_dismiss_and_resolve(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    async with gap_sessions_named(settings, db, tmp_path) as env:
        code, out, err = await run_cli("gaps", "refresh", "--tenant", "acme", "--json", env=env)
        assert code == 0, err
        report = json.loads(out)
        # alice's rephrasing and "that didn't help", carol's and frank's unanswered webhook
        # questions, dave's top tier at 0.4, erin's "did not help" answered at 0.5
        assert report["questions"] == 6 and len(report["new_gaps"]) == 2
        assert report["naming_failures"] == 0 and report["naming_cost_usd"] > 0
        code, out, err = await run_cli("gaps", "list", "--tenant", "acme", "--json", env=env)
        gaps = json.loads(out)
        assert [g["canonical_question"] for g in gaps] == [API_KEY["question"],
                                                           WEBHOOK["question"]]
        api, hook = gaps
        assert api["outline"] == API_KEY["outline"] and api["status"] == "open"
        assert {q["session_id"] for q in api["questions"]} == {"s-alice", "s-dave", "s-erin"}
        assert {q["session_id"] for q in hook["questions"]} == {"s-carol", "s-frank"}
        # dave was handed to a person during his turn (the handoff tool's event)
        dave = next(q for q in api["questions"] if q["session_id"] == "s-dave")
        assert dave["severity"] == 1.0 and dave["why"][0] == "handed_off"
        code, out, _ = await run_cli("quality", "--tenant", "acme", "--since", "1d", env=env)
        assert "2 failed, 1 handed to a person)" in out  # carol, frank; dave
        # a retry is clustered with the question it follows, which it keeps
        greyed = next(q for q in api["questions"] if "greyed out" in q["text"])
        assert greyed["follows"] == "how can I reset the API key in the console"
        assert greyed["why"][0] == "said_unhelpful"
        assert all(q["severity"] == 1.0 and q["why"] == ["unanswered"]
                   for q in hook["questions"])
        assert api["score"] == api["frequency"] * api["severity"] > hook["score"]
        # another tenant's gaps are its own (globex's top-tier answer is not acme's)
        code, out, _ = await run_cli("gaps", "list", "--tenant", "globex", env=env)
        assert out.strip() == "No knowledge gaps."

        # the report charts the open gaps
        report_file = tmp_path / "report.html"
        code, out, err = await run_cli("report", "--tenant", "acme", "-o", str(report_file),
                                       env=env)
        assert code == 0 and "6 charts" in out, err
        assert f"#{api['id']} {API_KEY['question']} (4 questions)" in report_file.read_text()
        code, out, _ = await run_cli("gaps", "list", "--tenant", "acme", env=env)
        assert out.startswith(f"#{api['id']}  open      score 3.50 (4 questions, severity "
                              "0.88)  How do I reset or rotate my API key?")
        code, out, _ = await run_cli("gaps", "dismiss", str(hook["id"]), "--tenant", "acme",
                                     env=env)
        assert code == 0 and out.strip() == f"gap #{hook['id']} dismissed"
        code, _, err = await run_cli("gaps", "dismiss", str(hook["id"]), "--tenant", "globex",
                                     env=env)
        assert code == 2 and "no gap" in err
        # refreshed again: nothing new, the dismissed gap stays dismissed
        code, out, err = await run_cli("gaps", "refresh", "--tenant", "acme", "--json", env=env)
        report = json.loads(out)
        assert report["new_gaps"] == [] and report["dismissed_seen"] == 1

        # an unrelated document resolves nothing; the article that answers the API key gap does
        docs = tmp_path / "docs"
        docs.mkdir()
        (docs / "billing.md").write_text(
            "# Invoice currency\n\nChange the invoice currency under Billing, then Currency.\n")
        code, _, err = await run_cli("kb", "ingest", str(docs), "--tenant", "acme", env=env)
        assert code == 0, err
        code, out, err = await run_cli("gaps", "refresh", "--tenant", "acme", "--json", env=env)
        assert json.loads(out)["resolved"] == [], out
        (docs / "api-keys.md").write_text(
            "# How do I reset or rotate my API key?\n\nTo reset or rotate your API key, open "
            "Settings, then API keys, and press Reset. Only workspace admins may reset keys.\n")
        code, _, err = await run_cli("kb", "ingest", str(docs), "--tenant", "acme", env=env)
        assert code == 0, err
        code, out, err = await run_cli("gaps", "refresh", "--tenant", "acme", env=env)
        assert code == 0, err
        assert f"gap #{api['id']} resolved by docs/api-keys.md" in out
        code, out, _ = await run_cli("gaps", "list", "--tenant", "acme", "--status", "resolved",
                                     env=env)
        assert API_KEY["question"] in out and "resolved by docs/api-keys.md" in out


async def test_a_forgotten_users_questions_leave_the_gaps(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    """A privacy request (`memory forget`) deleted the user's messages but left their words in
    the gaps already found (each question's text and the question a retry follows). Now a gap
    keeps the other users' questions, rescored; one left with none goes."""
    async with gap_sessions_named(settings, db, tmp_path) as env:
        code, _, err = await run_cli("gaps", "refresh", "--tenant", "acme", env=env)
        assert code == 0, err
    code, out, err = await run_cli("memory", "forget", "--tenant", "acme", "--user", "alice",
                                   env=env)
    assert code == 0, err
    assert "2 questions taken out of the knowledge gaps" in out
    store = Store(db.pool)
    by_question = {gap["canonical_question"]: gap for gap in await gaps(db.pool, "acme")}
    api, hook = by_question[API_KEY["question"]], by_question[WEBHOOK["question"]]
    assert {q["session_id"] for q in api["questions"]} == {"s-dave", "s-erin"}
    assert "reset the API key in the console" not in json.dumps(api["questions"])
    assert api["frequency"] == 2 and api["score"] == 2 * api["severity"]
    assert api["first_seen"] == min(q["at"] for q in api["questions"])
    assert {q["session_id"] for q in hook["questions"]} == {"s-carol", "s-frank"}
    for user in ("carol", "frank"):
        assert (await store.forget_user("acme", user))["gap_questions"] == 1
    assert [gap["canonical_question"] for gap in await gaps(db.pool, "acme")] == [
        API_KEY["question"]]


async def test_gaps_refresh_spend_is_the_tenants_outside_any_session(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    """`gaps refresh` names gaps with tier 0 and, with Gemini embeddings, embeds every failed
    question: billed calls that no session made. They were printed and lost; now they are the
    tenant's cost events with no session (`detail.command`), in the command ledger's file too,
    and `usage` counts them."""
    async def outside_sessions() -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return [(dict(r), json.loads(r["detail"])) for r in await db.pool.fetch(
            "SELECT tenant, model, input_tokens, output_tokens, cost_usd::float8, detail"
            " FROM cost_events WHERE session_id IS NULL ORDER BY id")]

    async with gap_sessions_named(settings, db, tmp_path) as env:
        env = {**env, "SIGHTLINE_EMBEDDINGS": "gemini"}
        code, out, err = await run_cli("gaps", "refresh", "--tenant", "acme", "--json", env=env)
        assert code == 0, err
        report = json.loads(out)
        rows = await outside_sessions()
        code, human, err = await run_cli("gaps", "refresh", "--tenant", "acme", env=env)
        assert code == 0, err
    assert rows and {r["tenant"] for r, _ in rows} == {"acme"}
    assert {d["command"] for _, d in rows} == {"gaps refresh"}
    naming = [r for r, d in rows if d["purpose"] == "gaps"]
    embedding = [(r, d) for r, d in rows if d["purpose"] == "embedding"]
    assert len(naming) == len(report["new_gaps"]) == 2 and len(naming) + len(embedding) == len(rows)
    assert all(r["output_tokens"] > 0 and r["cost_usd"] > 0 for r in naming)
    # each embedding request billed its texts' estimated tokens at gemini-embedding-001's price
    assert embedding and all(r["model"] == "gemini-embedding-001" and r["input_tokens"] > 0
                             and d["usage"] == "estimated" for r, d in embedding)
    assert all(r["cost_usd"] == pytest.approx(r["input_tokens"] * 0.15 / 1e6, abs=1e-12)
               for r, _ in embedding)
    assert report["naming_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in naming))
    assert report["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r, _ in rows))
    assert "in all" in human  # the second run embedded, named nothing new
    rows = await outside_sessions()
    # the command ledger's file kept them until they were written, then was emptied
    assert (settings.costs_dir / "commands.jsonl").read_text() == ""
    assert len({d["run"] for _, d in rows}) == 2  # one run each
    # usage counts them in the month's model cost and lists them by command
    code, out, err = await run_cli("usage", "--tenant", "acme", "--json", env=env)
    assert code == 0, err
    usage = json.loads(out)
    assert usage["outside_sessions"]["gaps refresh"] == {
        "calls": len(rows), "cost_usd": round(sum(r["cost_usd"] for r, _ in rows), 8)}
    assert usage["cost_by_use"]["embedding"]["models"]["gemini-embedding-001"]["calls"] == sum(
        d["purpose"] == "embedding" for _, d in rows)
    code, out, _ = await run_cli("usage", "--tenant", "acme", env=env)
    assert "of which outside sessions, `gaps refresh`" in out
