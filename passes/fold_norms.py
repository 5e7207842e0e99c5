"""fold-norms: move the weight (and bias) of every norm whose users are all linears into those
linears, and leave the norm with unit weight (and zero bias):

    rms_norm(x, g) · Wᵀ + b          = rms_norm(x, 1) · (W·diag(g))ᵀ + b
    layer_norm(x, g, β) · Wᵀ + b     = layer_norm(x, 1, 0) · (W·diag(g))ᵀ + (b + W·β)

A norm with unit weight commutes with an orthogonal rotation of its input (RMSNorm does; see
rotate), and the scale lands in weights quantized per output channel, where it costs nothing.

A norm is left alone when
- any user is not a `q.linear` reading it as its input, or the norm's result is returned (BERT is
  post-norm: its LayerNorms also feed the residual add, so none of them is folded);
- its weight or bias constant is also used by something other than a norm folded here.
A linear weight (or bias) that is used elsewhere too — a head tied to the embedding table — gets
its own folded copy `@W.G` (G the norm weight's name); otherwise it is folded in place. Folded data
keeps each constant's dtype; the arithmetic is done in float64."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qir import Function, Module, Op, Pass, PassContext, PassResult, QirError, Value

NORMS = ("q.rms_norm", "q.layer_norm")


def constant_uses(module: Module) -> dict[str, list[tuple[Op, int]]]:
    """Every use of every constant, over all functions."""
    uses: dict[str, list[tuple[Op, int]]] = {}
    for func in module.functions.values():
        for op in func.ops:
            for index, value in enumerate(op.operands):
                if value.is_constant:
                    uses.setdefault(value.name, []).append((op, index))
    return uses


def loaded_constants(module: Module, values: list[Value]) -> bool:
    return all(v.is_constant and module.weights.has(v.name) for v in values)


def reads_only_into_linears(module: Module, func: Function, norm: Op) -> bool:
    result = norm.result
    if not result.uses or any(v is result for v in func.outputs) or not loaded_constants(module, norm.operands[1:]):
        return False
    return all(user.name == "q.linear" and index == 0 and loaded_constants(module, user.operands[1:])
               for user, index in result.uses)


def norm_key(norm: Op) -> tuple[str, ...]:
    """The norm's parameter constants: (g,) or (g, β). Norms with one key are folded alike."""
    return tuple(v.name for v in norm.operands[1:])


@dataclass(frozen=True)
class FoldNorms(Pass):
    name = "fold-norms"
    summary = "fold rms_norm / layer_norm weights (and biases) into the linears they feed; norms get unit weight"

    def requires(self, module: Module) -> None:
        if module.is_quantized():
            raise QirError("fold-norms: the module is already quantized; fold norms in the float model, before "
                           "calibrate and quantize")

    def run(self, module: Module, ctx: PassContext) -> PassResult:
        uses = constant_uses(module)
        candidates = {id(op): norm_key(op) for func in module.functions.values() for op in func.ops
                      if op.name in NORMS and reads_only_into_linears(module, func, op)}

        def folded_norm_key(op: Op) -> tuple[str, ...] | None:
            producer = op.operands[0].producer
            return candidates.get(id(producer)) if producer is not None else None

        # a norm parameter shared with anything but norms folded here stays as it is (and so do its norms)
        shared = {name for key in candidates.values() for name in key
                  if any(id(op) not in candidates or index == 0 for op, index in uses[name])}
        norms = [(func, op) for func in module.functions.values() for op in func.ops
                 if id(op) in candidates and not shared & set(candidates[id(op)])]
        params = {key: [module.weights.get(n).astype(np.float64) for n in key]
                  for key in {candidates[id(op)] for _, op in norms}}
        params = {k: p for k, p in params.items() if not is_unit(p)}  # nothing to fold

        def target(name: str, key: tuple[str, ...], index: int, weight: str) -> str:
            """Fold in place only if every use of @name is this role in a linear fed by a norm of `key`."""
            alike = all(op.name == "q.linear" and i == index and op.operands[1].name == weight
                        and folded_norm_key(op) == key for op, i in uses[name])
            return name if alike else unique_constant(module, f"{name}.{key[0]}")

        # plan on the unmodified graph: which (linear, norm key) pairs fold, and into which constants
        plan = [(func, linear, norm_key(norm)) for func, norm in norms if norm_key(norm) in params
                for linear in [user for user, _ in norm.result.uses]]
        targets = {(linear.operands[i].name, key): target(linear.operands[i].name, key, i, linear.operands[1].name)
                   for _, linear, key in plan for i in range(1, len(linear.operands))}
        originals: dict[str, np.ndarray] = {}  # read before anything is folded in place
        original = lambda name: originals.setdefault(name, module.weights.get(name).astype(np.float64))
        new_biases: dict[str, str] = {}  # folded weight -> the bias created for it
        written: set[str] = set()
        for func, linear, key in plan:
            g, beta = params[key][0], (params[key][1] if len(key) > 1 else None)
            w = linear.operands[1].name
            if targets[(w, key)] not in written:
                put(module, targets[(w, key)], original(w) * g[None, :], like=w)
            if beta is not None and beta.any():
                shift = original(w) @ beta  # W·β, with the unfolded W
                if len(linear.operands) == 3:
                    b = linear.operands[2].name
                    if targets[(b, key)] not in written:
                        put(module, targets[(b, key)], original(b) + shift, like=b)
                        written.add(targets[(b, key)])
                    linear.set_operand(2, func.constant(targets[(b, key)]))
                else:
                    if targets[(w, key)] not in new_biases:
                        b = new_biases[targets[(w, key)]] = unique_constant(module, targets[(w, key)] + ".bias")
                        module.add_constant(b, shift.astype(module.constants[w].type.np_dtype))
                    linear._add_operand(func.constant(new_biases[targets[(w, key)]]))  # the optional bias
            written.add(targets[(w, key)])
            linear.set_operand(1, func.constant(targets[(w, key)]))
        for key, (g, *rest) in params.items():  # the norms now have unit weight and zero bias
            module.weights.set(key[0], np.ones_like(module.weights.get(key[0])))
            if rest:
                module.weights.set(key[1], np.zeros_like(module.weights.get(key[1])))
        folded = sum(norm_key(op) in params for _, op in norms)
        ctx.data[self.name] = {"folded": folded, "left": sum(op.name in NORMS for f in module.functions.values()
                                                             for op in f.ops) - folded}
        return PassResult(modified=folded > 0)


def is_unit(params: list[np.ndarray]) -> bool:
    return bool(np.all(params[0] == 1.0)) and all(not p.any() for p in params[1:])


def unique_constant(module: Module, name: str) -> str:
    candidate, i = name, 1
    while candidate in module.constants:
        candidate, i = f"{name}.{i}", i + 1
    return candidate


def put(module: Module, name: str, data: np.ndarray, like: str) -> None:
    """Set @name's data (declaring it like @like if it is new) in @like's dtype."""
    data = data.astype(module.constants[like].type.np_dtype)
    if name in module.constants:
        module.weights.set(name, data)
    else:
        module.add_constant(name, data, module.constants[like].type)
