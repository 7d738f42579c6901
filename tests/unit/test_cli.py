"""`dcounter-node`'s start-up errors, through `cli.main(argv, environ=...)` in-process: every
refusal is one line on stderr and exit 2, before anything is bound or created."""

import inspect
import re
import threading

import pytest

from dcounter import cli, client


def start(capsys, argv, environ):
    """(exit code, stderr) of `dcounter-node`. A node that does start (a refusal that did not
    happen) stops at once: the stop event is already set."""
    stop = threading.Event()
    stop.set()
    code = cli.main(argv, environ=environ, stop_event=stop)
    return code, capsys.readouterr().err


def assert_one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dcounter-node: error: "), err
    return lines[0]


@pytest.mark.parametrize("variable,value,named", [
    ("DCOUNTER_HEARTBEAT_INTERVAL", "0", "DCOUNTER_HEARTBEAT_INTERVAL must be a positive"),
    ("DCOUNTER_PORT", "70000", "DCOUNTER_PORT must be between 0 and 65535"),
    ("DCOUNTER_MAX_BODY", "0", "DCOUNTER_MAX_BODY must be a positive integer"),
    ("DCOUNTER_SYNC", "sometimes", "DCOUNTER_SYNC must be 'full' or 'normal'"),
    ("DCOUNTER_PEER_TIMEOUT", "1", "DCOUNTER_PEER_TIMEOUT must be greater than "
                                   "--heartbeat-interval"),
])
def test_a_range_error_from_the_environment_names_the_variable(capsys, tmp_path, variable, value,
                                                               named):
    argv = {"DCOUNTER_PORT": ["--in-memory"],
            "DCOUNTER_SYNC": ["--port", "0", "--data-dir", str(tmp_path / "d")]}.get(
        variable, ["--port", "0", "--in-memory"])
    code, err = start(capsys, argv, {variable: value})
    line = assert_one_line(err)
    assert code == 2
    assert named in line
    assert "--" + variable[len("DCOUNTER_"):].lower().replace("_", "-") + " " not in line


def test_a_range_error_from_a_flag_names_the_flag(capsys):
    code, err = start(capsys, ["--port", "0", "--in-memory", "--heartbeat-interval", "0"],
                      {"DCOUNTER_HEARTBEAT_INTERVAL": "1"})
    assert code == 2
    assert "--heartbeat-interval must be a positive" in assert_one_line(err)


def test_both_sources_are_named_in_a_relation(capsys):
    code, err = start(capsys, ["--port", "0", "--in-memory", "--peer-timeout", "1"],
                      {"DCOUNTER_HEARTBEAT_INTERVAL": "3"})
    assert code == 2
    assert "--peer-timeout must be greater than DCOUNTER_HEARTBEAT_INTERVAL" in \
        assert_one_line(err)


@pytest.mark.parametrize("variable", ["DCOUNTER_PORTT", "DCOUNTER_INMEMORY", "DCOUNTER_",
                                      "DCOUNTER_port"])
def test_an_unknown_dcounter_variable_is_refused_with_the_valid_names(capsys, variable):
    code, err = start(capsys, ["--port", "0", "--in-memory"], {variable: "1"})
    line = assert_one_line(err)
    assert code == 2
    assert f"unknown environment variable {variable}" in line
    for valid in ("DCOUNTER_PORT", "DCOUNTER_IN_MEMORY", "DCOUNTER_CLUSTER_SECRET",
                  "DCOUNTER_NODE"):
        assert valid in line


def test_the_commands_variables_and_other_programs_variables_are_accepted():
    environ = {"DCOUNTER_NODE": "localhost:9", "PATH": "/bin",
               "XDCOUNTER_PORTT": "1", "dcounter_portt": "1"}
    assert cli.config_from_args(["--port", "0", "--in-memory"], environ=environ).port == 0


def test_every_variable_the_command_reads_is_a_valid_name():
    read = set(re.findall(r"DCOUNTER_[A-Z_]+", inspect.getsource(client)))
    assert read and read <= cli.valid_variables()


@pytest.mark.parametrize("argv,environ,words", [
    (["--in-memory", "--data-dir", "d"], {}, "--in-memory and --data-dir"),
    (["--in-memory", "--sync", "normal"], {}, "--in-memory and --sync"),
    (["--data-dir", "d"], {"DCOUNTER_IN_MEMORY": "1"}, "DCOUNTER_IN_MEMORY and --data-dir"),
    (["--in-memory"], {"DCOUNTER_SYNC": "full"}, "--in-memory and DCOUNTER_SYNC"),
])
def test_in_memory_with_a_data_directory_or_sync_is_refused(capsys, tmp_path, argv, environ,
                                                            words):
    argv = [a if a != "d" else str(tmp_path / "d") for a in argv]
    code, err = start(capsys, ["--port", "0", *argv], environ)
    assert code == 2
    assert words in assert_one_line(err)
    assert not (tmp_path / "d").exists()


def test_in_memory_switched_off_leaves_the_data_directory_usable():
    cfg = cli.config_from_args(["--data-dir", "d", "--port", "0"],
                               environ={"DCOUNTER_IN_MEMORY": "0"})
    assert not cfg.in_memory and cfg.data_dir == "d"
