"""Console script ``streamparity``: one subcommand per ``cmd_*`` module (``streamparity --help`` lists them)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from streamparity.errors import BackendUnavailable, StreamparityError

# Each command module exposes ``register(subparsers)`` and sets ``func`` on its parser.
COMMAND_MODULES = (
    "streamparity.cli.cmd_make_reference",
    "streamparity.cli.cmd_check_reference",
    "streamparity.cli.cmd_repro",
    "streamparity.cli.cmd_bisect",
    "streamparity.cli.cmd_init_contract",
    "streamparity.cli.cmd_import_contract",
    "streamparity.cli.cmd_check_contract",
    "streamparity.cli.cmd_serve_ort",
    "streamparity.cli.cmd_record",
    "streamparity.cli.cmd_build_engine",
    "streamparity.cli.cmd_calibrate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamparity", description=__doc__)
    parser.add_argument("--traceback", action="store_true", help="show Python tracebacks on errors (default: off)")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE and register the backends its pytest_streamparity_backends hook adds, as "
                             "`pytest -p MODULE` does (repeatable; default: none)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        mod.register(sub)
    return parser


def load_plugins(argv: Sequence[str] | None) -> str | None:
    """Import every ``--plugin MODULE`` before the arguments are checked (a plugin's backend ids must parse)
    and run its ``pytest_streamparity_backends(register)`` hook; the error line, or None."""
    from streamparity.backends.registry import register_backend

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugin", action="append", default=[])
    for name in pre.parse_known_args(argv)[0].plugin:
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            return f"--plugin {name}: cannot import it ({type(e).__name__}: {e})"
        hook = getattr(mod, "pytest_streamparity_backends", None)
        if hook is None:
            return f"--plugin {name}: the module defines no pytest_streamparity_backends hook"
        try:
            hook(register=register_backend)
        except Exception as e:  # a plugin's own refusal (e.g. a bad setting): one line, as pytest gives it
            return f"--plugin {name}: {e}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    failed = load_plugins(argv if argv is not None else sys.argv[1:])
    if failed:
        print(f"streamparity: error: {failed}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (StreamparityError, BackendUnavailable) as e:
        if args.traceback:
            raise
        print(f"streamparity {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output path that is a directory, a file where a folder must be, ...
        if args.traceback:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"streamparity {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"streamparity {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
