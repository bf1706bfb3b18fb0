"""Two requests at once, in the one interleaving that matters, every time: the first runs until a
service function has returned inside its transaction, which then stays open while the second is
sent. A barrier only sometimes hits that window; this always does, and a second request that
arrives late (a loaded machine) gets the answer a waiting one would."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

HOLD_SECONDS = 0.5


def while_held(
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    function: str,
    first: Callable[[], httpx.Response],
    second: Callable[[], httpx.Response],
) -> tuple[httpx.Response, httpx.Response]:
    """``first`` runs until ``module.function`` returned, its transaction then held open
    ``HOLD_SECONDS`` while ``second`` is sent; both answers. ``module.function`` is itself again
    afterwards."""
    real, inside = getattr(module, function), threading.Event()

    def holding(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if not inside.is_set():  # the first call only
            inside.set()
            time.sleep(HOLD_SECONDS)
        return result

    answers: dict[str, httpx.Response] = {}
    with monkeypatch.context() as patched:
        patched.setattr(module, function, holding)
        thread = threading.Thread(target=lambda: answers.setdefault("first", first()))
        thread.start()
        assert inside.wait(30)
        answers["second"] = second()
        thread.join(30)
    return answers["first"], answers["second"]
