"""rotate: QuaRot-style rotations folded into the weights; the float function is unchanged.

R1 rotates the residual stream x → x·R1 (R1 orthogonal, d×d). Found from the graph, not from names:
the stream starts at the embedding lookup (`q.gather` of a constant table; a `q.cast` after it is
followed), and continues through every `q.add` that adds a linear's output to it. Then
- the embedding table:                     E' = E·R1
- every linear reading the stream, through a RMSNorm of unit weight (run fold-norms first) or
  directly (q/k/v, gate/up, the head):     W' = W·R1
- every linear writing into it (the linear
  whose output an add puts on the stream:
  attention output, FFN down):             W' = R1ᵀ·W,  b' = R1ᵀ·b
RMSNorm with unit weight commutes with R1 (‖x·R1‖ = ‖x‖). LayerNorm does not (it subtracts the mean),
and any other op on the stream has no rotated form: both are refused, naming the value.

R2 rotates each attention head's values (head dimension D, one D×D matrix for all heads, so grouped
query attention is consistent): v_proj rows per KV head W' = R2ᵀ·W (and its bias), o_proj columns
per query head W' = W·R2. It is applied to every writer whose input comes, through reshapes and
transposes that keep the last axis, from `q.matmul(probs, V)` where V comes the same way from a
linear (D is the gcd of the last dimensions along that path, the head dimension); writers without
that pattern (FFN down) get no R2. `r2=false` turns it off.

`online=true` (off by default) also rotates the input of every writer without R2 (the FFN down
projections) at run time: an explicit `q.linear` with the constant `@online_rotation.N` (Hᵀ, N×N,
shared by all layers) in front of the writer, whose weight becomes R1ᵀ·W·H. It costs an N×N matmul
per layer on the device.

Kinds (qir/rotations.py): `hadamard` (H/√n; sizes qir/hadamard.py covers, e.g. 576, 1536, powers of
two), `randomized-hadamard` (H·diag(±1)/√n, seeded), `random` (Haar orthogonal from QR, seeded).
R1, R2 and the online matrix use seeds seed, seed+1, seed+2. Weights are transformed in float64 and
stored in their own dtype."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from qir import Function, Module, Op, Pass, PassContext, PassResult, QirError, Value
from qir.ir import OP_REGISTRY
from qir.rotations import KINDS, rotation

MOVES = ("q.reshape", "q.transpose")  # data movement a per-head rotation of the last axis passes through


@dataclass
class Stream:
    """The residual stream of one function: who reads, who writes, where it starts."""

    tables: list[Op] = field(default_factory=list)
    readers: list[Op] = field(default_factory=list)
    writers: list[Op] = field(default_factory=list)


def refuse(message: str):
    raise QirError(f"rotate: {message}")


def linear_with_constants(op: Op) -> bool:
    return op.name == "q.linear" and all(v.is_constant for v in op.operands[1:])


def residual_stream(module: Module, func: Function) -> Stream:
    stream, on_stream = Stream(), set()
    for op in func.ops:
        inputs = [v for v in op.operands if id(v) in on_stream]
        if op.name == "q.gather" and op.operands[0].is_constant and op.attrs["axis"] == 0:
            stream.tables.append(op)
        elif not inputs:
            continue
        elif op.name == "q.cast":
            pass
        elif op.name == "q.add":
            for other in (v for v in op.operands if id(v) not in on_stream):
                writer = other.producer
                if writer is None or not linear_with_constants(writer) or len(other.uses) != 1:
                    hint = ("; this model normalizes with LayerNorm, which does not commute with a rotation "
                            "(rotate handles RMSNorm models)") if any(o.name == "q.layer_norm" for o in func.ops) else ""
                    refuse(f"%{op.result.name} adds %{other.name} to the residual stream; only the output of a "
                           f"linear (used nowhere else) can be rotated into it{hint}")
                stream.writers.append(writer)
        elif op.name == "q.rms_norm":
            weight = op.operands[1]
            if not weight.is_constant or not np.all(module.weights.get(weight.name) == 1.0):
                refuse(f"%{op.result.name} has a norm weight @{weight.name} that is not 1; run fold-norms first")
            for user, index in op.result.uses:
                if not (linear_with_constants(user) and index == 0):
                    refuse(f"the norm %{op.result.name} feeds {user.name} (%{user.results[0].name}); after a "
                           f"rotated norm only linears can read")
                stream.readers.append(user)
            if any(v is op.result for v in func.outputs):
                refuse(f"the norm %{op.result.name} is returned by @{func.name}")
            continue  # the norm's output is rotated only until the linears read it
        elif linear_with_constants(op) and op.operands[0] is inputs[0] and len(inputs) == 1:
            stream.readers.append(op)
            continue
        elif op.name == "q.layer_norm":
            refuse(f"%{op.result.name} is a LayerNorm on the residual stream; it subtracts the mean, which "
                   f"does not commute with a rotation (rotate handles RMSNorm models)")
        else:
            refuse(f"%{inputs[0].name} on the residual stream feeds {op.name} (%{op.results[0].name}), "
                   f"which has no rotated form")
        on_stream.add(id(op.result))
    if not stream.tables:
        refuse(f"@{func.name} has no embedding lookup (q.gather of a constant table, axis 0) where a residual "
               f"stream starts")
    returned = [v.name for v in func.outputs if id(v) in on_stream]
    if returned:
        refuse(f"@{func.name} returns %{returned[0]}, which is on the residual stream (its rotation would show)")
    return stream


def trace_back(value: Value, path: list[Value]) -> Value:
    """Walk up through reshapes and transposes, collecting the values passed."""
    while value.producer is not None and value.producer.name in MOVES:
        path.append(value)
        value = value.producer.operands[0]
    return value


def value_path(writer: Op) -> tuple[Op, int] | None:
    """(v linear, head dim D) when the writer reads attention values, as described above, else None."""
    path: list[Value] = []
    context = trace_back(writer.operands[0], path)
    matmul = context.producer
    if matmul is None or matmul.name != "q.matmul" or matmul.attrs["transpose_b"]:
        return None
    path.append(context)
    values = trace_back(matmul.operands[1], path)
    if values.producer is None or not linear_with_constants(values.producer):
        return None
    path.append(values)
    moves = [v.producer for v in path if v.producer.name in MOVES]
    if any(op.name == "q.transpose" and op.attrs["perm"][-1] != op.result.type.rank - 1 for op in moves):
        return None  # the last axis must stay last for a rotation of it to pass through
    if any(len(v.uses) != 1 for v in path) or any(v is o for v in path for o in writer.function.outputs):
        return None  # someone else reads the rotated values
    return values.producer, math.gcd(*(v.type.shape[-1] for v in path))


@dataclass(frozen=True)
class Rotate(Pass):
    name = "rotate"
    summary = "fold QuaRot rotations into the weights: R1 on the residual stream, R2 per attention head on V/O"
    kind: str = "hadamard"
    seed: int = 0
    r2: bool = True
    online: bool = False  # an explicit rotation in front of the FFN down projections (costs an N×N matmul each)

    def requires(self, module: Module) -> None:
        if self.kind not in KINDS:
            raise QirError(f"rotate: unknown kind '{self.kind}' (kinds: {', '.join(KINDS)})")
        if self.seed < 0:
            raise QirError(f"rotate: seed must be >= 0, got {self.seed}")
        if module.is_quantized():
            raise QirError("rotate: the module is already quantized; rotate the float model, before calibrate")

    def run(self, module: Module, ctx: PassContext) -> PassResult:
        # per constant: (left, right) factors; a rotation of rows is "left", of columns "right"
        plan: dict[str, tuple[tuple, tuple]] = {}
        roles: dict[str, set[tuple[int, int]]] = {}  # constant -> the (op, operand) uses planned for

        def want(value: Value, op: Op, index: int, left=(), right=()):
            if value.name in plan and plan[value.name] != (left, right):
                refuse(f"@{value.name} is used in two roles that need different rotations; give each use its "
                       f"own constant (fold-norms does so for a head tied to the embedding table)")
            plan[value.name] = (left, right)
            roles.setdefault(value.name, set()).add((id(op), index))

        streams = {name: residual_stream(module, func) for name, func in module.functions.items()}
        widths = {op.operands[0].type.shape[-1] for s in streams.values() for op in s.tables}
        if len(widths) != 1:
            refuse(f"the embedding tables have different widths {sorted(widths)}")
        d = widths.pop()
        rotated_heads, online_inputs, head_dims = 0, [], set()
        for func_name, stream in streams.items():
            for op in stream.tables:
                want(op.operands[0], op, 0, right=("R1",))
            vo = {}
            if self.r2:
                vo = {id(w): found for w in stream.writers if (found := value_path(w)) is not None}
            head_dims |= {dim for _, dim in vo.values()}
            v_linears = {id(v): dim for v, dim in vo.values()}
            for op in stream.readers:
                w = op.operands[1]
                dim = v_linears.get(id(op))
                want(w, op, 1, left=("R2T", dim) if dim else (), right=("R1",))
                if len(op.operands) == 3 and dim:
                    want(op.operands[2], op, 2, left=("R2T", dim))
            for v, dim in vo.values():  # a v projection that does not read the stream
                if not any(v is r for r in stream.readers):
                    want(v.operands[1], v, 1, left=("R2T", dim))
                    if len(v.operands) == 3:
                        want(v.operands[2], v, 2, left=("R2T", dim))
            for op in stream.writers:
                w = op.operands[1]
                right = ("R2", vo[id(op)][1]) if id(op) in vo else ()
                if self.online and id(op) not in vo:
                    right = ("H", w.type.shape[1])
                    online_inputs.append((module.functions[func_name], op))
                want(w, op, 1, left=("R1T",), right=right)
                if len(op.operands) == 3:
                    want(op.operands[2], op, 2, left=("R1T",))
            rotated_heads += len(vo)
        self._check_no_other_uses(module, roles)

        mats = {}
        def matrix(tag: str, n: int) -> np.ndarray:
            seed = self.seed + {"R1": 0, "R2": 1, "H": 2}[tag]
            return mats.setdefault((tag, n), rotation(self.kind, n, seed))

        for name, (left, right) in plan.items():
            data = module.weights.get(name)
            x = data.astype(np.float64)
            if left and left[0] == "R1T":
                x = matrix("R1", d).T @ x
            elif left:  # R2ᵀ on each block of D rows (one per KV head)
                dim = left[1]
                x = np.einsum("ed,hd...->he...", matrix("R2", dim).T, x.reshape(-1, dim, *x.shape[1:])).reshape(x.shape)
            if right and right[0] == "R1":
                x = x @ matrix("R1", d)
            elif right and right[0] == "R2":  # R2 on each block of D columns (one per query head)
                dim = right[1]
                x = (x.reshape(x.shape[0], -1, dim) @ matrix("R2", dim)).reshape(x.shape)
            elif right:
                x = x @ matrix("H", right[1])
            module.weights.set(name, x.astype(data.dtype))
        for func, writer in online_inputs:
            insert_online(module, func, writer, matrix("H", writer.operands[1].type.shape[1]))
        ctx.data[self.name] = {"kind": self.kind, "residual_width": d, "head_dims": sorted(head_dims),
                               "readers": sum(len(s.readers) for s in streams.values()),
                               "writers": sum(len(s.writers) for s in streams.values()),
                               "heads_rotated": rotated_heads, "online": len(online_inputs),
                               # which constants carry which rotation, for learn-rotation
                               "constants": {name: {"left": list(left), "right": list(right)}
                                             for name, (left, right) in plan.items()}}
        return PassResult(modified=True)

    def _check_no_other_uses(self, module: Module, roles: dict[str, set[tuple[int, int]]]) -> None:
        for func in module.functions.values():
            for op in func.ops:
                for index, value in enumerate(op.operands):
                    if value.is_constant and value.name in roles and (id(op), index) not in roles[value.name]:
                        refuse(f"@{value.name} is rotated, but {op.name} (%{op.results[0].name}) also uses it "
                               f"as is; give that use its own constant")


def insert_online(module: Module, func: Function, writer: Op, h: np.ndarray) -> None:
    """x → x·H in front of `writer`, as a q.linear with the constant Hᵀ (shared by all layers)."""
    n = h.shape[0]
    name = f"online_rotation.{n}"
    if name not in module.constants:
        module.add_constant(name, np.ascontiguousarray(h.T, dtype=np.float32))
    x = writer.operands[0]
    op = OP_REGISTRY["q.linear"]([x, func.constant(name)], result_names=[x.name + "_rotated"])
    func.insert(func.ops.index(writer), op)
    writer.set_operand(0, op.result)
