"""What every command shares: user errors as one line and exit code 2, plugins, pass-manager flags."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

from rich.console import Console

from qir.errors import QirError

console = Console(stderr=True, highlight=False)  # progress and status
out = Console(highlight=False)  # results: tables and reports


def run_main(body, argv=None) -> int:
    """Run a command body; user errors print `error: ...` and return 2, never a traceback."""
    try:
        return body(argv) or 0
    except QirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def load_plugin(spec: str) -> None:
    """Import a user's plugin (a .py file or a module name) so its passes and ops register."""
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.exists():
            raise QirError(f"plugin file not found: {spec}")
        module_spec = importlib.util.spec_from_file_location(f"qir_plugin_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        try:
            module_spec.loader.exec_module(module)
        except QirError:
            raise
        except Exception as exc:
            raise QirError(f"plugin {spec} failed to import: {type(exc).__name__}: {exc}") from None
    else:
        try:
            importlib.import_module(spec)
        except ImportError as exc:
            raise QirError(f"plugin module '{spec}' cannot be imported: {exc}") from None


def add_pass_manager_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py|MODULE",
                        help="import a module that registers passes or ops (repeatable)")
    parser.add_argument("--print-ir-before", action="append", default=[], metavar="PASS|all",
                        help="print the IR before this pass (repeatable)")
    parser.add_argument("--print-ir-after", action="append", default=[], metavar="PASS|all",
                        help="print the IR after this pass (repeatable)")
    parser.add_argument("--dump-dir", type=Path, help="write the IR after each pass as numbered .qir files")
    parser.add_argument("--no-verify", action="store_true", help="do not verify the IR after each pass")


def make_pass_manager(args, pipeline: str):
    from qir.passes import PassManager, parse_pipeline
    for spec in args.plugin:
        load_plugin(spec)
    passes = parse_pipeline(pipeline) if pipeline else []
    return PassManager(passes, verify_each=not args.no_verify, print_before=set(args.print_ir_before),
                       print_after=set(args.print_ir_after), dump_dir=args.dump_dir)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that exits with code 2 and a one-line error (as it does), plus a hint to --help."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
