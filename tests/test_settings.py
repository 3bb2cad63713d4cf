"""Settings: flags over environment over file over defaults, and every bound validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from signaling.settings import Settings, load_settings
from signaling.state.sentinel import parse_sentinel_url


def test_defaults_are_safe_for_a_fresh_machine() -> None:
    s = load_settings({}, env={})
    assert (s.host, s.port, s.data_dir) == ("127.0.0.1", 8443, Path("./consilium-data"))
    assert s.dev_mode and s.redis is None and s.max_message_bytes == 64 * 1024


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[consilium]\nport = 9001\nmessages_per_s = 5.5\nlog_level = 'warning'\n")
    env = {"CONSILIUM_PORT": "9002", "CONSILIUM_MESSAGES_PER_S": "7"}
    s = load_settings({"port": 9003}, env=env, config_file=config)
    assert (s.port, s.messages_per_s, s.log_level) == (9003, 7.0, "warning")


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("allowed_origins = ['https://mdt.hospital.local']\n")
    s = load_settings({}, env={"CONSILIUM_CONFIG": str(config)})
    assert s.allowed_origins == ["https://mdt.hospital.local"]


def test_list_from_environment_is_comma_separated() -> None:
    s = load_settings({}, env={"CONSILIUM_ALLOWED_ORIGINS": "https://a, https://b"})
    assert s.allowed_origins == ["https://a", "https://b"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"host": "10.0.0.5"}, "loopback"),
        ({"jwt_leeway_s": 120}, "jwt_leeway_s"),
        ({"port": 70000}, "port"),
        ({"max_message_bytes": 0}, "max_message_bytes"),
        ({"tls_cert": "/x.pem"}, "together"),
        ({"redis": "http://x"}, "redis"),
        ({"port": "eighty"}, "port"),
    ],
)
def test_bad_settings_are_refused(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(flags, env={})


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[consilium]\nmax_partcipants = 3\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings({}, env={}, config_file=config)


def test_tls_allows_any_address(tmp_path: Path) -> None:
    s = load_settings({"host": "0.0.0.0", "tls_cert": "c.pem", "tls_key": "k.pem"}, env={})
    assert s.tls and s.own_origin == "https://0.0.0.0:8443"


def test_summary_hides_redis_password_and_turn_secret() -> None:
    s = Settings(redis="redis://user:hunter2@db:6379/0", turn_secret="sesame")
    summary = str(s.summary())
    assert "hunter2" not in summary and "sesame" not in summary


def test_redis_may_name_its_sentinels() -> None:
    url = "sentinel://consilium:s%40cret@10.0.0.1:26379,10.0.0.2,[fd00::3]:26380/mdt/2"
    s = load_settings({"redis": url}, env={})
    where = parse_sentinel_url(s.redis or "")
    assert where.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("fd00::3", 26380))
    assert (where.service, where.db, where.tls) == ("mdt", 2, False)
    assert (where.username, where.password) == ("consilium", "s@cret")
    assert (where.sentinel_username, where.sentinel_password) == (None, None)
    env = {"CONSILIUM_REDIS": "sentinels://:pw@h1,h2,h3/mdt?sentinel_password=guard"}
    where = parse_sentinel_url(load_settings({}, env=env).redis or "")
    assert (where.db, where.tls, where.username, where.password) == (0, True, None, "pw")
    assert where.sentinel_password == "guard"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sentinel://h1:26379,h2:26379", "names the monitored service"),
        ("sentinel://h1:26379/", "names the monitored service"),
        ("sentinel://h1:26379/mdt/zero", "database number"),
        ("sentinel://h1:26379/mdt/0/extra", "database number"),
        ("sentinel://h1:port/mdt", "no valid port"),
        ("sentinel://h1:0/mdt", "no valid port"),
        ("sentinel://h1,,h3/mdt", "no host"),
        ("sentinel://[fd00::1/mdt", "Invalid IPv6"),
        ("sentinel://[fd00::1]x/mdt", r"\[host\]:port"),
        ("sentinel://h1/mdt?password=x", "unknown Sentinel URL parameter"),
        ("sentinel://h1/mdt?sentinel_password=a&sentinel_password=b", "given twice"),
    ],
)
def test_malformed_sentinel_urls_are_refused_saying_why(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings({"redis": url}, env={})


def test_summary_hides_both_passwords_of_a_sentinel_url() -> None:
    s = Settings(redis="sentinel://:hunter2@h1,h2/mdt?sentinel_password=opensesame")
    summary = str(s.summary())
    assert "hunter2" not in summary and "opensesame" not in summary
    assert "h1,h2/mdt" in summary
