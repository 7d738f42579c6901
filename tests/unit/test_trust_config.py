"""The trust and limit settings: Config validation, flags and DCOUNTER_* variables."""

import pytest

from dcounter.cli import _UsageError, config_from_args, env_name
from dcounter.config import Config

SECRET = "a" * 20
OLD = "b" * 20
TOKEN = "c" * 20


def test_defaults():
    cfg = Config()
    assert (cfg.request_deadline, cfg.idle_timeout, cfg.max_clock_skew) == (10.0, 30.0, 30.0)
    assert cfg.cluster_secret == () and cfg.client_token is None and not cfg.protect_reads
    assert (cfg.tls_cert, cfg.tls_key, cfg.tls_ca) == (None, None, None)


def test_secrets_stay_out_of_repr():
    text = repr(Config(cluster_secret=(SECRET,), client_token=TOKEN))
    assert SECRET not in text and TOKEN not in text


@pytest.mark.parametrize("changes,fragment", [
    ({"request_deadline": 0}, "--request-deadline"),
    ({"request_deadline": float("inf")}, "--request-deadline"),
    ({"idle_timeout": -1}, "--idle-timeout"),
    ({"idle_timeout": float("nan")}, "--idle-timeout"),
    ({"max_clock_skew": 0}, "--max-clock-skew"),
    ({"max_clock_skew": 7200}, "--max-clock-skew"),
    ({"cluster_secret": ("short",)}, "--cluster-secret"),
    ({"cluster_secret": (SECRET, "")}, "--cluster-secret"),
    ({"cluster_secret": (" " + SECRET,)}, "--cluster-secret"),
    ({"client_token": ""}, "--client-token"),
    ({"client_token": "has a space in it!!"}, "--client-token"),
    ({"client_token": "é" * 20}, "--client-token"),
    ({"protect_reads": True}, "--protect-reads needs --client-token"),
    ({"tls_cert": "c.pem"}, "--tls-cert and --tls-key go together"),
    ({"tls_key": "k.pem"}, "--tls-cert and --tls-key go together"),
    ({"tls_ca": "ca.pem"}, "--tls-ca needs --tls-cert"),
])
def test_invalid_trust_settings(changes, fragment):
    with pytest.raises(ValueError) as info:
        Config(**changes)
    assert fragment in str(info.value)
    for secret in changes.get("cluster_secret", ()):
        if secret.strip():
            assert secret.strip() not in str(info.value)


FLAGS = [
    # flag, raw value, Config field, expected value
    ("--request-deadline", "2.5", "request_deadline", 2.5),
    ("--idle-timeout", "7", "idle_timeout", 7.0),
    ("--max-clock-skew", "12", "max_clock_skew", 12.0),
    ("--cluster-secret", f"{SECRET}, {OLD}", "cluster_secret", (SECRET, OLD)),
    ("--client-token", TOKEN, "client_token", TOKEN),
    ("--max-body", "4096", "max_body", 4096),
    ("--max-connections", "9", "max_connections", 9),
    ("--max-peers", "12", "max_peers", 12),
]


@pytest.mark.parametrize("flag,raw,field,expected", FLAGS)
def test_each_flag_and_its_environment_variable(flag, raw, field, expected):
    assert getattr(config_from_args([flag, raw], environ={}), field) == expected
    assert getattr(config_from_args([], environ={env_name(field): raw}), field) == expected


def test_flags_win_over_the_environment():
    cfg = config_from_args(["--idle-timeout", "3"], environ={"DCOUNTER_IDLE_TIMEOUT": "9"})
    assert cfg.idle_timeout == 3.0


def test_tls_flags_and_variables():
    flags = ["--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-ca", "ca.pem"]
    cfg = config_from_args(flags, environ={})
    assert (cfg.tls_cert, cfg.tls_key, cfg.tls_ca) == ("c.pem", "k.pem", "ca.pem")
    env = {"DCOUNTER_TLS_CERT": "c.pem", "DCOUNTER_TLS_KEY": "k.pem", "DCOUNTER_TLS_CA": "ca.pem"}
    cfg = config_from_args([], environ=env)
    assert (cfg.tls_cert, cfg.tls_key, cfg.tls_ca) == ("c.pem", "k.pem", "ca.pem")


def test_protect_reads_flag_and_variable():
    assert config_from_args(["--client-token", TOKEN, "--protect-reads"], environ={}).protect_reads
    env = {"DCOUNTER_CLIENT_TOKEN": TOKEN, "DCOUNTER_PROTECT_READS": "yes"}
    assert config_from_args([], environ=env).protect_reads
    env["DCOUNTER_PROTECT_READS"] = "0"
    assert not config_from_args([], environ=env).protect_reads


def test_a_misspelt_boolean_variable_is_an_error_not_false():
    env = {"DCOUNTER_CLIENT_TOKEN": TOKEN, "DCOUNTER_PROTECT_READS": "ture"}
    with pytest.raises(_UsageError):
        config_from_args([], environ=env)


@pytest.mark.parametrize("raw", ["", ",", f"{SECRET},", " "])
def test_an_empty_secret_never_means_no_authentication(raw):
    with pytest.raises(ValueError):
        config_from_args([], environ={"DCOUNTER_CLUSTER_SECRET": raw})
    with pytest.raises(ValueError):
        config_from_args(["--cluster-secret", raw], environ={})


def test_an_empty_token_is_refused():
    with pytest.raises(ValueError):
        config_from_args([], environ={"DCOUNTER_CLIENT_TOKEN": ""})
