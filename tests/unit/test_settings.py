from __future__ import annotations

import pytest
import redis

from procflow import ConfigurationError, RedisSettings
from procflow.settings import parse_size
from procflow.store.connect import connection_class, connection_kwargs


def test_plain_url() -> None:
    s = RedisSettings.from_url("redis://127.0.0.1:6400/3")
    assert (s.host, s.port, s.db, s.ssl) == ("127.0.0.1", 6400, 3, False)
    assert s.address == "127.0.0.1:6400"


def test_defaults_and_credentials() -> None:
    s = RedisSettings.from_url("redis://alice:p%40ss@redis.example")
    assert (s.host, s.port, s.db) == ("redis.example", 6379, 0)
    assert (s.username, s.password) == ("alice", "p@ss")
    assert "p@ss" not in repr(s)
    assert "p@ss" not in s.url


def test_password_only() -> None:
    s = RedisSettings.from_url("redis://:secret@localhost:1234")
    assert (s.username, s.password) == (None, "secret")


def test_tls_and_options() -> None:
    s = RedisSettings.from_url("rediss://h:6380/1?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem")
    assert s.ssl and s.ssl_cert_reqs == "none" and s.ssl_ca_certs == "/ca.pem"
    kwargs = connection_kwargs(s)
    assert kwargs["ssl_check_hostname"] is False
    assert connection_class(s) is redis.SSLConnection


def test_unix_socket() -> None:
    s = RedisSettings.from_url("unix:///tmp/r.sock?db=2")
    assert (s.unix_socket_path, s.db) == ("/tmp/r.sock", 2)
    assert s.address == "unix:/tmp/r.sock"
    assert "host" not in connection_kwargs(s)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://x", "scheme"),
        ("redis://", "no host"),
        ("redis://h:notaport", "Port"),
        ("redis://h/db", "database must be a number"),
        ("unix://", "socket path"),
        ("redis://h?bogus=1", "unknown option"),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("", "non-empty"),
    ],
)
def test_bad_urls_are_clear_errors(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        RedisSettings.from_url(url)


def test_bad_url_error_hides_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisSettings.from_url("redis://u:topsecret@h:xx")
    assert "topsecret" not in str(info.value)


def test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCFLOW_REDIS_URL", "redis://envhost:7000/0")
    assert RedisSettings.from_env().host == "envhost"
    assert RedisSettings.from_env("redis://other/0").host == "other"


def test_sizes() -> None:
    assert parse_size(1024) == 1024
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("200m") == 200_000_000
    for bad in ("lots", -1, 0, "0MB", True):
        with pytest.raises(ConfigurationError):
            parse_size(bad)  # type: ignore[arg-type]


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    s = RedisSettings.from_url("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2/pay-master/3")
    assert s.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert (s.service_name, s.db, s.password, s.ssl) == ("pay-master", 3, "s3cret", False)
    assert s.url == "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/pay-master/3"
    assert "s3cret" not in repr(s) and "pay-master" in s.address
    assert RedisSettings.from_url("rediss+sentinel://h:1/m").ssl is True


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis+sentinel://h1:26379", "master's name"),
        ("redis+sentinel://h1:x/m", "not host:port"),
        ("redis+sentinel://h1:1/m/zero", "database must be a number"),
        ("redis+sentinel://h1:1/m?ssl_keyfile=k", "unknown option"),
    ],
)
def test_a_bad_sentinel_url_says_what_is_wrong(url: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        RedisSettings.from_url(url)
