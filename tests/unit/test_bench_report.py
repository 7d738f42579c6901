"""The benchmark's report: a compact terminal table, the full one in Markdown, a short header."""

from dcounter.benchload import wrk_name
from dcounter.benchreport import render_compact, render_table


def row(config, nodes, rate, **changes):
    base = {"config": config, "nodes": nodes, "durable": True, "runs": 1,
            "increments_per_s": rate, "ratio_to_bare": 0.79, "ratio_to_one_node": None,
            "p50_ms": 2.3, "p99_ms": 4.7, "converge_ms_median": 3, "converge_ms_max": 3,
            "internal_per_increment": 0.0, "delivery_p99_ms": None,
            "delivery_p99_ms_max": None, "delivered_within_100ms": None,
            "replication_p99_ms": None, "replication_samples": 0, "replication_missed": 0,
            "rss_warm_mib": [32.8] * nodes, "rss_after_mib": [33.0] * nodes,
            "counts_match": True, "non2xx": 0, "errors": 0}
    return {**base, **changes}


ROWS = [
    row("bare", 1, 8105.0, ratio_to_bare=1.0, rss_warm_mib=[None], rss_after_mib=[None]),
    row("1 node, durable", 1, 6629.0),
    row("5 nodes, in-memory", 5, 7504.0, ratio_to_one_node=0.93, converge_ms_median=73,
        converge_ms_max=76, internal_per_increment=0.078, delivery_p99_ms=74.2,
        delivery_p99_ms_max=75, delivered_within_100ms=0.999, replication_p99_ms=96,
        replication_samples=250, rss_warm_mib=[32.8, 33.0, 32.9, 32.9, 33.0],
        rss_after_mib=[33.6, 33.8, 33.7, 33.7, 33.6]),
    row("3 nodes, durable", 3, 5163.0, counts_match=False, converge_ms_max=None, non2xx=2),
]
MEMORY = {"cluster": "3 nodes, durable", "increments_per_step": 10_000,
          "rss_warm_kib": [34201.6, 34406.4, 34304.0], "rss_first_kib": [34508.8] * 3,
          "rss_second_kib": [34611.2] * 3, "growth_second_kib": [102.4, 122.9, 133.1]}


def test_the_terminal_table_fits_a_terminal():
    text = render_compact(ROWS, MEMORY)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100, text
    assert lines[0].split()[:3] == ["config", "inc/s", "vs"]
    cells = {line[:20].strip(): line[20:].split() for line in lines[1:5]}
    assert cells["bare"][:2] == ["8105", "1.00"]
    assert cells["5 nodes, in-memory"] == ["7504", "0.79", "0.93", "2.3", "4.7", "73", "74",
                                           "yes"]
    assert cells["3 nodes, durable"][5:8] == ["never", "-", "NO:"]
    assert lines[4].endswith("NO: 2 non-2xx, 0 errors")
    assert "after 20,000 33.8 33.8 33.8\n  growth over the second 10,000: +0.10, +0.12, +0.13" \
        in text


def test_the_markdown_table_keeps_every_column():
    text = render_table(ROWS, MEMORY)
    assert text.startswith("| config | inc/s | vs bare |")
    assert "RSS MB warm → after" in text and "internal req/inc" in text


def test_the_header_names_wrk_without_its_banner():
    assert wrk_name("wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer\n"
                    "Usage: wrk <options> <url>") == "wrk debian/4.1.0-3+b2"
    assert wrk_name("wrk 4.1.0 [epoll] Copyright (C) 2012 Will Glozer") == "wrk 4.1.0"
    assert wrk_name("") is None
