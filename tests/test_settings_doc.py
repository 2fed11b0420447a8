"""The README's settings table is the Settings model: every setting listed, nothing
listed that does not exist; unknown names in the environment or the YAML file are
refused with the nearest valid one."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from cachet_server.config import Settings, check_environment, setting_names

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def test_readme_table_lists_exactly_the_settings():
    listed = re.findall(r"^\| `(CACHET_[A-Z0-9_]+)` \|", README.read_text(), re.M)
    assert len(listed) == len(set(listed)), "each setting once"
    assert set(listed) == set(setting_names())
    for name in ("CACHET_LIMITS__DEFAULT_TTL", "CACHET_METRICS__LISTEN", "CACHET_LOG_FORMAT"):
        assert name in listed
    mentioned = set(re.findall(r"CACHET_[A-Z0-9_]*[A-Z0-9]", README.read_text()))
    assert mentioned <= set(setting_names()), "the README names no setting that does not exist"


def test_readme_table_is_what_the_generator_writes():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "settings_table.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("name", "nearest"),
    [
        ("CACHET_DEFAULT_TTL", "CACHET_LIMITS__DEFAULT_TTL"),
        ("CACHET_MAX_TTL", "CACHET_LIMITS__MAX_TTL"),
        ("CACHET_OTEL_SERVICE_NAME", None),
        ("CACHET_REDIS_MAX_CONECTIONS", "CACHET_REDIS_MAX_CONNECTIONS"),
    ],
)
def test_an_unknown_variable_is_named_with_the_nearest_setting(name, nearest):
    with pytest.raises(ValueError) as refused:
        check_environment({name: "1", "CACHET_LISTEN": "127.0.0.1:1", "OTHER": "x"})
    message = str(refused.value)
    assert name in message and "CACHET_LISTEN" not in message.replace(name, "")
    if nearest:
        assert "did you mean" in message and nearest in message.split("did you mean")[1]


def test_known_variables_and_whole_sections_pass():
    check_environment(
        {
            "CACHET_LIMITS__MAX_TTL": "P1D",
            "CACHET_LIMITS": "{}",
            "CACHET_AUTH__JWT__ISSUER": "x",
            "PATH": "/bin",
        }
    )


def test_an_unknown_yaml_key_names_the_nearest(tmp_path, monkeypatch):
    config = tmp_path / "cachet.yaml"
    config.write_text("lmits:\n  max_batch: 3\nmetrics:\n  listen_on: x\n")
    monkeypatch.setenv("CACHET_CONFIG_FILE", str(config))
    with pytest.raises(ValueError) as refused:
        Settings.load()
    message = str(refused.value)
    assert "unknown key lmits (did you mean limits?)" in message
    assert "unknown key metrics.listen_on (did you mean listen?)" in message
