"""Read port defaults out of other components' sources without importing them (tests only).

The components' config modules pull in their whole dependency trees; the numbers we compare
against are literal in their sources, so the tests read them with `ast`.
"""

from __future__ import annotations

import ast
import pathlib
from typing import Dict, Optional, Tuple


def _module_ints(tree: ast.Module) -> Dict[str, int]:
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    values[target.id] = node.value.value
    return values


def default_for_env(path: pathlib.Path, env_name: str) -> Optional[int]:
    """The default a component gives the variable `env_name`: the argument after it in the call that reads it
    (`_number(env, "DP_WS_PORT", DEFAULT_PORT)`, `e("DP_IOT_AGGREGATOR_HTTP_PORT", 9464, int)`)."""
    tree = ast.parse(path.read_text())
    constants = _module_ints(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for i, arg in enumerate(node.args[:-1]):
            if isinstance(arg, ast.Constant) and arg.value == env_name:
                nxt = node.args[i + 1]
                if isinstance(nxt, ast.Constant) and isinstance(nxt.value, int):
                    return nxt.value
                if isinstance(nxt, ast.Name) and nxt.id in constants:
                    return constants[nxt.id]
    return None


def stack_ports(catalog: pathlib.Path) -> Dict[str, Tuple[Tuple[str, str, int], ...]]:
    """deploy/stack/catalog.py's services and their Port(name, env, default) entries."""
    tree = ast.parse(catalog.read_text())
    result = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Service":
            kw = {k.arg: k.value for k in node.keywords}
            result[kw["name"].value] = tuple(tuple(a.value for a in call.args) for call in kw["ports"].elts)
    return result
