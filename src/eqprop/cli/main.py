"""``eqprop <command> [options]``: dispatch to one module per subcommand.

Each subcommand module defines ``Args`` (a dataclass, the CLI is generated from it
by tyro) and ``run(args) -> int``. Modules are imported lazily so that
``eqprop --help`` is fast. User errors (:class:`~eqprop.errors.EqpropError`) are
printed as one line and exit with code 2, without a traceback.
"""

from __future__ import annotations

import importlib
import sys

from ..errors import EqpropError

__all__ = ["COMMANDS", "main"]

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("eqprop.cli.train", "train an equilibrium LM (the main job)"),
    "eval": ("eqprop.cli.evaluate", "validation CE and relaxation statistics of a run"),
    "sample": ("eqprop.cli.sample", "generate text through the equilibrium"),
    "diagnose": ("eqprop.cli.diagnose", "spectrum, ε_crit, ε-sweep and gradient fidelity of a run"),
    "bench": ("eqprop.cli.bench", "benchmarks (solvers, training step)"),
}


def _usage() -> str:
    rows = "\n".join(f"  {name:<10}{help_}" for name, (_, help_) in COMMANDS.items())
    return (f"usage: eqprop <command> [options]\n\ncommands:\n{rows}\n\n"
            "'eqprop <command> --help' lists its options")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``eqprop`` script; returns the exit code."""
    import tyro

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"eqprop: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        args = tyro.cli(module.Args, args=rest, prog=f"eqprop {name}",
                        description=COMMANDS[name][1])
        return int(module.run(args) or 0)
    except EqpropError as e:
        print(f"eqprop {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"eqprop {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
