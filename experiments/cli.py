"""How every command line of the experiments ends.

* A user error (a bad setting, a missing or damaged file, a work directory that cannot be
  used) is one line on stderr, ``error: ...`` naming the setting or file, and exit code 2;
  argparse's errors too (one line, no usage block).
* A training failure (a non-finite loss) is one line and exit code 1.
* Ctrl-C is one line saying how to resume (the same command) and exit code 130.
* ``--debug`` (any position) or ``DGCNN_DEBUG=1`` shows the traceback instead, for bug
  reports.

On an error the process leaves with ``os._exit`` after flushing, so that no background
thread (orbax's checkpoint threads) prints after the one line.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import traceback
from collections.abc import Callable

__all__ = ["Parser", "run", "call", "USER_ERRORS", "debug_requested"]


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``PROG: error: ...``), exit code 2."""

    def __init__(self, description: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(description=description, **kwargs)

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2)


def _user_errors() -> tuple[type[BaseException], ...]:
    from dgcnn_jax.data import ChecksumError
    from experiments.checkpoints import CheckpointError
    from experiments.training import WorkdirError

    return (ValueError, OSError, json.JSONDecodeError, ChecksumError, CheckpointError,
            WorkdirError)


USER_ERRORS = "ValueError, OSError (a missing, unreadable or unwritable file), "\
              "ChecksumError, CheckpointError, WorkdirError"
"""What counts as a user error (documentation: the classes are imported lazily)."""


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("DGCNN_DEBUG", "") not in ("", "0")


def _leave(code: int, line: str):
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    os._exit(code)


def call(main: Callable, module: str, argv: list[str], *,
         on_interrupt: str = "the last checkpoint is kept; resume with the same command"
         ) -> tuple[int, str | None]:
    """Call ``main(argv)`` (``--debug`` taken out) and say how the command ends:
    ``(exit code, the one line for stderr or None)``. With ``--debug`` the traceback
    propagates instead."""
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    from experiments.training import TrainingError

    try:
        main(argv)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        return 130, (f"interrupted: {on_interrupt}: python -m {module} {shlex.join(argv)}"
                     .rstrip())
    except TrainingError as err:
        if debug:
            raise
        return 1, f"error: {err}"
    except _user_errors() as err:
        if debug:
            raise
        return 2, f"error: {' '.join(str(err).split()) or type(err).__name__}"
    except SystemExit as err:  # argparse (its one line is printed) or an explicit exit
        return (err.code if isinstance(err.code, int) else 0 if err.code is None else 1), None
    return 0, None


def run(main: Callable, module: str, *, on_interrupt: str = "the last checkpoint is kept; "
        "resume with the same command", argv: list[str] | None = None) -> None:
    """Call ``main(argv)`` (argv without ``--debug``) and end as this module says."""
    argv = list(sys.argv[1:] if argv is None else argv)
    code, line = call(main, module, argv, on_interrupt=on_interrupt)
    if line is not None:
        _leave(code, line)
    if code:
        sys.stdout.flush()
        sys.stderr.flush()
        raise SystemExit(code)
