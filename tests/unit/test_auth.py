"""The trust policy (`dcounter.auth`) with a fake clock, and the order `App` applies it in."""

import http.client
import logging

import pytest

from dcounter import auth
from dcounter.api import App, Route
from dcounter.auth import Auth, NonceCache
from dcounter.config import Config
from dcounter.errors import Unauthorized, Unavailable
from dcounter.http_types import Request
from tests.fakes import FakeClock

SECRET = "s" * 32
OLD = "o" * 32
TOKEN = "t0ken-" + "x" * 20
BODY = b'{"node_id":"localhost:9000"}'


def headers(**values) -> http.client.HTTPMessage:
    message = http.client.HTTPMessage()
    for name, value in values.items():
        if isinstance(value, list):
            for item in value:
                message[name] = item
        else:
            message[name] = value
    return message


def request(path="/nodes/join", body=BODY, method="POST", query=(), **hdrs) -> Request:
    return Request(method, path, list(query), headers(**hdrs), body, "127.0.0.1")


def signed(clock, secret=SECRET, path="/nodes/join", body=BODY, at=None, nonce=None,
           query=()) -> Request:
    sig = auth.sign(secret, "POST", path, body, clock.time() if at is None else at, nonce)
    message = http.client.HTTPMessage()
    for name, value in sig.items():
        message[name] = value
    return Request("POST", path, list(query), message, body, "127.0.0.1")


def refused(policy, req, kind="peer") -> str:
    with pytest.raises(Unauthorized) as info:
        policy.check(req, kind)
    return info.value.message


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def policy(clock):
    return Auth(clock=clock, cluster_secrets=(SECRET,), max_clock_skew=30.0)


# -- signatures -----------------------------------------------------------------------------------

def test_a_signed_request_passes(clock, policy):
    policy.check(signed(clock), "peer")


def test_signer_hook_signs_with_the_first_secret(clock):
    both = Auth(clock=clock, cluster_secrets=(SECRET, OLD))
    sent = both.signer("POST", "/nodes/heartbeat", BODY)
    assert set(sent) == {auth.TIMESTAMP_HEADER, auth.NONCE_HEADER, auth.SIGNATURE_HEADER}
    only_new = Auth(clock=clock, cluster_secrets=(SECRET,))
    only_old = Auth(clock=clock, cluster_secrets=(OLD,))
    req = Request("POST", "/nodes/heartbeat", [], headers(**sent), BODY, "")
    only_new.check(req, "peer")
    assert "wrong request signature" in refused(only_old, req)


def test_any_listed_secret_is_accepted(clock):
    rotating = Auth(clock=clock, cluster_secrets=(SECRET, OLD))
    rotating.check(signed(clock, secret=OLD), "peer")
    rotating.check(signed(clock, secret=SECRET), "peer")


def test_missing_signature_headers(clock, policy):
    assert "missing request signature" in refused(policy, request())
    sig = auth.sign(SECRET, "POST", "/nodes/join", BODY, clock.time())
    for left_out in sig:
        partial = {k: v for k, v in sig.items() if k != left_out}
        assert left_out in refused(policy, request(**partial))


@pytest.mark.parametrize("name,value", [
    (auth.TIMESTAMP_HEADER, "soon"), (auth.TIMESTAMP_HEADER, "nan"),
    (auth.TIMESTAMP_HEADER, "-5"), (auth.NONCE_HEADER, "short"),
    (auth.NONCE_HEADER, "x" * 16 + " y"), (auth.SIGNATURE_HEADER, "ab" * 31),
    (auth.SIGNATURE_HEADER, "AB" * 32)])
def test_malformed_signature_headers(clock, policy, name, value):
    sig = auth.sign(SECRET, "POST", "/nodes/join", BODY, clock.time())
    sig[name] = value
    req = Request("POST", "/nodes/join", [], headers(**sig), BODY, "")
    assert "malformed" in refused(policy, req)


def test_duplicated_signature_header_is_refused(clock, policy):
    sig = auth.sign(SECRET, "POST", "/nodes/join", BODY, clock.time())
    sig[auth.NONCE_HEADER] = [sig[auth.NONCE_HEADER], "n" * 32]
    req = Request("POST", "/nodes/join", [], headers(**sig), BODY, "")
    assert "more than one" in refused(policy, req)


def test_wrong_secret(clock, policy):
    assert "wrong request signature" in refused(policy, signed(clock, secret="w" * 32))


@pytest.mark.parametrize("change", ["body", "path", "method"])
def test_signature_covers_body_path_and_method(clock, policy, change):
    req = signed(clock)
    if change == "body":
        req.body = b'{"node_id":"evil.example:80"}'
    elif change == "path":
        req.path = "/nodes/leave"
    else:
        req.method = "PUT"
    assert "wrong request signature" in refused(policy, req)


def test_stale_and_future_timestamps(clock, policy):
    assert "stale" in refused(policy, signed(clock, at=clock.time() - 31))
    assert "stale" in refused(policy, signed(clock, at=clock.time() + 31))
    policy.check(signed(clock, at=clock.time() - 29.5), "peer")
    policy.check(signed(clock, at=clock.time() + 29.5), "peer")


def test_a_request_signed_now_goes_stale_as_the_clock_moves(clock, policy):
    req = signed(clock)
    clock.advance(30.5)
    assert "stale" in refused(policy, req)


def test_replayed_nonce_is_refused(clock, policy):
    req = signed(clock, nonce="n" * 32)
    policy.check(req, "peer")
    clock.advance(5)
    assert "replayed" in refused(policy, req)
    # A fresh signature with the same nonce is a replay too.
    assert "replayed" in refused(policy, signed(clock, nonce="n" * 32))


def test_refused_requests_do_not_fill_the_replay_cache(clock, policy):
    refused(policy, signed(clock, secret="w" * 32, nonce="a" * 32))
    refused(policy, signed(clock, at=clock.time() - 60, nonce="b" * 32))
    assert policy.replay_cache_size() == 0
    policy.check(signed(clock, nonce="a" * 32), "peer")
    assert policy.replay_cache_size() == 1


def test_nonces_are_forgotten_once_stale(clock, policy):
    for i in range(5):
        policy.check(signed(clock, nonce=f"{i:032d}"), "peer")
    assert policy.replay_cache_size() == 5
    clock.advance(31)
    policy.check(signed(clock), "peer")
    assert policy.replay_cache_size() == 1


def test_nonce_cache_is_bounded():
    cache = NonceCache(capacity=2)
    assert cache.add("a", expires=10, now=0)
    assert cache.add("b", expires=20, now=0)
    assert not cache.add("a", expires=10, now=1)
    with pytest.raises(Unavailable):
        cache.add("c", expires=30, now=1)
    assert cache.add("c", expires=30, now=11)  # "a" expired and made room
    assert len(cache) == 2


def test_signed_requests_carry_no_query(clock, policy):
    req = signed(clock, query=[("x", "1")])
    assert "query" in refused(policy, req)


def test_peer_routes_do_not_take_the_client_token(clock):
    both = Auth(clock=clock, cluster_secrets=(SECRET,), client_token=TOKEN)
    refused(both, request(Authorization=f"Bearer {TOKEN}"))


def test_without_secret_peer_routes_are_open(clock):
    Auth(clock=clock, client_token=TOKEN).check(request(), "peer")


# -- the client token -------------------------------------------------------------------------

@pytest.fixture
def token_policy(clock):
    return Auth(clock=clock, client_token=TOKEN)


def test_token_guards_writes(token_policy):
    token_policy.check(request(Authorization=f"Bearer {TOKEN}"), "write")
    token_policy.check(request(Authorization=f"bearer {TOKEN}"), "write")
    assert "missing" in refused(token_policy, request(), "write")
    for value in (f"Bearer {TOKEN}x", "Bearer ", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN[:-1]}"):
        assert "wrong bearer token" in refused(token_policy, request(Authorization=value),
                                               "write")
    twice = request(Authorization=[f"Bearer {TOKEN}", f"Bearer {TOKEN}"])
    assert "more than one" in refused(token_policy, twice, "write")


def test_reads_are_open_unless_protected(clock, token_policy):
    token_policy.check(request(), "read")
    token_policy.check(request(), "open")
    protected = Auth(clock=clock, client_token=TOKEN, protect_reads=True)
    assert "missing" in refused(protected, request(), "read")
    protected.check(request(Authorization=f"Bearer {TOKEN}"), "read")
    protected.check(request(), "open")


def test_unknown_route_kind_fails_closed(token_policy):
    with pytest.raises(ValueError):
        token_policy.check(request(), "superuser")


def test_protect_reads_needs_a_token(clock):
    with pytest.raises(ValueError):
        Auth(clock=clock, protect_reads=True)


def test_from_config(clock):
    assert Auth.from_config(Config(), clock) is None
    policy = Auth.from_config(Config(cluster_secret=(SECRET, OLD), max_clock_skew=5), clock)
    assert policy.signs_peers and policy.max_clock_skew == 5
    assert Auth.from_config(Config(client_token=TOKEN), clock).signer is None


# -- App runs the check before the route ------------------------------------------------------

def test_app_checks_before_the_route_runs(clock):
    calls = []
    routes = [Route("POST", "/nodes/join", lambda node, req: calls.append(req) or (200, {}),
                    "peer")]
    app = App(node=None, routes=routes, auth=Auth(clock=clock, cluster_secrets=(SECRET,)))
    response = app.handle(request())
    assert response.status == 401 and b"missing request signature" in response.body
    assert calls == []
    assert app.handle(signed(clock)).status == 200
    assert len(calls) == 1


# -- the start-up warning -------------------------------------------------------------------

@pytest.mark.parametrize("host,warns", [("127.0.0.1", False), ("localhost", False),
                                        ("::1", False), ("0.0.0.0", True), ("192.0.2.7", True),
                                        ("::", True)])
def test_exposure_warning(host, warns):
    text = auth.exposure_warning(Config(host=host))
    assert bool(text) is warns
    if warns:
        assert "--cluster-secret" in text
    assert auth.exposure_warning(Config(host=host, cluster_secret=(SECRET,))) is None


def test_forgetting_a_member_takes_a_peer_signature_or_the_client_token(clock):
    both = Auth(clock=clock, cluster_secrets=(SECRET,), client_token=TOKEN)
    forget = "/nodes/forget"
    both.check(signed(clock, path=forget), "admin")  # passed on by a node
    both.check(request(path=forget, Authorization=f"Bearer {TOKEN}"), "admin")  # an operator
    assert "missing" in refused(both, request(path=forget), "admin")
    assert "wrong request signature" in refused(both, signed(clock, secret=OLD, path=forget),
                                                "admin")
    # Without a client token it is open to clients like an increment; a signature, if any,
    # must still be right.
    secret_only = Auth(clock=clock, cluster_secrets=(SECRET,))
    secret_only.check(request(path=forget), "admin")
    assert "wrong request signature" in refused(
        secret_only, signed(clock, secret=OLD, path=forget), "admin")
    token_only = Auth(clock=clock, client_token=TOKEN)
    token_only.check(request(path=forget, Authorization=f"Bearer {TOKEN}"), "admin")
    assert "missing" in refused(token_only, request(path=forget), "admin")


# -- the refusing node's warning ------------------------------------------------------------------

def refusal_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "dcounter.auth" and r.levelno == logging.WARNING]


def test_a_refused_peer_is_named_with_the_cause_at_once_then_with_backoff(clock, policy,
                                                                          caplog):
    caplog.set_level(logging.WARNING, logger="dcounter.auth")
    for _ in range(5):
        refused(policy, signed(clock, secret=OLD))
        clock.advance(1.0)
    refused(policy, request())  # unsigned: another cause, its own line
    refused(policy, signed(clock, at=clock.time() - 120))  # stale
    lines = refusal_warnings(caplog)
    assert lines == [
        "refused localhost:9000 (from 127.0.0.1) on /nodes/join: its request is signed with "
        "another secret: do the nodes share --cluster-secret?",
        "refused localhost:9000 (from 127.0.0.1) on /nodes/join: its request carries no valid "
        "signature (missing request signature (X-Dcounter-Timestamp)); start it with this "
        "node's --cluster-secret",
        "refused localhost:9000 (from 127.0.0.1) on /nodes/join: request signature is stale: "
        "its timestamp is +120.0s from this node's clock (allowed 30s): are the two machines' "
        "clocks within --max-clock-skew?"]
    clock.advance(60.0)
    refused(policy, signed(clock, secret=OLD))
    refused(policy, signed(clock, secret=OLD, body=b'{"node_id":"other:1"}'))
    assert len(refusal_warnings(caplog)) == 5  # a minute later, and another sender at once


def test_a_sender_without_a_node_id_is_named_by_its_address(clock, policy, caplog):
    caplog.set_level(logging.WARNING, logger="dcounter.auth")
    refused(policy, request(body=b"not json"))
    assert refusal_warnings(caplog)[0].startswith("refused 127.0.0.1 on /nodes/join: ")
