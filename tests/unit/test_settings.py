"""The settings tree: defaults, a TOML file, environment overrides, and `config show`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from streamrec.settings import CONFIG_FILE_ENV, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STREAMREC_"):
            monkeypatch.delenv(name)


def test_defaults_are_complete_and_valid() -> None:
    s = Settings()
    assert s.kafka_bootstrap == "localhost:9092"
    assert s.topics.items == "streamrec.items"
    assert s.features.half_lives_s == [3600.0, 86400.0]


def test_environment_beats_file_beats_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "streamrec.toml"
    config.write_text(
        'namespace = "from-file"\n'
        'redis_url = "redis://file:6379/1"\n'
        "[worker]\nbatch_size = 123\n"
        "[features]\nhalf_lives_s = [86400, 600]\n"
    )
    monkeypatch.setenv("STREAMREC_NAMESPACE", "from-env")
    monkeypatch.setenv("STREAMREC_WORKER__BATCH_TIMEOUT_MS", "7")
    s = load_settings(config)
    assert s.namespace == "from-env"
    assert s.redis_url == "redis://file:6379/1"
    assert (s.worker.batch_size, s.worker.batch_timeout_ms) == (123, 7)
    assert s.features.half_lives_s == [600.0, 86400.0]  # kept shortest first


def test_the_config_file_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "env.toml"
    config.write_text('namespace = "via-env-var"\n')
    monkeypatch.setenv(CONFIG_FILE_ENV, str(config))
    assert load_settings().namespace == "via-env-var"
    assert Settings().namespace == "via-env-var"


def test_bad_values_are_rejected_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_WORKER__BATCH_SIZE", "0")
    with pytest.raises(ValidationError, match="worker.batch_size"):
        Settings()
    monkeypatch.delenv("STREAMREC_WORKER__BATCH_SIZE")
    with pytest.raises(ValidationError, match="redis_url"):
        Settings(redis_url="http://not-redis")
    with pytest.raises(FileNotFoundError):
        load_settings(Path("/nonexistent/streamrec.toml"))


def test_config_show_prints_the_effective_config(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[serving]\nport = 9999\n")
    result = subprocess.run(
        [sys.executable, "-m", "streamrec", "config", "show", "--config", str(config)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "STREAMREC_TOPICS__PARTITIONS": "3"},
        check=True,
    )
    shown = json.loads(result.stdout)
    assert shown["serving"]["port"] == 9999
    assert shown["topics"]["partitions"] == 3


def test_a_bad_config_is_one_readable_line(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[worker]\nbatch_size = -5\n")
    result = subprocess.run(
        [sys.executable, "-m", "streamrec", "config", "show", "--config", str(config)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "invalid configuration" in result.stderr
    assert "Traceback" not in result.stderr


def test_schema_command_prints_the_committed_schema() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamrec", "schema"], capture_output=True, text=True, check=True
    )
    committed = Path(__file__).parents[2] / "streams" / "event_schema.json"
    assert json.loads(result.stdout) == json.loads(committed.read_text())


def test_one_source_switched_off_by_environment_leaves_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = Settings().funnel.sources
    monkeypatch.setenv("STREAMREC_FUNNEL__SOURCES__POPULAR__ENABLED", "false")
    monkeypatch.setenv("STREAMREC_FUNNEL__SOURCES__COVISITATION__K", "80")
    sources = load_settings().funnel.sources
    assert set(sources) == set(defaults)
    assert not sources["popular"].enabled
    assert sources["popular"].k == defaults["popular"].k
    assert (sources["covisitation"].k, sources["covisitation"].enabled) == (80, True)
    assert sources["trending"] == defaults["trending"]


def test_source_overrides_in_a_file_merge_over_the_defaults(tmp_path: Path) -> None:
    config = tmp_path / "streamrec.toml"
    config.write_text(
        "[funnel.sources.fresh]\nbudget_ms = 5.0\n[funnel.sources.similar_item]\nk = 7\n"
    )
    sources = load_settings(config).funnel.sources
    assert sources["fresh"].budget_ms == 5.0 and sources["fresh"].k == 30
    assert sources["similar_item"].k == 7
    assert {"session_ann", "user_ann", "covisitation", "trending", "popular"} <= set(sources)
