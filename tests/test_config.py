from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cli import main
from gateway.config import ConfigError, GatewayConfig, load_config, seconds

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def check_config_cli(path: Path) -> subprocess.CompletedProcess[str]:
    """`gateway check-config PATH` in a process with a bare environment, in PATH's folder."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        cwd=path.parent,
    )


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    return err.value.problems


def test_shipped_configs_are_valid(monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_DEMO_SPEAKER_SECRET", "whsec_c2VjcmV0")
    monkeypatch.setenv("GATEWAY_DEMO_UNSUBSCRIBE_SECRET", "s3cret")
    import json

    from gateway.testing import FcmFake

    monkeypatch.setenv("GATEWAY_DEMO_FCM_SERVICE_ACCOUNT", json.dumps(FcmFake().service_account()))
    from py_vapid import Vapid02

    from gateway.testing import ApnsFake

    key = ApnsFake.__new__(ApnsFake)
    key.__post_init__()
    monkeypatch.setenv("GATEWAY_DEMO_APNS_KEY", key.key_pem())
    vapid = Vapid02()
    vapid.generate_keys()
    monkeypatch.setenv("GATEWAY_DEMO_VAPID_KEY", vapid.private_pem().decode())
    for name in ("gateway.toml", "demo.toml"):
        assert main(["check-config", str(REPO / "config" / name)]) == 0


def test_every_error_is_reported_with_its_key_path(tmp_path) -> None:
    found = problems(
        tmp_path,
        """
[server]
port = "eighty"
hots = "0.0.0.0"
[store]
synchronous = "sometimes"
[pipeline]
batch_size = 0
[delivery]
backoff_base = "soon"
[colour]
x = 1
""",
    )
    assert {p.split(":")[0] for p in found} == {
        "server.port",
        "server.hots",
        "store.synchronous",
        "pipeline.batch_size",
        "delivery.backoff_base",
        "colour",
    }
    assert any("unknown key" in p for p in found if p.startswith("server.hots"))


def test_not_toml(tmp_path) -> None:
    assert "not valid TOML" in problems(tmp_path, "[server\nport=1")[0]


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "nope.toml")
    assert "cannot read" in err.value.problems[0]


def test_channel_tables_are_checked_against_the_channel_config(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HUB_SECRET", raising=False)
    path = write(
        tmp_path,
        """
[channels.speaker]
concurency = 3
[channels.speaker.targets.hub]
url = "ftp://hub"
secret = { env = "HUB_SECRET" }
[channels.sms]
key = "x"
[channels.emial]
host = "x"
""",
    )
    proc = check_config_cli(path)
    assert proc.returncode == 2
    err = proc.stderr
    assert "channels.speaker.concurency: unknown key (did you mean 'concurrency'?)" in err
    assert "channels.sms: no plugin provides this channel (loaded: " in err
    assert "channels.emial: no plugin provides this channel (did you mean 'email'?) (loaded: " in err
    # Every problem in one run: the channel's other keys are checked beside its typo.
    assert "channels.speaker.targets.hub.url: expected an http(s) URL" in err
    assert "channels.speaker.targets.hub.secret.env: environment variable HUB_SECRET is not set" in err


def test_bad_secret_format_names_the_key(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HUB_SECRET", "plain-text-secret")
    path = write(
        tmp_path,
        """
[channels.speaker.targets.hub]
url = "https://hub.example"
secret = { env = "HUB_SECRET" }
""",
    )
    with pytest.raises(ConfigError) as err:
        from gateway.loader import channel_classes, configure_channels, plugin_manager

        config = load_config(path)
        configure_channels(config, channel_classes(plugin_manager(config)))
    assert err.value.problems == ["channels.speaker.targets.hub.secret: expected a secret starting with 'whsec_'"]
    assert "plain-text-secret" not in str(err.value)


def test_secret_from_file(tmp_path) -> None:
    from gateway.config import SecretRef

    (tmp_path / "s").write_text("whsec_abc\n")
    assert SecretRef(file=str(tmp_path / "s")).resolve("x").reveal() == "whsec_abc"
    with pytest.raises(ConfigError):
        SecretRef(env="A", file="b").resolve("x")


def test_default_path_resolution(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    assert load_config() == GatewayConfig()
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "gateway.toml").write_text("[pipeline]\nworkers = 7\n")
    assert load_config().pipeline.workers == 7
    other = tmp_path / "other.toml"
    other.write_text("[pipeline]\nworkers = 9\n")
    monkeypatch.setenv("GATEWAY_CONFIG", str(other))
    assert load_config().pipeline.workers == 9


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h", "d", "w"]))
def test_durations(n: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert seconds(f"{n}{unit}") == pytest.approx(n * factor)


def test_the_documented_cap_examples_are_valid(tmp_path) -> None:
    """config/gateway.toml shows [[caps]] as comments: uncommented, they must load."""
    text = (REPO / "config" / "gateway.toml").read_text()
    block = text[text.index("# [[caps]]") :]
    block = block[: block.index("\n\n")]  # the caps example ends at the first blank line
    lines = [ln[2:] for ln in block.splitlines() if ln.startswith("# ") and not ln.startswith("# #")]
    path = tmp_path / "caps.toml"
    path.write_text("\n".join(ln.split("#")[0].rstrip() for ln in lines) + "\n")
    from gateway.policy.engine import load_policy

    policy = load_policy(load_config(path))
    assert [c.name for c in policy.caps] == ["push-daily", "promo-week"]
