"""Config validation and derived values."""

import dataclasses
import socket

import pytest

from dcounter.cli import config_from_args, env_name
from dcounter.config import Config


def test_defaults_are_the_original_timings():
    cfg = Config()
    assert (cfg.port, cfg.heartbeat_interval, cfg.cleanup_interval, cfg.peer_timeout,
            cfg.retry_base, cfg.retry_max) == (8080, 2.0, 5.0, 6.0, 0.1, 10.0)


def test_variants_come_from_dataclasses_replace():
    base = Config(port=0, in_memory=True)
    fast = dataclasses.replace(base, heartbeat_interval=0.1, peer_timeout=0.5)
    assert fast.heartbeat_interval == 0.1 and fast.in_memory and base.heartbeat_interval == 2.0
    assert base.replace(cluster="blue").cluster == "blue"
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.port = 1


@pytest.mark.parametrize("changes,fragment", [
    ({"peer_timeout": 2.0}, "--peer-timeout must be greater than --heartbeat-interval"),
    ({"peer_timeout": 1.0}, "--peer-timeout must be greater"),
    ({"heartbeat_interval": 0}, "--heartbeat-interval"),
    ({"heartbeat_interval": -1}, "--heartbeat-interval"),
    ({"cleanup_interval": float("nan")}, "--cleanup-interval"),
    ({"retry_base": 0}, "--retry-base"),
    ({"retry_base": 20.0}, "--retry-base must not exceed --retry-max"),
    ({"request_timeout": True}, "--request-timeout"),
    ({"idempotency_ttl": 0}, "--idempotency-ttl"),
    ({"batch_linger": -0.1}, "--batch-linger"),
    ({"drain_timeout": -1}, "--drain-timeout"),
    ({"port": -1}, "--port"),
    ({"port": 65536}, "--port"),
    ({"max_counters": 0}, "--max-counters"),
    ({"max_peers": 0}, "--max-peers"),
    ({"max_peers": 2.5}, "--max-peers"),
    ({"gap_cap": True}, "--gap-cap"),
    ({"max_body": 1.5}, "--max-body"),
    ({"max_keys": 0}, "--max-keys"),
    ({"max_keys": True}, "--max-keys"),
    ({"origin_retire_after": 0}, "--origin-retire-after"),
    ({"origin_retire_after": float("nan")}, "--origin-retire-after"),
    ({"reap_after": 0}, "--reap-after"),
    ({"reap_after": -5}, "--reap-after"),
    ({"reap_after": float("nan")}, "--reap-after"),
    ({"sync": "sometimes"}, "--sync"),
    ({"cluster": ""}, "--cluster"),
    ({"cluster": "a\nb"}, "--cluster"),
    ({"peers": ("localhost:8081", "nope")}, "--peers"),
    ({"advertise": "host:0"}, "--advertise"),
    ({"protocol": 0}, "--protocol"),
    ({"protocol": 3}, "--protocol"),
    ({"protocol": True}, "--protocol"),
])
def test_impossible_values_raise_value_error(changes, fragment):
    with pytest.raises(ValueError) as info:
        dataclasses.replace(Config(), **changes)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_zero_batch_linger_and_drain_timeout_are_allowed():
    cfg = Config(batch_linger=0, drain_timeout=0)
    assert cfg.batch_linger == 0 and cfg.drain_timeout == 0


def test_node_id_is_derived_from_host_and_bound_port():
    assert Config(port=0).node_id(41234) == "localhost:41234"
    assert Config(host="127.0.0.2", port=9).node_id() == "localhost:9"
    assert Config(host="10.1.2.3", port=9).node_id() == "10.1.2.3:9"
    assert Config(host="::1", port=9).node_id() == "localhost:9"
    assert Config(host="fd00::5", port=9).node_id() == "[fd00::5]:9"
    assert Config(host="0.0.0.0", port=9).node_id() == f"{socket.gethostname()}:9"
    assert Config(advertise="n1.example:7000", port=9).node_id(1234) == "n1.example:7000"


def test_data_path_defaults_to_a_per_port_directory():
    assert Config(port=0).data_path(5555) == "dcounter-data-5555"
    assert Config(data_dir="/somewhere").data_path(1) == "/somewhere"


# -- numbers from flags and DCOUNTER_* variables: ASCII digits only --------------------------------

@pytest.mark.parametrize("flag,raw", [
    ("--port", "８０８０"), ("--port", "٨٠٨٠"), ("--port", "80²"), ("--port", "8_080"),
    ("--max-connections", "１６"), ("--max-body", "1\u00a0000"),
    ("--heartbeat-interval", "٠.٥"), ("--peer-timeout", "６"), ("--request-timeout", "1_0"),
    ("--idle-timeout", "inf"), ("--drain-timeout", "nan"), ("--batch-linger", "Infinity"),
])
def test_numeric_flags_and_variables_take_ascii_digits_only(flag, raw):
    from dcounter.cli import _UsageError, config_from_args, env_name
    field = flag[2:].replace("-", "_")
    with pytest.raises(_UsageError, match="invalid value"):
        config_from_args([flag, raw], environ={})
    with pytest.raises(_UsageError, match="invalid value"):
        config_from_args([], environ={env_name(field): raw})


def test_numeric_values_may_carry_ascii_white_space_from_an_environment_file():
    from dcounter.cli import config_from_args
    cfg = config_from_args([], environ={"DCOUNTER_PORT": " 8081\n", "DCOUNTER_PEER_TIMEOUT": "7 "})
    assert (cfg.port, cfg.peer_timeout) == (8081, 7.0)
@pytest.mark.parametrize("flag,raw,field,expected", [
    ("--max-keys", "5000", "max_keys", 5000),
    ("--origin-retire-after", "3600", "origin_retire_after", 3600.0),
    ("--reap-after", "600", "reap_after", 600.0),
    ("--protocol", "1", "protocol", 1),
])
def test_bound_flags_and_their_environment_variables(flag, raw, field, expected):
    assert getattr(config_from_args([flag, raw], environ={}), field) == expected
    assert getattr(config_from_args([], environ={env_name(field): raw}), field) == expected
