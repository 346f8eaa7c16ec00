"""JSON logs: one parseable object per line with the extras a caller attaches."""

import json
import logging

import pytest

from talkingface.logs import JsonFormatter, configure_logging


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_record_becomes_one_json_object():
    formatter = JsonFormatter(service="motion")
    record = logging.makeLogRecord(
        {"name": "talkingface.x", "levelname": "INFO", "msg": "loaded %d", "args": (3,)}
    )
    record.frames = 250
    entry = json.loads(formatter.format(record))
    assert entry["msg"] == "loaded 3"
    assert entry["service"] == "motion" and entry["level"] == "INFO"
    assert entry["frames"] == 250
    assert entry["ts"].endswith("+00:00")


def test_exceptions_are_kept_on_one_line(capsys, restore_root_logger):
    configure_logging("broker", "DEBUG", "json")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("talkingface.test").exception("failed", extra={"job_id": "j1"})
    lines = capsys.readouterr().out.strip().splitlines()
    entry = json.loads(lines[-1])
    assert entry["job_id"] == "j1" and "RuntimeError: boom" in entry["exc"]
    assert entry["level"] == "ERROR"


def test_one_shot_commands_log_to_stderr(capsys, restore_root_logger):
    """`train` / `eval` / `judge` keep stdout for their result (`--json`); services log to
    stdout."""
    configure_logging("eval", "INFO", "json", stderr=True)
    logging.getLogger("talkingface.test").info("to stderr")
    captured = capsys.readouterr()
    assert captured.out == "" and json.loads(captured.err)["msg"] == "to stderr"
    configure_logging("broker", "INFO", "json")
    logging.getLogger("talkingface.test").info("to stdout")
    captured = capsys.readouterr()
    assert captured.err == "" and json.loads(captured.out)["msg"] == "to stdout"
