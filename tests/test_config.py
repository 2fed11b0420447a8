"""Settings: environment, YAML file, and which one wins."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cachet_server.backend.topology import TopologyKind, parse_redis_url
from cachet_server.config import Settings
from pydantic import ValidationError


def test_defaults():
    settings = Settings()
    assert settings.listen == "127.0.0.1:50051", "make run listens on localhost"
    assert settings.metrics.listen == "127.0.0.1:9464"
    assert settings.redis_url is None
    assert settings.limits.default_ttl == timedelta(hours=1)


def test_environment_and_yaml_merge_with_environment_winning(tmp_path, monkeypatch):
    config = tmp_path / "cachet.yaml"
    config.write_text("listen: 127.0.0.1:6000\nlimits:\n  max_batch: 50\n  max_key_bytes: 64\n")
    monkeypatch.setenv("CACHET_CONFIG_FILE", str(config))
    monkeypatch.setenv("CACHET_LIMITS__MAX_BATCH", "70")
    monkeypatch.setenv("CACHET_REDIS_URL", "redis://127.0.0.1:1/0")
    settings = Settings.load()
    assert settings.listen == "127.0.0.1:6000"
    assert settings.limits.max_batch == 70, "the environment wins over the file"
    assert settings.limits.max_key_bytes == 64, "the file fills what the environment leaves"
    assert settings.redis_url == "redis://127.0.0.1:1/0"


def test_default_ttl_must_fit_under_max_ttl():
    with pytest.raises(ValidationError):
        Settings(limits={"default_ttl": "P40D", "max_ttl": "P30D"})


@pytest.mark.parametrize(
    ("url", "kind", "hosts", "extra"),
    [
        ("redis://localhost:6380/2", TopologyKind.STANDALONE, [("localhost", 6380)], {"db": 2}),
        ("rediss://u:p%40ss@h", TopologyKind.STANDALONE, [("h", 6379)], {"password": "p@ss"}),
        (
            "redis+sentinel://:secret@s1:26379,s2/mymaster/1?sentinel_password=x",
            TopologyKind.SENTINEL,
            [("s1", 26379), ("s2", 26379)],
            {"master_name": "mymaster", "db": 1, "password": "secret"},
        ),
        (
            "redis+cluster://a:7000,[::1]:7001",
            TopologyKind.CLUSTER,
            [("a", 7000), ("::1", 7001)],
            {},
        ),
    ],
)
def test_redis_url_forms(url, kind, hosts, extra):
    target = parse_redis_url(url)
    assert target.kind is kind and target.hosts == hosts
    for name, value in extra.items():
        assert getattr(target, name) == value


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost",
        "redis://",
        "redis://a:1,b:2",
        "redis+sentinel://s1:26379",
        "redis+cluster://a:7000/3",
        "redis://host:notaport",
    ],
)
def test_bad_redis_urls_are_refused_with_a_reason(url):
    with pytest.raises(ValueError, match=r"\S"):
        parse_redis_url(url)
