"""What every command line does with a user's mistake: one line, an exit status, no traceback.

    python -m tfqat.train --model_size=zz ...
    tfqat.train: error: --model_size=zz is not one of femto, n, pico, s

Exit status 2: the command line itself is wrong (a flag, a flagfile, a missing argument).
Exit status 1: an input it names is wrong (a file, a dataset, a checkpoint) or a run stopped
(NaN loss, an export that failed its checks). The traceback is printed as well with
`--verbosity=1` or `TFQAT_TRACEBACK=1` in the environment. Any other exception is a bug and keeps
its traceback.
"""

import contextlib
import os
import sys
import traceback

from absl import app, flags

USAGE = 2
BAD_INPUT = 1
TRACEBACK_ENV = "TFQAT_TRACEBACK"


class InputError(ValueError):
    """A file, dataset or checkpoint a user gave is not what the command needs."""


class RunStopped(RuntimeError):
    """A run stopped on purpose (a NaN loss), with what was kept; not a bug."""


# A user's mistake or a run stopped on purpose, not a bug in tfqat: the message says what and
# where.
INPUT_ERRORS = (ValueError, OSError, RunStopped)


def run(main, argv=None):
    """`absl.app.run(main)` with one line per usage or input error (see the module docstring)."""
    program = _program_name()

    def parse(arguments):
        try:
            return flags.FLAGS(arguments)
        except flags.Error as e:
            _fail(program, _flag_error_text(e), USAGE, e)

    def guarded_main(arguments):
        try:
            return main(arguments)
        except app.UsageError as e:
            _fail(program, str(e), USAGE, e)
        except INPUT_ERRORS as e:
            _fail(program, _one_line(e), BAD_INPUT, e)

    app.run(guarded_main, argv=argv, flags_parser=parse)


@contextlib.contextmanager
def quiet_stderr():
    """Silences what native code writes to stderr inside the block (LiteRT's "INFO: Created
    TensorFlow Lite XNNPACK delegate" when a check loads a model), so that a mistake found later
    is still the only line. Exceptions pass through; their messages carry what went wrong."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _program_name() -> str:
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name.removesuffix(".__main__")
    return os.path.basename(sys.argv[0])


def _flag_error_text(error: flags.Error) -> str:
    """absl's message, without the "ERROR:: " it puts before a flagfile it cannot open."""
    return str(error).removeprefix("ERROR:: ")


def _one_line(error: BaseException) -> str:
    """The error's own message (validators list their findings on the lines below the first)."""
    text = str(error).strip() or type(error).__name__
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{error.filename}: {text}"
    return text


def _wants_traceback() -> bool:
    verbose = flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].value >= 1
    return verbose or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


def _fail(program: str, message: str, status: int, error: BaseException):
    if _wants_traceback():
        traceback.print_exception(error)
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(status)
