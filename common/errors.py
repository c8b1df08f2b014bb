"""Errors a person can act on: one line naming the file and the problem, exit code 2."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

INPUT_ERROR_EXIT = 2


class InputError(Exception):
    """Bad user input. ``str(err)`` is the one-line message: '<file>: <problem>[. hint]'."""

    def __init__(self, path: object, problem: str, hint: str | None = None) -> None:
        msg = f"{path}: {problem}" if path is not None else problem
        if hint:
            msg = f"{msg}. {hint}"
        super().__init__(msg.replace("\n", " "))


class BudgetExceeded(Exception):  # noqa: N818 (the name users see in messages)
    """A site refused to train because the plan would exceed its own privacy budget."""


def cli_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a CLI ``main``: InputError -> 'error: ...' on stderr and exit 2, no traceback."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(INPUT_ERROR_EXIT)
        except BudgetExceeded as err:
            print(f"refused: {err}", file=sys.stderr)
            sys.exit(3)
        except KeyboardInterrupt:
            logging.getLogger(__name__).warning("interrupted")
            sys.exit(130)

    return wrapper
