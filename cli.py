"""The command-line protocol every rys command shares.

rys-sweep, rys-path, rys-surgery, rys-eval, rys-plot and rys-probes all answer the same way,
so scripts and people can rely on it:

* exit 0: done; 1: the work failed (a server that would not start, lm-eval crashed, disk full);
  2: bad input (arguments, files, paths), found before anything is created; 130: interrupted;
* an error is one line on stderr, ``PROG: error: ...``; no traceback;
* output piped into ``head`` ends quietly;
* options are never abbreviated (argparse's prefix matching would turn layer-scan's habit
  ``--probe math`` into ``--probes math`` silently), and every command has ``--version``.

Manual: docs/install.md, "One protocol for every command".
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import shlex
import sys
import tempfile
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
        if message.startswith("unrecognized arguments:"):
            message += self._suggestions(message.split(":", 1)[1].split())
        raise UsageError(message)

    def _suggestions(self, unknown: Sequence[str]) -> str:
        """`` (did you mean --probes?)`` for misspelt options: abbreviations are off, so say
        what the user probably meant."""
        known = list(self._option_string_actions)
        hints = []
        for tok in unknown:
            if not tok.startswith("-"):
                continue
            name = tok.split("=", 1)[0]
            close = [k for k in known if k.startswith(name) and k != name] or \
                difflib.get_close_matches(name, known, n=1, cutoff=0.75)
            if close:
                hints.append(f"{name}: did you mean {close[0]}?")
        return f" ({'; '.join(hints)})" if hints else ""

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        argv = list(sys.argv[1:] if args is None else args)
        return super().parse_args(self.join_dashed_values(argv), namespace)

    def _all_options(self) -> set[str]:
        """Option strings of this parser and its subcommands (rys-eval run ...)."""
        out = set(self._option_string_actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    out |= set(sub._option_string_actions)
        return out

    #: options whose value is itself a command line (``--server-args "--swa-full"``)
    dashed_value_options: tuple[str, ...] = ()

    def join_dashed_values(self, argv: list[str]) -> list[str]:
        """Let a pass-through option take a value that starts with a dash, as written.

        argparse reads ``--server-args --swa-full`` as two options and fails ("expected one
        argument"); here the value is joined to its option (``--server-args=--swa-full``). The
        value runs until the next option this parser knows, so the reference project's
        ``--server-args --device Vulkan1,Vulkan2 --stride 1`` works too."""
        out: list[str] = []
        known = self._all_options()
        k = 0
        while k < len(argv):
            tok = argv[k]
            if tok in self.dashed_value_options and k + 1 < len(argv) \
                    and argv[k + 1].startswith("-") and argv[k + 1] != "--":
                j = k + 1
                value = []
                while j < len(argv) and argv[j] != "--" and (
                        j == k + 1 or argv[j].split("=", 1)[0] not in known):
                    value.append(argv[j])
                    j += 1
                out.append(f"{tok}={shlex.join(value) if len(value) > 1 else value[0]}")
                k = j
                continue
            out.append(tok)
            k += 1
        return out


def unwritable(directory: str | os.PathLike[str]) -> str | None:
    """Why nothing can be created in ``directory``, or None. A real probe (a file made and
    removed): access() says yes to root everywhere, /proc included."""
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".rys-write-check-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


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
    except BrokenPipeError:  # first: a command's usage_errors may include OSError
        # the reader (e.g. `| head`) is gone: stop quietly; stdout must not be flushed again
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except (UsageError, *usage_errors) as exc:
        return fail(prog, exc, EXIT_USAGE)
    except (Failure, *failures) as exc:
        return fail(prog, exc, EXIT_FAILURE)
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED


def fail(prog: str, message: object, code: int = EXIT_USAGE) -> int:
    """Print the one error line and return ``code``."""
    text = " ".join(str(message).split("\n")).strip() or type(message).__name__
    print(f"{prog}: error: {text}", file=sys.stderr)
    return code
