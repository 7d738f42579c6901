"""How `dcounter-node` logs: `--log-format json` writes one JSON object a line (time, level,
logger, message, and the traceback's text when there is one); urllib3's per-connection DEBUG
lines are kept out; a bad format is refused at start."""

import io
import json
import logging
import sys
import threading

import pytest

from dcounter import cli


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    urllib3_level = logging.getLogger("urllib3").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("urllib3").setLevel(urllib3_level)


def logged(monkeypatch, log_format: str, emit) -> str:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    cli.setup_logging("DEBUG", log_format)
    emit()
    return stream.getvalue()


def test_json_lines_carry_time_level_logger_message_and_the_traceback(monkeypatch,
                                                                       restore_logging):
    def emit():
        logging.getLogger("dcounter.node").warning("peer %s unreachable:\nsecond line", "p:1")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("dcounter.node").exception("heartbeat step failed; continuing")
    lines = logged(monkeypatch, "json", emit).splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "WARNING" and first["logger"] == "dcounter.node"
    assert first["message"] == "peer p:1 unreachable:\nsecond line"
    assert first["time"].endswith("+00:00") and "exc_info" not in first
    assert second["level"] == "ERROR"
    assert "Traceback" in second["exc_info"] and "RuntimeError: boom" in second["exc_info"]


def test_urllib3_debug_lines_are_dropped_but_its_warnings_kept(monkeypatch, restore_logging):
    def emit():
        logging.getLogger("urllib3.connectionpool").debug("Starting new HTTP connection (1)")
        logging.getLogger("urllib3.connectionpool").warning("Connection pool is full")
        logging.getLogger("dcounter.node").debug("join p:1 failed")
    text = logged(monkeypatch, "text", emit)
    assert "Starting new HTTP connection" not in text
    assert "Connection pool is full" in text and "join p:1 failed" in text


@pytest.mark.parametrize("argv,environ", [
    (["--log-format", "xml"], {}), ([], {"DCOUNTER_LOG_FORMAT": "yaml"})])
def test_an_unknown_log_format_is_refused(capsys, argv, environ):
    stop = threading.Event()
    stop.set()
    assert cli.main(["--port", "0", "--in-memory"] + argv, environ=environ,
                    stop_event=stop) == 2
    err = capsys.readouterr().err
    assert "must be 'text' or 'json'" in err
    assert ("DCOUNTER_LOG_FORMAT" if environ else "--log-format") in err
