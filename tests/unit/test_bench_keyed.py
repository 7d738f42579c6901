"""The benchmark's keyed runs: the wrk script's keys, the rows' names, the forwarded share."""

from dcounter import validation
from dcounter.bench import build_parser
from dcounter.benchload import idempotency_key, key_prefix, wrk_script
from dcounter.benchprocs import Scrape, config_name
from dcounter.benchreport import forwarded_notes, forwarded_share, render_compact, render_table
from tests.unit.test_bench_report import MEMORY, ROWS, row


def test_only_the_keyed_wrk_script_builds_each_request_with_its_own_key():
    plain, keyed = wrk_script(False), wrk_script(True)
    # A script without request() lets wrk send one prebuilt request over and over.
    assert "function request()" not in plain and "Idempotency-Key" not in plain
    assert "KEYED_REQUEST" not in plain and "KEYED_REQUEST" not in keyed
    assert "function request()" in keyed
    assert 'thread:set("thread_id", threads)' in keyed
    assert "key_prefix = args[5]" in keyed and "key_prefix = args[5]" not in plain
    assert '"%s-%d-%d", key_prefix, thread_id or 0, keyed_sent' in keyed
    # init() sets the prefix request() reads: the local must be declared before init().
    assert keyed.index("local key_prefix") < keyed.index("function init(args)")
    # Both keep the deadline, the budget and the report.
    for text in (plain, keyed):
        assert "function delay()" in text and "DCBENCH" in text
        assert "QUANTILES" not in text


def test_every_key_is_valid_and_unique_per_thread_and_request():
    prefix = key_prefix()
    assert prefix != key_prefix()
    keys = {idempotency_key(prefix, thread, n) for thread in (1, 2) for n in (1, 2, 10)}
    assert len(keys) == 6
    for key in keys:
        assert validation.idempotency_key(key) == key
    assert idempotency_key("ab12", 3, 7) == "ab12-3-7"


def test_keyed_rows_are_named_after_their_cluster():
    assert config_name(3, True) == "3 nodes, durable"
    assert config_name(3, True, keyed=True) == "3 nodes, durable, keyed"
    assert config_name(1, False, keyed=True) == "1 node, in-memory, keyed"


def test_the_keyed_flag_is_off_unless_given():
    assert build_parser().parse_args([]).keyed is False
    assert build_parser().parse_args(["--keyed"]).keyed is True


def test_the_forwarded_share_counts_the_metric_moved_over_the_acknowledged():
    moved = Scrape(forwarded=700.0) - Scrape(forwarded=34.0)
    assert moved.forwarded == 666.0
    assert forwarded_share(moved.forwarded, 1000) == 0.666
    assert forwarded_share(0.0, 0) is None


KEYED = ROWS + [
    row("5 nodes, in-memory, keyed", 5, 6021.0, keyed=True, forwarded_share=0.8012,
        ratio_to_one_node=0.8, converge_ms_median=73, converge_ms_max=76,
        delivery_p99_ms=80.0, delivery_p99_ms_max=81, delivered_within_100ms=0.999,
        replication_p99_ms=96, replication_samples=250),
    row("1 node, durable, keyed", 1, 5900.0, keyed=True, forwarded_share=0.0),
]


def test_the_keyed_rows_and_their_forwarded_share_fit_the_terminal_table():
    text = render_compact(KEYED, MEMORY)
    assert max(len(line) for line in text.splitlines()) <= 100, text
    lines = text.splitlines()
    assert lines[5].split()[:5] == ["5", "nodes,", "in-memory,", "keyed", "6021"]
    assert "\n5 nodes, in-memory, keyed: 80.1 % of increments forwarded to their key's home\n" \
        in text
    assert "\n1 node, durable, keyed: 0.0 % of increments forwarded to their key's home\n" in text
    assert "forwarded" not in render_compact(ROWS, MEMORY)
    # With the long names a failure's detail no longer fits in its cell: it is said below.
    assert lines[4].startswith("3 nodes, durable ") and lines[4].endswith("  NO")
    assert lines[7] == "3 nodes, durable: 2 non-2xx, 0 errors"


def test_the_markdown_table_notes_the_forwarded_share_after_it():
    text = render_table(KEYED, None)
    assert "| 5 nodes, in-memory, keyed | 6021 |" in text
    assert text.endswith("|\n\n5 nodes, in-memory, keyed: 80.1 % of increments forwarded to "
                         "their key's home\n"
                         "1 node, durable, keyed: 0.0 % of increments forwarded to their "
                         "key's home")
    assert forwarded_notes(ROWS) == []
