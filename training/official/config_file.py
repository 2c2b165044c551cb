"""Read an official OpenMMLab config file (Python syntax) as plain data, without executing it.

The official MTP finetune configs (`RS_Tasks_Finetune/*/configs/mtp/**.py`) are mmengine "pure Python"
configs: module-level assignments of literals, `dict(...)` calls, names defined earlier, a little
arithmetic (`[123.675, ...] * 2`, `1 / 3`), slices (`mean[::-1]`) and list comprehensions, optionally
inheriting other files through `_base_`. mmengine executes them; we evaluate that subset from the syntax
tree instead, so that a downloaded config can never run code. Anything outside the subset is refused
with the file, line and construct, so a config we cannot read is never half-read.

Inheritance follows mmengine: `_base_` names one file or a list of files relative to the config; the
bases are merged in order, then the config's own keys are merged over them, dicts recursively (a child
dict with `_delete_=True` replaces the base dict instead), everything else replaced.
"""
from __future__ import annotations

import ast
import operator
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

# Calls a config may make: builders of containers and a few pure numeric helpers.
SAFE_CALLS: Dict[str, Callable[..., Any]] = {
    "dict": dict, "list": list, "tuple": tuple, "set": set, "round": round, "min": min, "max": max,
    "abs": abs, "int": int, "float": float, "str": str, "len": len, "sum": sum, "range": range,
    "bool": bool,
}
BIN_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
UNARY_OPS = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
COMPARE_OPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
               ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
               ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not}
MAX_SEQUENCE = 100_000  # `[0] * 10**9` in a config would otherwise take the machine's memory


class ConfigError(ValueError):
    """A config file that cannot be read: missing, not Python, or outside the supported subset."""


def read_official_config(path, _seen: Optional[List[Path]] = None) -> Dict[str, Any]:
    """The config's variables (those not starting with `_`, plus `_base_`-merged content) as a dict."""
    path = Path(path).expanduser().resolve()
    seen = list(_seen or [])
    if path in seen:
        raise ConfigError(f"{path}: `_base_` inheritance loops back to this file ({' -> '.join(map(str, seen))})")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path} is not a Python config file: {exc}") from exc

    namespace: Dict[str, Any] = {}
    evaluator = _Evaluator(path, namespace)
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            raise ConfigError(f"{path}:{node.lineno}: imports are not supported in configs read without "
                              f"executing them (mmengine's new-style `read_base()` configs are not supported)")
        if isinstance(node, ast.Assign):
            value = evaluator.eval(node.value)
            for target in node.targets:
                evaluator.assign(target, value)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            evaluator.assign(node.target, evaluator.eval(node.value))
        else:
            raise ConfigError(f"{path}:{node.lineno}: a {type(node).__name__} statement is not supported in a "
                              f"config (only assignments)")

    merged: Dict[str, Any] = {}
    base = namespace.pop("_base_", None)
    if base is not None:
        bases = [base] if isinstance(base, str) else base
        if not isinstance(bases, (list, tuple)) or not all(isinstance(b, str) for b in bases):
            raise ConfigError(f"{path}: `_base_` must be a file name or a list of file names")
        for name in bases:
            merged = merge_configs(merged, read_official_config(path.parent / name, seen + [path]))
    own = {k: v for k, v in namespace.items() if not k.startswith("__")}
    return merge_configs(merged, own)


def merge_configs(base: Dict[str, Any], child: Dict[str, Any]) -> Dict[str, Any]:
    """mmengine's merge: dicts recursively unless the child says `_delete_=True`; the rest replaced."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict):
            value = dict(value)
            delete = value.pop("_delete_", False)
            if not delete and isinstance(out.get(key), dict):
                out[key] = merge_configs(out[key], value)
                continue
        out[key] = value
    return out


class _Evaluator:
    def __init__(self, path: Path, namespace: Dict[str, Any]):
        self.path, self.ns = path, namespace

    def fail(self, node: ast.AST, what: str) -> ConfigError:
        return ConfigError(f"{self.path}:{getattr(node, 'lineno', '?')}: {what} is not supported in a config "
                           f"read without executing it")

    def assign(self, target: ast.AST, value: Any, scope: Optional[Dict[str, Any]] = None) -> None:
        scope = self.ns if scope is None else scope
        if isinstance(target, ast.Name):
            scope[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            values = list(value)
            if len(values) != len(target.elts):
                raise ConfigError(f"{self.path}:{target.lineno}: cannot unpack {len(values)} values into "
                                  f"{len(target.elts)} names")
            for t, v in zip(target.elts, values):
                self.assign(t, v, scope)
        else:
            raise self.fail(target, f"assigning to a {type(target).__name__}")

    def eval(self, node: ast.AST, scope: Optional[Dict[str, Any]] = None) -> Any:
        scope = self.ns if scope is None else scope
        ev = lambda n: self.eval(n, scope)  # noqa: E731 - short local helper
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in scope:
                return scope[node.id]
            if node.id in ("True", "False", "None"):
                return {"True": True, "False": False, "None": None}[node.id]
            raise ConfigError(f"{self.path}:{node.lineno}: name {node.id!r} is used before it is defined")
        if isinstance(node, ast.List):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(ev(e) for e in node.elts)
        if isinstance(node, ast.Set):
            return {ev(e) for e in node.elts}
        if isinstance(node, ast.Dict):
            out: Dict[Any, Any] = {}
            for k, v in zip(node.keys, node.values):
                if k is None:  # {**other}
                    out.update(ev(v))
                else:
                    out[ev(k)] = ev(v)
            return out
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in SAFE_CALLS:
                name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
                raise self.fail(node, f"calling {name}()")
            args = []
            for a in node.args:
                args.extend(ev(a.value) if isinstance(a, ast.Starred) else [ev(a)])
            kwargs: Dict[str, Any] = {}
            for kw in node.keywords:
                if kw.arg is None:
                    kwargs.update(ev(kw.value))
                else:
                    kwargs[kw.arg] = ev(kw.value)
            return SAFE_CALLS[node.func.id](*args, **kwargs)
        if isinstance(node, ast.BinOp) and type(node.op) in BIN_OPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Mult) and isinstance(left, (list, tuple, str)) and isinstance(right, int) \
                    and len(left) * right > MAX_SEQUENCE:
                raise ConfigError(f"{self.path}:{node.lineno}: a sequence of {len(left) * right} items is too long")
            if isinstance(node.op, ast.Pow) and isinstance(right, (int, float)) and abs(right) > 64:
                raise ConfigError(f"{self.path}:{node.lineno}: exponent {right} is too large")
            return BIN_OPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY_OPS:
            return UNARY_OPS[type(node.op)](ev(node.operand))
        if isinstance(node, ast.BoolOp):
            values = [ev(v) for v in node.values]
            result = values[0]
            for v in values[1:]:
                result = (result and v) if isinstance(node.op, ast.And) else (result or v)
            return result
        if isinstance(node, ast.Compare) and all(type(op) in COMPARE_OPS for op in node.ops):
            left = ev(node.left)
            for op, comp in zip(node.ops, node.comparators):
                right = ev(comp)
                if not COMPARE_OPS[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return ev(node.body) if ev(node.test) else ev(node.orelse)
        if isinstance(node, ast.Subscript):
            return ev(node.value)[ev(node.slice)]
        if isinstance(node, ast.Slice):
            return slice(*(ev(p) if p is not None else None for p in (node.lower, node.upper, node.step)))
        if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):
            items = self._comprehension(node.generators, lambda s: self.eval(node.elt, s), scope)
            return set(items) if isinstance(node, ast.SetComp) else items
        if isinstance(node, ast.DictComp):
            pairs = self._comprehension(node.generators,
                                        lambda s: (self.eval(node.key, s), self.eval(node.value, s)), scope)
            return dict(pairs)
        raise self.fail(node, f"the expression `{ast.unparse(node)[:60]}`")

    def _comprehension(self, generators, element, scope) -> List[Any]:
        out: List[Any] = []

        def run(i: int, local: Dict[str, Any]) -> None:
            if i == len(generators):
                out.append(element(local))
                if len(out) > MAX_SEQUENCE:
                    raise ConfigError(f"{self.path}: a comprehension with more than {MAX_SEQUENCE} items")
                return
            gen = generators[i]
            for item in self.eval(gen.iter, local):
                inner = dict(local)
                self.assign(gen.target, item, inner)
                if all(self.eval(cond, inner) for cond in gen.ifs):
                    run(i + 1, inner)

        run(0, dict(scope))
        return out
