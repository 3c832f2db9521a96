"""`bitmesh`: the command line over the mesh. Errors print a message, not a trace."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bitmesh.cli import (
    gc_cmd,
    layers_cmd,
    mesh_cmds,
    run_cmd,
    sensitivity_cmd,
    solver_cmds,
    train_cmds,
    tune_cmd,
)
from bitmesh.cli.common import err_console
from bitmesh.errors import BitmeshError

COMMAND_MODULES = (
    mesh_cmds,
    layers_cmd,
    sensitivity_cmd,
    solver_cmds,
    train_cmds,
    tune_cmd,
    run_cmd,
    gc_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitmesh", description="mixed-precision quantization mesh"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except BitmeshError as exc:
        err_console.print(f"[bold red]{exc.status_name}[/]: {exc.message}")
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
