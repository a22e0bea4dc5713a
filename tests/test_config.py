"""Tests for loading settings from defaults, a TOML file, the environment and overrides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from boothsync.config import (
    AgentSettings,
    ConfigError,
    ServerSettings,
    load_settings,
    settings_field_names,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "boothsync.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _agent(config_file: Path | None = None, environ: dict[str, str] | None = None, overrides=None) -> AgentSettings:
    return load_settings(AgentSettings, "agent", config_file, environ=environ or {}, overrides=overrides)


def _server(config_file: Path | None = None, environ: dict[str, str] | None = None, overrides=None) -> ServerSettings:
    return load_settings(ServerSettings, "server", config_file, environ=environ or {}, overrides=overrides)


# Defaults


def test_agent_defaults() -> None:
    settings = _agent()

    assert settings.data_dir == Path("boothsync-agent")
    assert settings.server_url == "http://127.0.0.1:8480"
    assert settings.host == "127.0.0.1"
    assert settings.port == 8470
    assert settings.event == "default"
    assert settings.device_id == ""
    assert settings.disk_reserve_bytes == 100 * 1024 * 1024
    assert settings.chunk_bytes == 1024 * 1024
    assert settings.hot_folder is None
    assert settings.hot_folder_settle_s == 2.0
    assert settings.thumbnail_px == 320
    assert settings.ocr_timeout_s == 60.0
    assert settings.derivative_workers == 1
    assert settings.retry_base_s == 0.5
    assert settings.retry_max_s == 5.0
    assert settings.offline_after_failures == 3
    assert settings.request_timeout_s == 30.0


def test_server_defaults() -> None:
    settings = _server()

    assert settings.data_dir == Path("boothsync-server")
    assert settings.host == "127.0.0.1"
    assert settings.port == 8480
    assert settings.max_upload_bytes == 20 * 1024**3
    assert settings.upload_expiry_s == 7 * 24 * 3600
    assert settings.fsync_every_patch is False
    assert settings.cors_origins == "*"


def test_defaults_ignore_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # An explicit empty mapping replaces os.environ completely.
    monkeypatch.setenv("BOOTHSYNC_AGENT_PORT", "9999")

    assert _agent(environ={}).port == 8470


def test_process_environment_used_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOTHSYNC_AGENT_PORT", "9999")

    settings = load_settings(AgentSettings, "agent")

    assert settings.port == 9999


# TOML file


def test_toml_agent_table_overrides_defaults(tmp_path: Path) -> None:
    config = _write_toml(
        tmp_path,
        '[agent]\nport = 9100\nevent = "spring-market"\nretry_max_s = 12.5\ndata_dir = "/var/lib/agent"\n',
    )

    settings = _agent(config)

    assert settings.port == 9100
    assert settings.event == "spring-market"
    assert settings.retry_max_s == 12.5
    assert settings.data_dir == Path("/var/lib/agent")
    assert settings.host == "127.0.0.1"


def test_toml_server_table_overrides_defaults(tmp_path: Path) -> None:
    config = _write_toml(tmp_path, '[server]\nport = 9200\nfsync_every_patch = true\ncors_origins = "https://a.test"\n')

    settings = _server(config)

    assert settings.port == 9200
    assert settings.fsync_every_patch is True
    assert settings.cors_origins == "https://a.test"
    assert settings.max_upload_bytes == 20 * 1024**3


def test_toml_each_program_reads_own_table(tmp_path: Path) -> None:
    config = _write_toml(tmp_path, "[agent]\nport = 9101\n\n[server]\nport = 9201\n")

    assert _agent(config).port == 9101
    assert _server(config).port == 9201


def test_toml_missing_table_gives_defaults(tmp_path: Path) -> None:
    config = _write_toml(tmp_path, "[server]\nport = 9201\n")

    assert _agent(config).port == 8470


def test_toml_unknown_key_rejected(tmp_path: Path) -> None:
    config = _write_toml(tmp_path, "[agent]\nprot = 9100\n")

    with pytest.raises(ConfigError) as info:
        _agent(config)

    assert "agent.prot" in str(info.value)


def test_toml_section_not_table_rejected(tmp_path: Path) -> None:
    config = _write_toml(tmp_path, "agent = 5\n")

    with pytest.raises(ConfigError) as info:
        _agent(config)

    assert "[agent]" in str(info.value)


def test_toml_missing_file_rejected(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"

    with pytest.raises(ConfigError) as info:
        _agent(missing)

    assert "not found" in str(info.value)
    assert str(missing) in str(info.value)


def test_toml_invalid_syntax_rejected(tmp_path: Path) -> None:
    config = _write_toml(tmp_path, "[agent]\nport = = 1\n")

    with pytest.raises(ConfigError) as info:
        _agent(config)

    assert "invalid TOML" in str(info.value)


def test_toml_non_utf8_file_rejected(tmp_path: Path) -> None:
    # TOML files must be UTF-8, but this one is Latin-1, as an old editor may save it.
    config = tmp_path / "latin1.toml"
    config.write_bytes('[agent]\nevent = "café"\n'.encode("latin-1"))

    with pytest.raises(ConfigError):
        _agent(config)


# Environment


def test_env_overrides_toml(tmp_path: Path) -> None:
    config = _write_toml(tmp_path, '[agent]\nport = 9100\nevent = "from-file"\n')

    settings = _agent(config, environ={"BOOTHSYNC_AGENT_PORT": "9300"})

    assert settings.port == 9300
    assert settings.event == "from-file"


def test_env_server_prefix(tmp_path: Path) -> None:
    environ = {"BOOTHSYNC_SERVER_PORT": "9301", "BOOTHSYNC_AGENT_PORT": "9300"}

    assert _server(environ=environ).port == 9301
    assert _agent(environ=environ).port == 9300


def test_env_unrelated_variables_ignored() -> None:
    environ = {"BOOTHSYNC_AGENT_NOT_A_SETTING": "x", "BOOTHSYNC_AGENT_port": "1"}

    assert _agent(environ=environ).port == 8470


# Overrides


def test_overrides_beat_env_and_toml(tmp_path: Path) -> None:
    config = _write_toml(tmp_path, "[agent]\nport = 9100\n")

    settings = _agent(config, environ={"BOOTHSYNC_AGENT_PORT": "9300"}, overrides={"port": 9400})

    assert settings.port == 9400


def test_overrides_none_ignored(tmp_path: Path) -> None:
    config = _write_toml(tmp_path, '[agent]\nport = 9100\nhot_folder = "/srv/scans"\n')
    overrides = {"port": None, "hot_folder": None, "server_url": None}

    settings = _agent(config, environ={"BOOTHSYNC_AGENT_SERVER_URL": "http://hq:1"}, overrides=overrides)

    assert settings.port == 9100
    assert settings.hot_folder == Path("/srv/scans")
    assert settings.server_url == "http://hq:1"


def test_overrides_coerced() -> None:
    settings = _agent(overrides={"port": "9401", "data_dir": "/tmp/agent-data"})

    assert settings.port == 9401
    assert settings.data_dir == Path("/tmp/agent-data")


def test_overrides_unknown_key_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        _agent(overrides={"colour": "blue"})

    assert "agent.colour" in str(info.value)


# Type coercion


def test_coerce_int_from_env() -> None:
    settings = _agent(environ={"BOOTHSYNC_AGENT_CHUNK_BYTES": " 65536 "})

    assert settings.chunk_bytes == 65536
    assert type(settings.chunk_bytes) is int


def test_coerce_float_from_env() -> None:
    settings = _agent(environ={"BOOTHSYNC_AGENT_RETRY_BASE_S": "0.25", "BOOTHSYNC_AGENT_OCR_TIMEOUT_S": "5"})

    assert settings.retry_base_s == 0.25
    assert settings.ocr_timeout_s == 5.0
    assert type(settings.ocr_timeout_s) is float


def test_coerce_float_from_toml_int(tmp_path: Path) -> None:
    config = _write_toml(tmp_path, "[agent]\nretry_max_s = 10\n")

    settings = _agent(config)

    assert settings.retry_max_s == 10.0
    assert type(settings.retry_max_s) is float


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "On", " true "])
def test_coerce_bool_true_spellings(text: str) -> None:
    settings = _server(environ={"BOOTHSYNC_SERVER_FSYNC_EVERY_PATCH": text})

    assert settings.fsync_every_patch is True


@pytest.mark.parametrize("text", ["0", "false", "False", "no", "OFF"])
def test_coerce_bool_false_spellings(text: str) -> None:
    settings = _server(environ={"BOOTHSYNC_SERVER_FSYNC_EVERY_PATCH": text})

    assert settings.fsync_every_patch is False


def test_coerce_bool_false_beats_true_toml(tmp_path: Path) -> None:
    config = _write_toml(tmp_path, "[server]\nfsync_every_patch = true\n")

    settings = _server(config, environ={"BOOTHSYNC_SERVER_FSYNC_EVERY_PATCH": "no"})

    assert settings.fsync_every_patch is False


def test_coerce_path_from_env() -> None:
    settings = _agent(environ={"BOOTHSYNC_AGENT_DATA_DIR": "relative/agent", "BOOTHSYNC_AGENT_HOT_FOLDER": "/srv/scans"})

    assert settings.data_dir == Path("relative/agent")
    assert isinstance(settings.data_dir, Path)
    assert settings.hot_folder == Path("/srv/scans")
    assert isinstance(settings.hot_folder, Path)


def test_coerce_empty_env_path_none(tmp_path: Path) -> None:
    config = _write_toml(tmp_path, '[agent]\nhot_folder = "/srv/scans"\n')

    settings = _agent(config, environ={"BOOTHSYNC_AGENT_HOT_FOLDER": ""})

    assert settings.hot_folder is None


def test_coerce_empty_toml_path_none(tmp_path: Path) -> None:
    config = _write_toml(tmp_path, '[agent]\nhot_folder = ""\n')

    assert _agent(config).hot_folder is None


# Invalid values


@pytest.mark.parametrize(
    ("name", "value", "label"),
    [
        ("BOOTHSYNC_AGENT_PORT", "eighty", "agent.port"),
        ("BOOTHSYNC_AGENT_PORT", "84.5", "agent.port"),
        ("BOOTHSYNC_AGENT_PORT", "", "agent.port"),
        ("BOOTHSYNC_AGENT_RETRY_BASE_S", "fast", "agent.retry_base_s"),
        ("BOOTHSYNC_AGENT_DISK_RESERVE_BYTES", "100MB", "agent.disk_reserve_bytes"),
        ("BOOTHSYNC_SERVER_FSYNC_EVERY_PATCH", "maybe", "server.fsync_every_patch"),
        ("BOOTHSYNC_SERVER_FSYNC_EVERY_PATCH", "2", "server.fsync_every_patch"),
        ("BOOTHSYNC_SERVER_MAX_UPLOAD_BYTES", "20GiB", "server.max_upload_bytes"),
    ],
)
def test_invalid_env_value_names_setting(name: str, value: str, label: str) -> None:
    section = label.split(".")[0]
    cls = AgentSettings if section == "agent" else ServerSettings

    with pytest.raises(ConfigError) as info:
        load_settings(cls, section, environ={name: value})

    assert label in str(info.value)
    assert repr(value) in str(info.value)


def test_invalid_toml_value_names_setting(tmp_path: Path) -> None:
    config = _write_toml(tmp_path, '[agent]\nthumbnail_px = "large"\n')

    with pytest.raises(ConfigError) as info:
        _agent(config)

    assert "agent.thumbnail_px" in str(info.value)


def test_invalid_toml_path_type_names_setting(tmp_path: Path) -> None:
    config = _write_toml(tmp_path, "[agent]\ndata_dir = 5\n")

    with pytest.raises(ConfigError) as info:
        _agent(config)

    assert "agent.data_dir" in str(info.value)


def test_invalid_toml_float_for_int(tmp_path: Path) -> None:
    # A fractional port is a mistake, and int() would silently cut it to 8470.
    config = _write_toml(tmp_path, "[agent]\nport = 8470.9\n")

    with pytest.raises(ConfigError) as info:
        _agent(config)

    assert "agent.port" in str(info.value)


def test_invalid_toml_bool_for_int(tmp_path: Path) -> None:
    config = _write_toml(tmp_path, "[agent]\nchunk_bytes = true\n")

    with pytest.raises(ConfigError) as info:
        _agent(config)

    assert "agent.chunk_bytes" in str(info.value)


def test_invalid_toml_array_for_text(tmp_path: Path) -> None:
    # str() of a list would give the event the name "['spring']".
    config = _write_toml(tmp_path, '[agent]\nevent = ["spring"]\n')

    with pytest.raises(ConfigError) as info:
        _agent(config)

    assert "agent.event" in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BOOTHSYNC_AGENT_PORT", "70000"),
        ("BOOTHSYNC_AGENT_CHUNK_BYTES", "0"),
        ("BOOTHSYNC_AGENT_DERIVATIVE_WORKERS", "0"),
        ("BOOTHSYNC_AGENT_THUMBNAIL_PX", "0"),
        ("BOOTHSYNC_AGENT_OCR_TIMEOUT_S", "-1"),
    ],
)
def test_invalid_out_of_range_value(name: str, value: str) -> None:
    # Each value passes the type check, and the agent fails or hangs only later, once it runs.
    label = "agent." + name.removeprefix("BOOTHSYNC_AGENT_").lower()

    with pytest.raises(ConfigError) as info:
        _agent(environ={name: value})

    assert label in str(info.value)


# Documentation


def _doc_text() -> str:
    assert DOCS.is_file(), f"{DOCS} is missing: it must list every setting"
    return DOCS.read_text(encoding="utf-8")


def _setting_labels() -> list[tuple[str, str]]:
    return [(section, name) for section, names in settings_field_names().items() for name in names]


def test_field_names_cover_both_sections() -> None:
    names = settings_field_names()

    assert sorted(names) == ["agent", "server"]
    assert "port" in names["agent"]
    assert "fsync_every_patch" in names["server"]


@pytest.mark.parametrize(("section", "name"), _setting_labels())
def test_docs_list_setting(section: str, name: str) -> None:
    text = _doc_text()
    env_name = f"BOOTHSYNC_{section.upper()}_{name.upper()}"
    # The setting and its environment variable must share one table row.
    row = re.compile(rf"^\|.*`{re.escape(section)}\.{re.escape(name)}`.*`{env_name}`.*$", re.MULTILINE)

    assert row.search(text), f"docs/configuration.md has no row with `{section}.{name}` and `{env_name}`"


def test_docs_list_no_unknown_setting() -> None:
    documented = set(re.findall(r"^\| `(agent|server)\.(\w+)`", _doc_text(), re.MULTILINE))

    assert documented == set(_setting_labels())
