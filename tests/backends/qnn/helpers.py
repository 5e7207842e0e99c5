"""Quantize a small q-graph, legalize it for QNN, and run it three ways: HTP (simulator), the QDQ
graph on onnxruntime's CPU EP, and qir's fake-quant interpreter; differences in output LSB."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import qir
from backends.qnn.emit import emit_onnx
from backends.qnn.legalize import legalize_qnn
from backends.qnn.runner import run_cpu, run_htp
from qir import Module, PassContext, PassManager, erase_dead_ops, parse_pipeline


def quantize(module: Module, recipe: str, batches: list[tuple]) -> Module:
    ctx = PassContext(data={"calibration_inputs": batches})
    PassManager(parse_pipeline(f"calibrate{{samples={len(batches)}}},quantize{{recipe={recipe}}}")).run(module, ctx)
    return module


def cut(module: Module, start: str, end: str) -> Module:
    """The module's main function from value `start` (made its only argument, with its spec) to
    value `end` (its only output): a block-only graph of a model whose embedding and head are too
    large for a simulator test."""
    func = module.main
    values = {v.name: v for v in func.args + [r for op in func.ops for r in op.results]}
    first, last = values[start], values[end]
    arg = func.add_arg(start + ".in", first.type, first.quant)
    first.replace_all_uses_with(arg)
    func.outputs[:] = [last]
    erase_dead_ops(func)
    func.args[:] = [arg]
    PassManager(parse_pipeline("dce")).run(module, PassContext())
    return module


@dataclass
class Fidelity:
    htp_vs_cpu: float  # max |HTP - CPU EP| in output LSB
    cpu_vs_fake_quant: float  # max |CPU EP - fake-quant interpreter| in output LSB
    outputs: int
    htp_vs_fake_quant: float = 0.0  # max |HTP - fake-quant interpreter| in output LSB
    htp_sqnr_db: float = 0.0  # HTP's outputs against the float model (the module with specs ignored)

    def __str__(self):
        return (f"HTP vs QDQ on CPU: {self.htp_vs_cpu:.4f} LSB, QDQ on CPU vs fake-quant: "
                f"{self.cpu_vs_fake_quant:.4f} LSB, HTP vs fake-quant: {self.htp_vs_fake_quant:.4f} LSB "
                f"(max over {self.outputs} outputs); HTP vs float {self.htp_sqnr_db:.1f} dB SQNR")


def fidelity(module: Module, inputs: list[tuple]) -> Fidelity:
    """Legalize, emit, and compare the three on each input tuple (max over all, in LSB of the output)."""
    legal = legalize_qnn(module)
    model = emit_onnx(legal).SerializeToString()
    reference = qir.Interpreter(legal, mode="fake-quant")
    float_model = qir.Interpreter(module)
    names = [a.name for a in legal.main.args]
    worst_htp = worst_cpu = worst_fake = signal = noise = 0.0
    count = 0
    for args in inputs:
        feeds = dict(zip(names, args))
        htp = run_htp(model, feeds).outputs
        cpu = run_cpu(model, feeds)
        fake = reference.run(*args)
        for value, real in zip(legal.main.outputs, float_model.run(*args)):
            signal += float((np.asarray(real, np.float64) ** 2).sum())
            noise += float(((htp[value.name + ".out"] - np.asarray(real, np.float64)) ** 2).sum())
        for value, expected in zip(legal.main.outputs, fake):
            key = value.name + ".out"
            scale = np.float32(value.quant.scale[0])
            worst_htp = max(worst_htp, float(np.abs(htp[key] - cpu[key]).max() / scale))
            worst_cpu = max(worst_cpu, float(np.abs(cpu[key] - expected).max() / scale))
            worst_fake = max(worst_fake, float(np.abs(htp[key] - expected).max() / scale))
            count += expected.size
    return Fidelity(worst_htp, worst_cpu, count, worst_fake, 10 * np.log10(signal / max(noise, 1e-30)))
