"""One measured command in its own process: its stdout, wall seconds and its own peak RSS."""
from __future__ import annotations

import os
import subprocess
import tempfile
import time


def run_child(argv: list[str]) -> tuple[str, float, float]:
    """(stdout, seconds, peak RSS in MB) of `argv`; a failure exits with the tail of its stderr.
    Output goes to files: a child writing more than a pipe holds would block while we wait for it,
    and os.wait4 gives the rusage of exactly that child."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{err[-3000:]}")
    return out, seconds, usage.ru_maxrss / 1024
