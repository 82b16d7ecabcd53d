"""The frame every command of the package runs in: arguments, logging, errors and progress.

A command's ``main()`` is ``guarded_main(prog, body)``; the frame

- sets up logging once (:func:`setup_logging`): to stderr, secrets masked (:mod:`.redact`),
  debug level with ``-v`` or ``SM_SSH_DEBUG=true``; laptop commands in debug mode also append
  to ``~/.sm-ssh/debug.log`` (for IDEs that run a command as ssh's ProxyCommand and hide its
  stderr);
- runs ``body(command)``, where :class:`Command` parses the arguments with a
  :class:`OneLineParser` (usage errors are one line, exit 2) and turns ``-v`` on;
- maps every failure to one line on stderr, ``<prog>: <what to do>``, and the exit code of its
  type (:mod:`.errors`: 2 usage, 3 resolution, 4 AWS, 127 a missing tool, 1 otherwise; 130
  on Ctrl-C); the traceback is logged in debug mode only.

:func:`add_general_options` declares ``-v``, ``--profile`` and ``--region`` once for every
command; :func:`progress` is the one way commands tell the user how far they got (stderr,
flushed: stdout may be an ssh stream). This module stays light: containers run their commands
in it before boto3 is installed.
"""
from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, NoReturn

from sagemaker_ssh_helper import aws, redact
from sagemaker_ssh_helper.errors import SSHHelperError, UsageError

logger = logging.getLogger(__name__)

INTERRUPTED = 130  # 128 + SIGINT, as shells report it
DEBUG_LOG_MAX_BYTES = 1024 * 1024  # then debug.log becomes debug.log.1 (one old file kept)
ERROR_LINE_LIMIT = 800


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are raised as one-line :class:`UsageError` (exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} -h`)")


def add_general_options(parser: argparse.ArgumentParser, top_level: bool = True,
                        aws: bool = True) -> None:
    """``-v/--verbose``, and ``--profile``/``--region`` unless ``aws`` is False.

    Declared on the top-level parser (``top_level``) and again on each subparser, so they are
    accepted before or after the subcommand; a subparser's defaults do not override the
    top-level values.
    """
    default = None if top_level else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="store_true",
                        default=False if top_level else argparse.SUPPRESS,
                        help="debug logging and tracebacks (also SM_SSH_DEBUG=true)")
    if aws:
        parser.add_argument("--profile", default=default,
                            help="AWS profile (default: AWS_PROFILE)")
        parser.add_argument("--region", default=default,
                            help="AWS region (default: AWS_REGION / the profile's)")


def debug_requested(verbose: bool = False) -> bool:
    """Debug mode: ``-v`` given, or ``SM_SSH_DEBUG=true`` in the environment."""
    return verbose or os.environ.get("SM_SSH_DEBUG", "").lower() == "true"


def one_line(error: BaseException, limit: int = ERROR_LINE_LIMIT) -> str:
    """An error as one line (service messages can hold newlines or HTML)."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def progress(message: str) -> None:
    """Tell the user how far a command got: one line on stderr, at once."""
    print(message, file=sys.stderr, flush=True)


# -- logging -------------------------------------------------------------------------------------
def debug_log_path() -> Path:
    """Where laptop commands in debug mode append their log: useful when ssh runs
    ``sm-ssh start-proxy`` for an IDE and nobody sees stderr."""
    return Path.home() / ".sm-ssh" / "debug.log"


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A size-capped log file that is created, and re-created after rotation, with mode 0600."""

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # a file an older version left readable
        return os.fdopen(fd, "a", encoding=self.encoding)


def _open_debug_log(prog: str) -> None:
    path = debug_log_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handler = _PrivateRotatingFileHandler(path, maxBytes=DEBUG_LOG_MAX_BYTES,
                                              backupCount=1, encoding="utf-8")
    except OSError as e:
        logger.warning("cannot write the debug log %s: %s", path, e)
        return
    progress(f"{prog}: debug log: {path} (secrets masked, rotated at "
             f"{DEBUG_LOG_MAX_BYTES // 1024 // 1024} MiB)")
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s {prog}[%(process)d] %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(redact.protect(handler))


def setup_logging(prog: str, debug: bool, level: int = logging.WARNING,
                  debug_log: bool = False, fmt: str | None = None) -> None:
    """The process's logging: stderr at ``level`` (DEBUG in debug mode), every handler
    redacting secrets; in debug mode with ``debug_log``, the debug log file as well."""
    redact.basic_config(level=logging.DEBUG if debug else level, stream=sys.stderr,
                        format=fmt or f"{prog}: %(levelname)s %(name)s: %(message)s")
    if debug and debug_log:
        _open_debug_log(prog)


# -- the guarded main ------------------------------------------------------------------------------
class Command:
    """The running command as its body sees it: its name and whether it is in debug mode."""

    def __init__(self, prog: str, debug: bool) -> None:
        self.prog = prog
        self.debug = debug

    def verbose(self, on: bool) -> None:
        """``-v`` was given: debug logging from here on, and the traceback on failure."""
        if debug_requested(on) and not self.debug:
            self.debug = True
            logging.getLogger().setLevel(logging.DEBUG)

    def parse(self, parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
        """``parser.parse_args(argv)``, then ``-v`` (if the parser has it) takes effect."""
        args = parser.parse_args(list(argv))
        self.verbose(bool(getattr(args, "verbose", False)))
        return args

    def say(self, message: str) -> None:
        """A progress line prefixed with the command's name."""
        progress(f"{self.prog}: {message}")


def _explained(error: Exception, action: str) -> Exception:
    """A botocore error as the :class:`~.errors.AwsError` that says what to do; others as they
    are (botocore is not imported for that: an error of it means it is loaded)."""
    if "botocore" not in sys.modules:
        return error
    return aws.explain(error, action)


def guarded_main(prog: str, body: Callable[[Command], int], *, level: int = logging.WARNING,
                 debug_log: bool = True, fmt: str | None = None,
                 aws_action: str = "an AWS call") -> int:
    """Run ``body`` in the frame (see the module's docstring); return the exit code.

    ``level`` is the stderr level outside debug mode (container commands log INFO to the job's
    log); ``debug_log`` is for laptop commands; ``aws_action`` names the call an AWS error that
    reaches the frame most likely came from (``ssm:DescribeInstanceInformation``).
    """
    command = Command(prog, debug_requested())
    setup_logging(prog, command.debug, level=level, debug_log=debug_log, fmt=fmt)
    try:
        return body(command)
    except SSHHelperError as e:
        if command.debug:
            logger.exception("%s failed", prog)
        print(f"{prog}: {one_line(e)}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED
    except Exception as e:  # AWS errors that escaped a call site, and the unexpected
        if command.debug:
            logger.exception("%s failed", prog)
        explained = _explained(e, aws_action)
        print(f"{prog}: {one_line(explained)}", file=sys.stderr, flush=True)
        return explained.exit_code if isinstance(explained, SSHHelperError) else 1


def argv_or_sys(argv: Sequence[str] | None) -> list[str]:
    """``argv`` as a list, or the process's arguments when it is None."""
    return list(sys.argv[1:] if argv is None else argv)
