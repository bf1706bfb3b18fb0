"""Warm scratch files made prompt for a test: filled at once, whatever the free space of the
machine running the suite, and at normal priority. At ``SCHED_IDLE``, on a machine the suite's
other processes keep busy, a filler's interpreter alone took more than 30 s to start (CI). The
delay, the reserve and the priority have tests of their own (tests/data_server/test_warm_files.py)."""

from __future__ import annotations

from typing import Any

from data_server import warm_files

PROMPT: dict[str, Any] = {
    "FILL_DELAY_SECONDS": 0.0,
    "FREE_BYTES_KEPT": 0,
    "FREE_SHARE_KEPT": 0.0,
    "_make_idle": lambda pid: None,
}


def make_prompt(set_attribute: Any = setattr) -> None:
    """``set_attribute`` is a test's ``monkeypatch.setattr``, or plain ``setattr`` in a server
    process a test starts (which ends with the test)."""
    for name, value in PROMPT.items():
        set_attribute(warm_files, name, value)
