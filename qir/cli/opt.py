"""qir-opt FILE.qir [-p PIPELINE] [-o OUT]: read IR text, verify, run passes, print the result."""
from __future__ import annotations

import sys
from pathlib import Path

from qir.cli.common import ArgumentParser, add_pass_manager_flags, make_pass_manager, run_main


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="qir-opt", description="Verify IR text, run passes on it and print the result.")
    parser.add_argument("file", type=Path, nargs="?", help="a .qir file ('-' reads standard input)")
    parser.add_argument("-p", "--pipeline", default="", help="passes to run, e.g. 'canonicalize,dce'")
    parser.add_argument("-o", "--output", type=Path, help="write the IR here instead of standard output")
    parser.add_argument("--list-passes", action="store_true", help="list the registered passes and exit")
    add_pass_manager_flags(parser)
    return parser


def body(argv) -> int:
    from qir.errors import QirError
    from qir.parser import parse, parse_file
    from qir.printer import print_module
    from qir.verifier import verify
    args = build_parser().parse_args(argv)
    manager = make_pass_manager(args, args.pipeline)
    if args.list_passes:
        from qir.passes import PASS_REGISTRY, load_builtin_passes
        load_builtin_passes()
        for name in sorted(PASS_REGISTRY):
            print(f"{name:20s} {PASS_REGISTRY[name].summary}")
        return 0
    if args.file is None:
        raise QirError("qir-opt needs a .qir file (or '-' for standard input)")
    module = parse(sys.stdin.read(), "<stdin>") if str(args.file) == "-" else parse_file(args.file)
    if not args.no_verify:
        verify(module)
    manager.run(module)
    text = print_module(module)
    if args.output:
        from qir.output import write_text_atomic
        write_text_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def main(argv=None) -> int:
    return run_main(body, argv)


if __name__ == "__main__":
    sys.exit(main())
