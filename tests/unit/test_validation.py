"""Shapes of identifiers that cross the wire."""

import pytest

from dcounter import validation
from dcounter.errors import BadRequest


@pytest.mark.parametrize("value", [
    "localhost:8080", "node-1.example.com:1", "10.0.0.7:65535", "[::1]:8080",
    "[2001:db8::1]:9000", "example.com.:80", "a" * 63 + ":80", "b." + "a" * 63 + ":80",
])
def test_valid_node_ids(value):
    assert validation.node_id(value) == value


@pytest.mark.parametrize("value", [
    None, 8080, "", "localhost", "localhost:", ":8080", "localhost:0", "localhost:65536",
    "localhost:080", "localhost:-1", "localhost:80x", "::1:8080", "[::1:8080", "[::zz]:80",
    "[1.2.3.4]:80", "-bad:80", "bad-:80", "a..b:80", "bad_host:80", "white space:80",
    "a" * 64 + ":80", "x" * 300 + ":80", "héllo:80",
])
def test_invalid_node_ids(value):
    with pytest.raises(BadRequest):
        validation.node_id(value)


@pytest.mark.parametrize("value", ["default", "a", "A-z_0.9:x", "x" * 128])
def test_valid_counter_names(value):
    assert validation.counter_name(value) == value


@pytest.mark.parametrize("value", ["", "x" * 129, "a b", "a/b", "ü", None, 5, ["a"]])
def test_invalid_counter_names(value):
    with pytest.raises(BadRequest):
        validation.counter_name(value)


@pytest.mark.parametrize("value", [1, -1, 2**53 - 1, -(2**53 - 1), 42])
def test_valid_deltas(value):
    assert validation.delta(value) == value


@pytest.mark.parametrize("value", [True, False, 1.0, 0.5, 0, 2**53, -(2**53), "1", None,
                                   float("nan")])
def test_invalid_deltas(value):
    with pytest.raises(BadRequest):
        validation.delta(value)


@pytest.mark.parametrize("value", ["k", "a b", "~!@#", "x" * 255, "uuid-0f1e-4c"])
def test_valid_idempotency_keys(value):
    assert validation.idempotency_key(value) == value


@pytest.mark.parametrize("value", ["", " a", "a ", "x" * 256, "tab\there", "new\nline", "é",
                                   None, 7])
def test_invalid_idempotency_keys(value):
    with pytest.raises(BadRequest):
        validation.idempotency_key(value)


@pytest.mark.parametrize("value,expected", [
    ("abc:1", ("abc", 1)), ("a_b-C:42", ("a_b-C", 42)), ("o:" + "9" * 18, ("o", 10**18 - 1)),
    ("o:9223372036854775807", ("o", 2**63 - 1)),
])
def test_event_ids_split(value, expected):
    assert validation.split_event_id(value) == expected


@pytest.mark.parametrize("value", [
    "abc", "abc:", ":1", "abc:0", "abc:01", "abc:-1", "abc:1.0", "a:b:1", "a b:1",
    "o:" + "1" * 20, "o:9223372036854775808", "x" * 65 + ":1", None, 5, "0a8f6c1e-3b1d-4c1a-9a55-3f2a7b8c9d0e",
])
def test_other_event_id_shapes_are_not_ours(value):
    assert validation.split_event_id(value) is None


def test_origins():
    assert validation.origin("0123abcd") == "0123abcd"
    for bad in ("", "a:b", "x" * 65, None):
        with pytest.raises(BadRequest):
            validation.origin(bad)


def test_messages_name_the_field():
    with pytest.raises(BadRequest, match="peers entry"):
        validation.node_id("nope", "peers entry")


# -- ASCII digits only ----------------------------------------------------------------------------
# `str.isdigit()` accepts superscripts, other scripts' digits and full-width digits, and `int()`
# accepts some of them, white space and underscores: none of that is a number on the wire.
NOT_ASCII_DIGITS = ["²", "1²", "٣", "١٢", "８０", "𝟠", "①", "1_0", " 1", "1 ", "+1", "-1", "",
                    "1.0", "0x1"]


@pytest.mark.parametrize("port", ["²", "8²", "٨٠", "８０", "𝟠𝟘", "8_0", "+80", " 80"])
def test_node_id_ports_are_ascii_digits_only(port):
    with pytest.raises(BadRequest, match="port from 1 to 65535"):
        validation.node_id(f"a:{port}")


@pytest.mark.parametrize("seq", ["²", "1²", "٣", "１", "1_0", "+1", " 1"])
def test_event_id_sequences_are_ascii_digits_only(seq):
    assert validation.split_event_id(f"abc:{seq}") is None


@pytest.mark.parametrize("text", ["0", "7", "0123", "18446744073709551616"])
def test_ascii_digits(text):
    assert validation.is_ascii_digits(text)


@pytest.mark.parametrize("text", NOT_ASCII_DIGITS + [None, 5])
def test_not_ascii_digits(text):
    assert not validation.is_ascii_digits(text)


@pytest.mark.parametrize("text,expected", [("0", 0), ("42", 42), ("-3", -3), ("007", 7)])
def test_parse_int_takes_ascii_decimal_integers(text, expected):
    assert validation.parse_int(text) == expected


@pytest.mark.parametrize("text", [t for t in NOT_ASCII_DIGITS if t != "-1"]
                         + ["1e3", "--1", "-", "1" * 5000])
def test_parse_int_refuses_everything_else(text):
    with pytest.raises(ValueError):
        validation.parse_int(text)


@pytest.mark.parametrize("text,expected", [("0", 0.0), ("2", 2.0), ("0.5", 0.5), (".5", 0.5),
                                           ("5.", 5.0), ("-1.5", -1.5), ("1e3", 1000.0),
                                           ("2.5E-1", 0.25)])
def test_parse_float_takes_ascii_decimal_numbers(text, expected):
    assert validation.parse_float(text) == expected


@pytest.mark.parametrize("text", ["²", "٣.٥", "１.５", "1_0.5", " 1", "1 ", "+1", "", ".",
                                  "nan", "NaN", "inf", "-inf", "infinity", "1e999", "0x1p3",
                                  "1e", "e3"])
def test_parse_float_refuses_everything_else(text):
    with pytest.raises(ValueError):
        validation.parse_float(text)
