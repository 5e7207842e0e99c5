"""qir: a quantization compiler for on-device language models.

Everything a user's own pass, op or frontend needs is importable from here."""
from qir import ops as _ops  # noqa: F401  (registers the core ops)
from qir.builder import Builder
from qir.errors import ParseError, QirError, VerifyError
from qir.frontend import Frontend, LoadedModel, load_model
from qir.interpreter import Interpreter, interpret
from qir.ir import OP_REGISTRY, REQUIRED, ConstantRef, Function, Module, Op, Value
from qir.parser import parse, parse_file
from qir.passes import (PASS_REGISTRY, Pass, PassContext, PassManager, PassResult, parse_pipeline,
                        register_pass)
from qir.printer import print_module
from qir.quant import QuantSpec
from qir.rewrite import RewritePattern, Rewriter, apply_patterns, erase_dead_ops
from qir.types import TensorType
from qir.verifier import verify

__all__ = [
    "Builder", "ConstantRef", "Frontend", "Function", "Interpreter", "LoadedModel", "Module", "OP_REGISTRY",
    "Op", "PASS_REGISTRY", "ParseError", "Pass", "PassContext", "PassManager", "PassResult", "QirError",
    "QuantSpec", "REQUIRED", "RewritePattern", "Rewriter", "TensorType", "Value", "VerifyError",
    "apply_patterns", "erase_dead_ops", "interpret", "load_model", "parse", "parse_file", "parse_pipeline",
    "print_module", "register_pass", "verify",
]
