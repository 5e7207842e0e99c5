"""Cycles per HTP op from the QNN EP's detailed profile (`profiling_level = detailed`): the simulator
counts the cycles every op of the QNN graph takes on the modelled HTP, and the per-op counts of one
execution add up to its total ("Accelerator (execute) time (cycles)").

The EP writes the profile as CSV when the session ends. Each execution is a block: the total row,
then one NODE row per QNN op, identified as `name:OpId_N (cycles)` (`OpId_N` alone for ops QNN
added, `Input` / `Output` for the transfers in and out). Op types come from the JSON graph dump."""
from __future__ import annotations

import csv
import gc
import glob
import json
import os
import tempfile

import numpy as np

from backends.qnn.runner import DEFAULT_SOC, check_fixed_point, check_placement, htp_session, run_session
from qir.backend import CycleProfile, OpCycles
from qir.errors import QirError

TOTAL = "Accelerator (execute) time (cycles)"


def profile_htp(model: bytes | str, feeds: dict[str, np.ndarray], soc: str = DEFAULT_SOC, runs: int = 3,
                check: bool = True) -> CycleProfile:
    """Run `model` (bytes, or the path of a context model) `runs` times on HTP with detailed profiling;
    the cycles per op of the run whose total is the median (the simulator's counts vary from run to
    run: measured up to 12 % on the full SmolLM2 on a loaded machine). `check`: prove placement and fixed point first (a context
    model has no graph dump: it was checked when it was built)."""
    if runs < 1:
        raise QirError("profile: runs must be at least 1")
    with tempfile.TemporaryDirectory(prefix="qir-qnn-profile-") as tmp:
        csv_path = os.path.join(tmp, "profile.csv")
        options = {"profiling_level": "detailed", "profiling_file_path": csv_path}
        session = htp_session(model, soc, dump_dir=tmp if check else None, options=options)
        check_placement(session)
        kinds: dict[str, str] = {}
        for path in glob.glob(os.path.join(tmp, "*.json")):
            if path.endswith("_tensor_log.json"):
                continue
            graph = json.load(open(path))
            check_fixed_point(graph)
            kinds.update({name: node["type"] for name, node in graph["graph"]["nodes"].items()})
        for _ in range(runs):
            run_session(session, feeds)
        del session
        gc.collect()  # the EP writes the CSV when the session is released
        if not os.path.exists(csv_path):
            raise QirError("qnn: the QNN EP wrote no profile")
        executions = read_executions(csv_path)
    if len(executions) < runs:
        raise QirError(f"qnn: the profile holds {len(executions)} executions, expected {runs}")
    executions = executions[-runs:]
    totals = [total for total, _ in executions]
    # the run with the median total, whole: its ops add up to its total
    total, ops = sorted(executions, key=lambda ex: ex[0])[(len(executions) - 1) // 2]
    return CycleProfile([OpCycles(name, kind_of(name, kinds), cycles) for name, cycles in ops], total, runs,
                        f"HTP simulator ({soc}), profiling_level=detailed", totals)


def read_executions(path: str) -> list[tuple[float, list[tuple[str, float]]]]:
    """(total cycles, [(op, cycles)...]) per execution in the EP's CSV profile."""
    executions: list[tuple[float, list[tuple[str, float]]]] = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            ident, unit = row.get("Event Identifier", ""), row.get("Unit of Measurement", "")
            if unit != "CYCLES":
                continue
            if ident == TOTAL:
                executions.append((float(row["Time"]), []))
            elif row.get("Message") == "NODE" and executions:
                executions[-1][1].append((op_name(ident), float(row["Time"])))
    return executions


def op_name(ident: str) -> str:
    """`gate:OpId_22 (cycles)` -> `gate`; `OpId_62 (cycles)` -> `OpId_62`; `Input OpId_2 (cycles)` -> `Input`."""
    ident = ident.removesuffix(" (cycles)")
    if ident.startswith(("Input ", "Output ")):
        return ident.split(" ")[0]
    return ident.rsplit(":OpId_", 1)[0] if ":OpId_" in ident else ident


def kind_of(name: str, kinds: dict[str, str]) -> str:
    if name in ("Input", "Output"):
        return "transfer"
    return kinds.get(name, "")
