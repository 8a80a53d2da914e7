"""``eqprop <command> [options]``: dispatch to one module per subcommand.

Each subcommand module defines ``Args`` (a dataclass, the CLI is generated from it
by tyro) and ``run(args) -> int``. Modules are imported lazily so that
``eqprop --help`` is fast.

Every rejected input is reported as exactly one line on stderr,
``eqprop <command>: error: <what was wrong and what is allowed>``, with exit
code 2 and no traceback: user errors (:class:`~eqprop.errors.EqpropError`, raised
by config validation, data, checkpoints and the run directory), tyro's own parse
errors (unknown flag, a value of the wrong type; tyro draws those as a box,
condensed here to its first message), and operating-system errors
(:class:`OSError`: a full disk, a permission). Exit codes: 0 done, 2 rejected
input or a failed read/write, 3 training stopped by the wall guard (see
:mod:`eqprop.train.guard`), 4 training applied no update (every step skipped),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM; training checkpoints first).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import io
import os
import re
import sys

from ..errors import EqpropError, TrainingInterrupted

__all__ = ["COMMANDS", "main"]

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("eqprop.cli.train", "train an equilibrium LM (the main job)"),
    "eval": ("eqprop.cli.evaluate", "validation CE and relaxation statistics of a run"),
    "sample": ("eqprop.cli.sample", "generate text through the equilibrium"),
    "diagnose": ("eqprop.cli.diagnose", "spectrum, ε_crit, ε-sweep and gradient fidelity of a run"),
    "bench": ("eqprop.cli.bench", "benchmarks (solvers, training step)"),
}

_BOX = str.maketrans("", "", "│┃")
_RULE = re.compile(r"^[\s\-─━]+$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: ``name=value`` at the start of a validation message (``solver eps=0.0: ...``)
_KEY = re.compile(r"([A-Za-z_][\w.]*)=('[^']*'|\"[^\"]*\"|[^\s:;,)]+)")


class _Rejected(Exception):
    """tyro rejected the arguments; the message is the condensed one line."""


def _usage() -> str:
    rows = "\n".join(f"  {name:<10}{help_}" for name, (_, help_) in COMMANDS.items())
    return (f"usage: eqprop <command> [options]\n\ncommands:\n{rows}\n\n"
            "'eqprop <command> --help' lists its options")


def _condense(box: str) -> str:
    """tyro's error box -> one line: its first message, plus what the flag expects or the
    flag it suggests (the first line of the "Argument helptext" / "Perhaps you meant" part)."""
    blocks: list[list[str]] = [[]]
    titled = False  # on a terminal the title sits in the top border: the message comes first
    for raw in _ANSI.sub("", box).splitlines():
        if raw.strip().startswith(("╭", "╰")):
            titled = titled or raw.strip().startswith("╭")
            continue
        line = raw.translate(_BOX)
        if _RULE.match(line) and line.strip():
            blocks.append([])
        else:
            blocks[-1].append(line.strip())
    body = blocks[0] if titled or len(blocks) == 1 else blocks[1]
    rest = blocks[1:] if titled else blocks[2:]
    first: list[str] = []
    for line in body:  # the message, up to the first blank line (tyro's details follow)
        if not line and first:
            break
        if line:
            first.append(line)
    msg = " ".join(first).removeprefix("Error parsing ")
    for block in rest:
        lines = [x for x in block if x]
        if len(lines) >= 2 and lines[0] == "Argument helptext:":
            msg += f"; expected {lines[1]}"
        elif len(lines) >= 2 and lines[0] == "Perhaps you meant:":
            msg += f"; did you mean {lines[1]}?"
    return " ".join(msg.split())


def _same(given: str, shown: str) -> bool:
    try:
        return float(given) == float(shown)
    except ValueError:
        return given == shown


def _flag_hint(message: str, argv: list[str]) -> str:
    """`` (from --estimator.nudge.eps 0)`` when a validation message names a setting without
    its section (``solver eps=0.0``) and exactly one flag on the command line set that value."""
    m = _KEY.search(message)
    if m is None:
        return ""
    key, shown = m.group(1), m.group(2).strip("'\"")
    leaf = key.rsplit(".", 1)[-1]
    hits = []
    for i, tok in enumerate(argv):
        if not tok.startswith("--"):
            continue
        flag, eq, value = tok.partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        name = flag[2:].replace("-", "_")
        if name == key:
            return ""  # the message names the flag already
        if name.rsplit(".", 1)[-1] == leaf and _same(value, shown):
            hits.append(f"{flag} {value}")
    return f" (from {hits[0]})" if len(hits) == 1 else ""


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown error"


def _parse(cls: type, rest: list[str], prog: str, description: str, default: object = None):
    """``tyro.cli`` with its error box captured and condensed (``--help`` passes through);
    ``default``: the values the flags are parsed onto (None: the dataclass defaults)."""
    import tyro

    captured, rejected = io.StringIO(), False
    try:
        with contextlib.redirect_stderr(captured):
            if default is None:
                return tyro.cli(cls, args=rest, prog=prog, description=description)
            return tyro.cli(cls, args=rest, prog=prog, description=description, default=default)
    except SystemExit as e:
        if e.code in (0, None):
            raise
        rejected = True
        raise _Rejected(_condense(captured.getvalue()) or "invalid arguments") from None
    finally:
        if not rejected:
            sys.stderr.write(captured.getvalue())  # warnings and the like: not swallowed


def _os_message(e: OSError) -> str:
    where = f" ({e.filename!s})" if e.filename else ""
    hint = (": free some space or choose another --run.out-dir" if e.errno == errno.ENOSPC else
            ": check the permissions" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
            else "")
    return f"{e.strerror or e}{where}{hint}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``eqprop`` script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"eqprop {version('eqprop')}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"eqprop: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    prog = f"eqprop {name}"
    try:
        default = None
        if name == "train":  # a --config file or a resumed run: the defaults the flags override
            from .train import base_args

            default = base_args(rest)
        args = _parse(module.Args, rest, prog, COMMANDS[name][1], default)
        return int(module.run(args) or 0)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except _Rejected as e:
        print(f"{prog}: error: {e} (see '{prog} --help')", file=sys.stderr)
        return 2
    except EqpropError as e:
        msg = _one_line(str(e))
        print(f"{prog}: error: {msg}{_flag_hint(msg, rest)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`eqprop ... | head`): exit quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # a read or write that no check anticipated: still one line
        print(f"{prog}: error: {_one_line(_os_message(e))}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:  # the trainer printed its one line (where to resume)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
