"""The command-line protocol every rys command shares.

rys-sweep, rys-path, rys-surgery, rys-eval, rys-plot and ``python -m probes`` all answer the same way,
so scripts and people can rely on it:

* exit 0: done; 1: the work failed (a server that would not start, lm-eval crashed, disk full);
  2: bad input (arguments, files, paths), found before anything is created; 130: interrupted;
* an error is one line on stderr, ``PROG: error: ...``; no traceback;
* output piped into ``head`` ends quietly;
* options are never abbreviated (argparse's prefix matching would turn layer-scan's habit
  ``--probe math`` into ``--probes math`` silently), and every command has ``--version``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Callable, NoReturn, Sequence

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input: one line, exit 2."""


class Failure(Exception):
    """The work itself failed: one line, exit 1."""


def version() -> str:
    """``rys X.Y.Z`` of the installed package (or the source tree's pyproject when not installed)."""
    from importlib import metadata

    try:
        return f"rys {metadata.version('rys')}"
    except metadata.PackageNotFoundError:
        return "rys (not installed)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the shared protocol: no abbreviations, errors raise UsageError (so the caller
    prints one line and exits 2), and ``--version``."""

    def __init__(self, *args, add_version: bool = True, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        if add_version:
            self.add_argument("--version", action="version", version=version())

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def run(prog: str, main: Callable[[Sequence[str]], int], argv: Sequence[str] | None = None, *,
        usage_errors: tuple[type[BaseException], ...] = (),
        failures: tuple[type[BaseException], ...] = (),
        interrupted: str = "interrupted") -> int:
    """Call ``main(argv)`` under the protocol; ``usage_errors``/``failures`` are the command's own
    exception types that mean exit 2 / exit 1."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(args)
    except (UsageError, *usage_errors) as exc:
        return fail(prog, exc, EXIT_USAGE)
    except (Failure, *failures) as exc:
        return fail(prog, exc, EXIT_FAILURE)
    except BrokenPipeError:
        # the reader (e.g. `| head`) is gone: stop quietly; stdout must not be flushed again
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED


def fail(prog: str, message: object, code: int = EXIT_USAGE) -> int:
    """Print the one error line and return ``code``."""
    text = " ".join(str(message).split("\n")).strip() or type(message).__name__
    print(f"{prog}: error: {text}", file=sys.stderr)
    return code
