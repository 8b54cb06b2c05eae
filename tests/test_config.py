"""Settings.from_env and `sightline config`: defaults, validation, and secrets that never leak.

Protects: every malformed variable fails fast with a ConfigError naming it; API keys, the LiveKit
secret, the database password and the password in any URL setting never reach an error
message, `describe()` or the CLI output; the CLI turns configuration errors into one
`sightline:` line and exit status 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, Settings
from agent.providers import make_provider

SIGHTLINE = Path(sys.executable).with_name("sightline")

GOOGLE_KEY = "AIzaSy-google-secret-value-1234"
ANTHROPIC_KEY = "sk-ant-api03-anthropic-secret-5678"
LIVEKIT_SECRET = "livekit-secret-abcdefghijklmnop"
DB_PASSWORD = "pg-pass-w0rd-xyz"
DATABASE_URL = f"postgresql://sightline:{DB_PASSWORD}@db.example.com:5432/sightline"

SECRET_ENV = {
    "GOOGLE_API_KEY": GOOGLE_KEY,
    "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
    "LIVEKIT_API_KEY": "APIkey12345",
    "LIVEKIT_API_SECRET": LIVEKIT_SECRET,
    "LIVEKIT_URL": "wss://my-project.livekit.cloud",
    "DATABASE_URL": DATABASE_URL,
}
SECRETS = (GOOGLE_KEY, ANTHROPIC_KEY, LIVEKIT_SECRET, DB_PASSWORD)


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment: nothing from the developer's shell leaks into the CLI under test."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "SIGHTLINE_DATA_DIR": str(tmp_path / "data"),
        **extra,
    }


def test_defaults_on_empty_env() -> None:
    s = Settings.from_env({})
    assert s.livekit_url is None
    assert s.livekit_api_key is None and s.livekit_api_secret is None
    assert s.gemini_api_key is None and s.anthropic_api_key is None
    assert s.database_url is None
    assert [t.model for t in s.cascade_tiers()] == [
        "gemini-2.5-flash-lite", "gemini-2.5-flash", "claude-sonnet-4-6"]
    assert s.agent_name == "sightline"
    assert s.tenant == "default"
    assert s.sample_fps == 1.0
    assert s.model_timeout_s == 20.0
    assert s.model_retries == 1
    assert s.image_detail == "medium"
    assert s.history_messages == 10
    assert s.health_port == 8081
    assert s.prices_file is None
    assert s.costs_dir == s.data_dir / "costs"


def test_blank_values_mean_default() -> None:
    s = Settings.from_env({"SIGHTLINE_SAMPLE_FPS": "  ", "SIGHTLINE_TIERS": ""})
    assert s.sample_fps == 1.0
    assert s.tiers is None


def test_readme_says_a_blank_value_means_the_default() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    configuration = readme.split("\n## Configuration\n")[1].split("\n## ")[0]
    assert "A variable set to an\nempty or blank value counts as unset: it takes its default." in (
        configuration)


def test_valid_values_are_parsed() -> None:
    s = Settings.from_env(
        {
            "SIGHTLINE_SAMPLE_FPS": "2.5",
            "SIGHTLINE_IMAGE_DETAIL": " High ",
            "SIGHTLINE_HEALTH_PORT": "0",
            "SIGHTLINE_MODEL_RETRIES": "0",
            "SIGHTLINE_GEMINI_BASE_URL": "http://127.0.0.1:9999/",
            "SIGHTLINE_COST_LOG_DIR": "/var/log/sightline",
        }
    )
    assert s.sample_fps == 2.5
    assert s.image_detail == "high"
    assert s.health_port == 0
    assert s.model_retries == 0
    assert s.gemini_base_url == "http://127.0.0.1:9999"
    assert s.costs_dir == Path("/var/log/sightline")


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("SIGHTLINE_SAMPLE_FPS", "abc"),
        ("SIGHTLINE_SAMPLE_FPS", "0"),
        ("SIGHTLINE_SAMPLE_FPS", "-1"),
        ("SIGHTLINE_TIERS", "openai:gpt:0.5:100"),
        ("LIVEKIT_URL", "notaurl"),
        ("LIVEKIT_URL", "ftp://example.com"),
        ("DATABASE_URL", "mysql://x"),
        ("SIGHTLINE_HEALTH_PORT", "99999"),
        ("SIGHTLINE_HEALTH_PORT", "-1"),
        ("SIGHTLINE_MODEL_TIMEOUT_S", "0"),
        ("SIGHTLINE_MODEL_RETRIES", "-1"),
        ("SIGHTLINE_TIERS", "gemini:gemini-2.5-flash:0.5:0"),
        ("SIGHTLINE_IMAGE_DETAIL", "ultra"),
        ("SIGHTLINE_HISTORY_MESSAGES", "1.5"),
        ("SIGHTLINE_GEMINI_BASE_URL", "localhost:8000"),
        ("SIGHTLINE_ANTHROPIC_BASE_URL", "ws://127.0.0.1:1"),
    ],
)
def test_malformed_value_names_the_variable(env: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({env: value})
    message = str(info.value)
    assert message.startswith(f"{env}=")
    assert "invalid" in message


def test_malformed_database_url_hides_its_password() -> None:
    url = f"mysql://root:{DB_PASSWORD}@db.example.com/app"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DATABASE_URL": url})
    assert "DATABASE_URL" in str(info.value)
    assert DB_PASSWORD not in str(info.value)
    assert "db.example.com" not in str(info.value)


def test_describe_masks_every_secret() -> None:
    s = Settings.from_env(SECRET_ENV)
    rows = s.describe()
    text = "\n".join(f"{env} {value} {note}" for env, value, note in rows)
    for secret in SECRETS:
        assert secret not in text
    shown = {env: value for env, value, _ in rows}
    assert shown["GOOGLE_API_KEY"].startswith("***")
    assert shown["ANTHROPIC_API_KEY"].startswith("***")
    assert shown["LIVEKIT_API_SECRET"].startswith("***")
    # the URL keeps its host (useful to ops) but not its password
    assert shown["DATABASE_URL"] == "postgresql://sightline:***@db.example.com:5432/sightline"
    # non-secrets are shown as they are
    assert shown["LIVEKIT_URL"] == "wss://my-project.livekit.cloud"
    assert shown["SIGHTLINE_IMAGE_DETAIL"] == "medium"
    # every declared variable has exactly one row
    assert len(shown) == len(rows)
    assert shown["SIGHTLINE_PRICES"] == "(unset)"


def test_short_secret_is_fully_masked() -> None:
    shown = dict((env, value) for env, value, _ in Settings.from_env(
        {"ANTHROPIC_API_KEY": "short-key"}).describe())
    assert shown["ANTHROPIC_API_KEY"] == "***"


def test_describe_masks_password_in_query_string() -> None:
    url = f"postgresql://sightline@db.example.com/sightline?password={DB_PASSWORD}"
    shown = dict((env, value) for env, value, _ in Settings.from_env(
        {"DATABASE_URL": url}).describe())
    assert DB_PASSWORD not in shown["DATABASE_URL"]


URL_PASSWORD = "url-pass-w0rd-q"
# every URL setting, with a password in it: in the userinfo, or libpq's sslpassword
URL_ENV = {
    "DATABASE_URL": f"postgresql://sightline@db.example.com/app?sslpassword={URL_PASSWORD}"
                    "&sslmode=require",
    **{env: f"https://proxy:{URL_PASSWORD}@models.example.com/v1" for env in (
        "SIGHTLINE_GEMINI_BASE_URL", "SIGHTLINE_ANTHROPIC_BASE_URL", "SIGHTLINE_COHERE_BASE_URL",
        "SIGHTLINE_STT_BASE_URL", "SIGHTLINE_TTS_BASE_URL")},
    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://otel:{URL_PASSWORD}@collector:4318",
}


def test_describe_masks_the_password_of_every_url() -> None:
    shown = {env: value for env, value, _ in Settings.from_env(URL_ENV).describe()}
    assert shown["DATABASE_URL"] == (
        "postgresql://sightline@db.example.com/app?sslpassword=***&sslmode=require")
    assert shown["SIGHTLINE_COHERE_BASE_URL"] == "https://proxy:***@models.example.com/v1"
    assert shown["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel:***@collector:4318"
    assert URL_PASSWORD not in "\n".join(shown.values())


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_config_masks_the_password_of_every_url(tmp_path: Path, as_json: bool) -> None:
    proc = subprocess.run(
        [str(SIGHTLINE), "config", *(["--json"] if as_json else [])],
        env=cli_env(tmp_path, **URL_ENV), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert URL_PASSWORD not in proc.stdout + proc.stderr
    assert "models.example.com" in proc.stdout


def test_an_invalid_url_setting_does_not_show_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"LIVEKIT_URL": f"ftp://lk:{URL_PASSWORD}@my-project.livekit.cloud"})
    assert str(info.value).startswith(
        "LIVEKIT_URL='ftp://lk:***@my-project.livekit.cloud' is invalid: must look like")


@pytest.mark.parametrize("url", [f"wss://lk:{URL_PASSWORD}@my-project.livekit.cloud",
                                 "ws://lk@127.0.0.1:7880"])
def test_a_livekit_url_with_credentials_is_refused_without_showing_them(url: str) -> None:
    """livekit-api signs each request in its Authorization header, and aiohttp refuses to send
    one beside a URL's own user and password: every call to LiveKit failed, with aiohttp's
    message, only once the worker or the console made its first call."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"LIVEKIT_URL": url})
    message = str(info.value)
    assert URL_PASSWORD not in message
    assert "must not hold a user name or password" in message
    assert "LIVEKIT_API_KEY" in message


QUERY_KEY = "AIzaQUERYSECRET-0123456789"
# every URL setting but the database's, with a key where proxies and providers take one: in a
# query parameter (under the names they use), a fragment, or the user name alone
QUERY_ENV = {
    "SIGHTLINE_GEMINI_BASE_URL": f"https://proxy.example/v1beta?key={QUERY_KEY}&alt=sse",
    "SIGHTLINE_COHERE_BASE_URL": f"https://proxy.example/cohere?api_key={QUERY_KEY}",
    "SIGHTLINE_ANTHROPIC_BASE_URL": f"https://proxy.example/anthropic?x-api-key={QUERY_KEY}",
    "SIGHTLINE_STT_BASE_URL": f"https://proxy.example/stt?access_token={QUERY_KEY}",
    "SIGHTLINE_TTS_BASE_URL": f"https://{QUERY_KEY}@proxy.example/tts",
    "LIVEKIT_URL": f"wss://my-project.livekit.cloud?token={QUERY_KEY}",
    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://collector:4318/#sig={QUERY_KEY}",
}


def test_describe_masks_a_key_in_any_urls_query() -> None:
    """`SIGHTLINE_GEMINI_BASE_URL=https://proxy.example/v1beta?key=…` was printed whole: only
    libpq's password parameters were masked. Each URL keeps its host and its other parameters."""
    shown = {env: value for env, value, _ in Settings.from_env(QUERY_ENV).describe()}
    assert QUERY_KEY not in "\n".join(shown.values())
    assert shown["SIGHTLINE_GEMINI_BASE_URL"] == "https://proxy.example/v1beta?key=***&alt=sse"
    assert shown["SIGHTLINE_COHERE_BASE_URL"] == "https://proxy.example/cohere?api_key=***"
    assert shown["SIGHTLINE_ANTHROPIC_BASE_URL"] == (
        "https://proxy.example/anthropic?x-api-key=***")
    assert shown["SIGHTLINE_STT_BASE_URL"] == "https://proxy.example/stt?access_token=***"
    assert shown["SIGHTLINE_TTS_BASE_URL"] == "https://***@proxy.example/tts"
    assert shown["LIVEKIT_URL"] == "wss://my-project.livekit.cloud?token=***"
    assert shown["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318/#sig=***"


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_config_masks_a_key_in_any_urls_query(tmp_path: Path, as_json: bool) -> None:
    proc = subprocess.run(
        [str(SIGHTLINE), "config", *(["--json"] if as_json else [])],
        env=cli_env(tmp_path, **QUERY_ENV), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert QUERY_KEY not in proc.stdout + proc.stderr
    assert "proxy.example" in proc.stdout


def test_an_invalid_url_setting_does_not_show_a_key_in_its_query() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIGHTLINE_GEMINI_BASE_URL": f"ftp://proxy.example/v1?key={QUERY_KEY}"})
    assert str(info.value) == (
        "SIGHTLINE_GEMINI_BASE_URL='ftp://proxy.example/v1?key=***' is invalid: must be an "
        "http(s) URL")


def test_infinite_timeout_is_rejected_at_startup() -> None:
    env = {"SIGHTLINE_MODEL_TIMEOUT_S": "inf", "GOOGLE_API_KEY": GOOGLE_KEY}
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        assert "SIGHTLINE_MODEL_TIMEOUT_S" in str(exc)
        return
    make_provider(settings, settings.cascade_tiers()[0])  # if accepted, it must be usable


def test_the_default_cascade_skips_tiers_without_a_key() -> None:
    env = {"LIVEKIT_URL": "ws://x:7880", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}
    both = Settings.from_env({**env, "GOOGLE_API_KEY": GOOGLE_KEY, "ANTHROPIC_API_KEY": "a-key"})
    assert [str(t) for t in both.cascade_tiers()] == [
        "gemini:gemini-2.5-flash-lite:0.7:512", "gemini:gemini-2.5-flash:0.7:512",
        "anthropic:claude-sonnet-4-6:0:1024",
    ]
    gemini_only = Settings.from_env({**env, "GOOGLE_API_KEY": GOOGLE_KEY})
    assert [t.model for t in gemini_only.cascade_tiers()] == [
        "gemini-2.5-flash-lite", "gemini-2.5-flash"]
    gemini_only.require_worker()
    claude_only = Settings.from_env({**env, "ANTHROPIC_API_KEY": "a-key"})
    assert [t.model for t in claude_only.cascade_tiers()] == ["claude-sonnet-4-6"]
    # no key at all: the one line says what each key runs, not that Gemini's is required
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env).require_worker()
    message = str(info.value)
    assert "\n" not in message
    assert "GOOGLE_API_KEY alone runs Flash-Lite > Flash" in message
    assert "ANTHROPIC_API_KEY alone runs Sonnet" in message
    assert "is required by the default cascade" not in message


def test_configured_tiers_parse_and_need_every_key() -> None:
    env = {"GOOGLE_API_KEY": GOOGLE_KEY, "ANTHROPIC_API_KEY": "a-key",
           "LIVEKIT_URL": "ws://x:7880", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}
    spec = ("gemini:gemini-2.5-flash-lite:0.7:256, gemini:gemini-2.5-flash:0.6:512,"
            "anthropic:claude-sonnet-4-6:0:1024")
    settings = Settings.from_env({**env, "SIGHTLINE_TIERS": spec})
    tiers = settings.cascade_tiers()
    assert [(t.provider, t.model, t.threshold, t.max_output_tokens) for t in tiers] == [
        ("gemini", "gemini-2.5-flash-lite", 0.7, 256), ("gemini", "gemini-2.5-flash", 0.6, 512),
        ("anthropic", "claude-sonnet-4-6", 0.0, 1024),
    ]
    settings.require_worker()
    shown = {env_: value for env_, value, _ in settings.describe()}
    assert shown["SIGHTLINE_TIERS"] == spec.replace(", ", ",")
    no_claude_key = Settings.from_env({**env, "SIGHTLINE_TIERS": spec, "ANTHROPIC_API_KEY": ""})
    with pytest.raises(ConfigError, match=r"ANTHROPIC_API_KEY is required by tier 2 .* of "
                                          r"SIGHTLINE_TIERS: set ANTHROPIC_API_KEY, or leave"):
        no_claude_key.require_worker()


@pytest.mark.parametrize(
    "spec",
    ["gemini:flash", "openai:gpt:0.5:100", "gemini:flash:1.5:100", "gemini:flash:0.5:0",
     "gemini::0.5:100", ""],
)
def test_bad_tiers_are_refused(spec: str) -> None:
    with pytest.raises(ConfigError, match="SIGHTLINE_TIERS"):
        Settings.from_env({"SIGHTLINE_TIERS": spec or ","})


def test_gemini_api_key_alias() -> None:
    assert Settings.from_env({"GEMINI_API_KEY": "g-alias"}).gemini_api_key == "g-alias"
    # GOOGLE_API_KEY wins when both are set; an empty GOOGLE_API_KEY falls back to the alias
    both = {"GOOGLE_API_KEY": "g-main", "GEMINI_API_KEY": "g-alias"}
    assert Settings.from_env(both).gemini_api_key == "g-main"
    blank = {"GOOGLE_API_KEY": "", "GEMINI_API_KEY": "g-alias"}
    assert Settings.from_env(blank).gemini_api_key == "g-alias"


@pytest.mark.parametrize(
    ("missing", "tiers"),
    [
        ("LIVEKIT_URL", ""),
        ("LIVEKIT_API_KEY", ""),
        ("LIVEKIT_API_SECRET", ""),
        ("GOOGLE_API_KEY", "gemini:gemini-2.5-flash:0:512"),
        ("ANTHROPIC_API_KEY", "anthropic:claude-sonnet-4-6:0:512"),
    ],
)
def test_require_worker_names_the_missing_variable(missing: str, tiers: str) -> None:
    env = {**SECRET_ENV, "SIGHTLINE_TIERS": tiers}
    del env[missing]
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env).require_worker()
    assert missing in str(info.value)
    for secret in SECRETS:
        assert secret not in str(info.value)


def test_require_worker_passes_when_complete() -> None:
    Settings.from_env(SECRET_ENV).require_worker()
    anthropic_env = {**SECRET_ENV, "SIGHTLINE_TIERS": "anthropic:claude-sonnet-4-6:0:512"}
    del anthropic_env["GOOGLE_API_KEY"]
    Settings.from_env(anthropic_env).require_worker()


def test_require_worker_accepts_the_gemini_alias() -> None:
    env = {**SECRET_ENV, "GEMINI_API_KEY": GOOGLE_KEY}
    del env["GOOGLE_API_KEY"]
    Settings.from_env(env).require_worker()


def test_cli_config_masks_secrets(tmp_path: Path) -> None:
    env = cli_env(tmp_path, **SECRET_ENV, SIGHTLINE_TENANT="acme-corp",
                  SIGHTLINE_SAMPLE_FPS="2")
    proc = subprocess.run(
        [str(SIGHTLINE), "config"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    for secret in SECRETS:
        assert secret not in output
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert "acme-corp" in lines["SIGHTLINE_TENANT"]
    assert "2.0" in lines["SIGHTLINE_SAMPLE_FPS"]
    assert "wss://my-project.livekit.cloud" in lines["LIVEKIT_URL"]
    assert "postgresql://sightline:***@db.example.com:5432/sightline" in lines["DATABASE_URL"]
    assert "***" in lines["GOOGLE_API_KEY"]
    assert "***" in lines["LIVEKIT_API_SECRET"]
    assert str(tmp_path / "data") in lines["SIGHTLINE_DATA_DIR"]


def test_cli_bad_config_is_one_line(tmp_path: Path) -> None:
    env = cli_env(tmp_path, SIGHTLINE_SAMPLE_FPS="abc", GOOGLE_API_KEY=GOOGLE_KEY)
    proc = subprocess.run(
        [str(SIGHTLINE), "costs"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sightline:")
    assert "SIGHTLINE_SAMPLE_FPS" in lines[0]
    assert "Traceback" not in proc.stderr
    assert GOOGLE_KEY not in proc.stdout + proc.stderr


def test_readme_states_every_numeric_range() -> None:
    """The ranges are declared once, in agent/config.py; the README's table must say the same."""
    from agent.config import RANGES

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rows = {line.split("`")[1]: line for line in readme.splitlines() if line.startswith("| `")}
    for env, accepted in RANGES.items():
        assert f"in {accepted}" in rows[env], env
