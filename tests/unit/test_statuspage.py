"""The status page's rendering (pure): a status dict in, what a reader sees out."""

import pytest

from dcounter import chart, health, statuspage
from tests.page import Page

ME, B, C, D = "me:7000", "b:7001", "c:7002", "d:7003"


def status(**changes) -> dict:
    """A status as GET /status gives it, with the members view: B alive, C failed."""
    base = {
        "node_id": ME, "cluster": "default", "origin": "o1", "durable": True,
        "ready": {"ready": True, "reason": "caught up with a peer at least once"},
        "counters": {"apples": 3},
        "peers": {B: {"last_seen_seconds": 0.4}},
        "replication": {B: {"backlog": 0, "state": "idle", "attempts": 0, "dropped": 0}},
        "candidates": {C: {"attempts": 4, "trying": False, "next_try_in": 1.25,
                           "last_error": f"{C}: ConnectionError"}},
        "recent_contacts": [],
        "members": {
            B: {"state": "alive", "last_heard_seconds": 0.4, "caught_up": True, "backlog": 0,
                "error": None},
            C: {"state": "failed", "last_heard_seconds": 42.0, "caught_up": False,
                "backlog": 12, "error": "connection refused"},
        },
        "summary": "2 of 3 members up, 1 failed",
        "history": {"interval": 5.0, "size": 120, "increments_per_second": [],
                    "replicated_per_second": [], "replication_delay_p99_ms": []},
    }
    base.update(changes)
    return base


def page(state: dict) -> Page:
    return Page(statuspage.render(state, "nonce"))


def members(p: Page) -> dict[str, list[str]]:
    return {row[0]: row for row in p.tables["members"]}


def test_members_show_state_last_heard_caught_up_backlog_and_error_at_the_top():
    p = page(status())
    rows = members(p)
    assert rows[B] == [B, "alive", "0.4 s ago", "yes", "0", ""]
    assert rows[C] == [C, "failed", "42 s ago", "-", "12", "connection refused"]
    markup = statuspage.render(status(), "nonce")
    # At the top: before the chart and every other table.
    assert markup.index('id="summary"') < markup.index('id="members"') < markup.index(
        'id="history"') < markup.index('id="counters"')


def test_state_colour_comes_with_words():
    p = page(status())
    markup = statuspage.render(status(), "nonce")
    assert 'class="state failed">failed<' in markup and 'class="state alive">alive<' in markup
    assert p.ids["summary"]["text"] == "2 of 3 members up, 1 failed"
    assert p.ids["summary"]["class"] == "summary bad"


def test_the_badge_is_amber_and_says_so_while_a_member_is_failed():
    p = page(status())
    assert p.ids["ready"]["class"] == "badge warn"
    assert p.ids["ready"]["text"] == "ready, 1 member failed"


def test_the_badge_counts_suspect_members_too():
    state = status(members={B: {"state": "suspect", "last_heard_seconds": 4.0,
                                "caught_up": True, "backlog": 0, "error": None},
                            C: {"state": "failed", "last_heard_seconds": None,
                                "caught_up": None, "backlog": 0, "error": None},
                            D: {"state": "failed", "last_heard_seconds": None,
                                "caught_up": None, "backlog": 0, "error": None}},
                   summary="1 of 4 members up")
    p = page(state)
    assert p.ids["ready"]["text"] == "ready, 2 members failed, 1 suspect"
    assert p.ids["ready"]["class"] == "badge warn"
    assert members(p)[C][2] == "never"


def test_the_badge_is_green_only_when_every_member_is_alive_or_left():
    state = status(members={B: {"state": "alive", "last_heard_seconds": 0.1,
                                "caught_up": True, "backlog": 0, "error": None},
                            C: {"state": "left", "last_heard_seconds": 30.0,
                                "caught_up": None, "backlog": 0, "error": None}},
                   summary="2 of 2 members up, all caught up")
    p = page(state)
    assert (p.ids["ready"]["class"], p.ids["ready"]["text"]) == ("badge ok", "ready")
    assert p.ids["summary"]["class"] == "summary ok"
    assert members(p)[C][1] == "left"


def test_a_node_that_is_not_ready_is_red_with_its_reason():
    p = page(status(ready={"ready": False, "reason": "no anti-entropy round with a peer yet"}))
    assert (p.ids["ready"]["class"], p.ids["ready"]["text"]) == ("badge bad", "not ready")
    assert p.ids["ready-reason"]["text"] == "no anti-entropy round with a peer yet"


def test_a_suspect_member_makes_the_summary_amber():
    state = status(members={B: {"state": "suspect", "last_heard_seconds": 4.0,
                                "caught_up": True, "backlog": 0, "error": None}})
    assert page(state).ids["summary"]["class"] == "summary warn"


def test_without_a_members_view_one_is_derived_from_peers_and_candidates():
    state = status()
    del state["members"], state["summary"]
    p = page(state)
    rows = members(p)
    assert rows[B][:2] == [B, "alive"]
    assert rows[C][:3] == [C, "failed", "-"]  # when it was last heard is not in this status
    assert rows[C][5] == "could not connect (refused, or no route to the host)"
    assert p.ids["summary"]["text"] == "2 of 3 members up, 1 failed"
    assert p.ids["ready"]["text"] == "ready, 1 member failed"
    # A candidate not tried yet (learned second-hand a moment ago) is nothing against anyone.
    state["candidates"] = {C: {"attempts": 0, "trying": True, "next_try_in": None,
                               "last_error": None}}
    p = page(state)
    assert list(members(p)) == [B]
    assert p.ids["summary"]["text"] == "2 of 2 members up, all caught up"


def test_errors_are_words_not_exception_class_names():
    assert health.describe_error("c:7002: ConnectionError", "c:7002") == (
        "could not connect (refused, or no route to the host)")
    assert health.describe_error("c:7002: ReadTimeout", "b:7001").startswith(
        "c:7002: connected, but no answer within the request timeout")
    assert health.describe_error("SSLError").startswith("TLS failed")
    assert health.describe_error("refused: another cluster", C) == "refused: another cluster"
    assert health.describe_error(None) == ""
    p = page(status())
    markup = statuspage.render(status(), "nonce")
    assert "ConnectionError" not in markup
    assert p.tables["candidates"] == [[C, "4", "in 1.2 s",
                                       "could not connect (refused, or no route to the host)"]]


def test_a_candidate_being_tried_says_so():
    state = status(candidates={C: {"attempts": 2, "trying": True, "next_try_in": None,
                                   "last_error": f"{C}: ReadTimeout"}})
    row = page(state).tables["candidates"][0]
    assert row[:3] == [C, "2", "trying now"]


def test_join_attempts_show_the_latest_outcome_per_peer():
    attempts = [
        {"age_seconds": 50.0, "peer": B, "ok": False, "detail": f"{B}: ConnectionError"},
        {"age_seconds": 40.0, "peer": B, "ok": False, "detail": f"{B}: ConnectionError"},
        {"age_seconds": 30.0, "peer": B, "ok": True, "detail": "joined"},
        {"age_seconds": 20.0, "peer": C, "ok": False, "detail": f"{C}: ConnectionError"},
        {"age_seconds": 10.0, "peer": C, "ok": False, "detail": f"{C}: ReadTimeout"},
    ]
    rows = page(status(recent_contacts=attempts)).tables["attempts"]
    assert [(row[1], row[2]) for row in rows] == [(C, "failed"), (B, "joined")]
    assert rows[0][0] == "10 s ago" and rows[0][3].startswith("connected, but no answer")


def test_a_failed_join_is_not_shown_once_the_peer_is_alive_again():
    # B's join failed, then B reached us itself: a healthy peer, no red row.
    attempts = [{"age_seconds": 30.0, "peer": B, "ok": False, "detail": f"{B}: ConnectionError"}]
    assert page(status(recent_contacts=attempts)).tables["attempts"] == [
        ["None yet."]]


def test_the_chart_draws_the_history_as_inline_svg():
    history = {"interval": 5.0, "size": 120,
               "increments_per_second": [1.0, 2.0, 4.0],
               "replicated_per_second": [0.0, None, 3.0],
               "replication_delay_p99_ms": [None, 12.5, 20.0]}
    markup = statuspage.render(status(history=history), "nonce")
    section = markup[markup.index('<section id="history"'):]
    section = section[:section.index("</section>")]
    assert section.count("<svg") == 2
    assert 'polyline class="local"' in section and 'polyline class="delay"' in section
    assert 'circle class="replicated"' in section  # two lone samples around a gap
    assert "Last 10 min" in section
    p = page(status(history=history))
    assert p.ids["rate-now"]["text"] == "now 4 /s acknowledged here, 3 /s from peers"
    assert p.ids["delay-now"]["text"] == "now 20 ms"


def test_an_empty_history_says_there_is_no_data_yet():
    markup = statuspage.render(status(), "nonce")
    assert markup.count("no data yet") == 2 and "<polyline" not in markup
    assert "No history in this status." in statuspage.render(status(history=None), "nonce")


def test_what_came_from_outside_is_escaped():
    evil = '<img src=x onerror="alert(1)">'
    state = status(members={evil: {"state": "failed", "last_heard_seconds": None,
                                   "caught_up": None, "backlog": 0, "error": evil}},
                   summary=evil, counters={evil: 1})
    markup = statuspage.render(state, "nonce")
    assert "<img" not in markup
    p = Page(markup)
    assert p.ids["summary"]["text"] == evil
    assert members(p)[evil][5] == evil


def test_the_page_loads_nothing_from_elsewhere():
    history = {"interval": 5.0, "size": 120, "increments_per_second": [1.0, 2.0],
               "replicated_per_second": [1.0, 2.0], "replication_delay_p99_ms": [3.0, 4.0]}
    markup = statuspage.render(status(history=history), "nonce")
    assert "src=" not in markup and "http://" not in markup and "https://" not in markup
    assert "style=" not in markup  # the policy admits only the nonce'd style element
    assert "innerHTML" not in markup


@pytest.mark.parametrize("value, top", [(0, 1.0), (0.3, 0.5), (1, 1.0), (1.01, 2.0),
                                        (7, 10.0), (1234, 2000.0), (None, 1.0)])
def test_the_scale_rounds_up_to_one_two_or_five(value, top):
    assert chart.nice_ceiling(value) == pytest.approx(top)


def test_the_newest_sample_is_at_the_right_edge_and_gaps_split_the_line():
    runs = chart.segments([1.0, None, 2.0, 2.0], size=120, top=2.0)
    assert len(runs) == 2 and len(runs[0]) == 1 and len(runs[1]) == 2
    assert runs[1][-1] == (chart.X1, chart.Y0)


def test_a_derived_summary_counts_a_suspect_member_as_up_and_says_it_is_suspect():
    view = [{"id": B, "state": "suspect", "last_heard": 4.0, "caught_up": True, "backlog": 0,
             "error": ""},
            {"id": C, "state": "left", "last_heard": 9.0, "caught_up": None, "backlog": 0,
             "error": ""}]
    assert health.summary({}, view) == "2 of 2 members up, 1 suspect"
