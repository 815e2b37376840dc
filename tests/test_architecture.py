"""Which room of the house may import which, read from the code itself (every import, at the
top of a module or inside a function). The rooms: ``goplugin`` (the wire protocol, usable
alone), ``trust`` (pure decisions), ``launch`` (what the registered file runs), ``ops``
(operator tools), ``demo``, the command line (``shim.cli``), the library's face (``shim``
itself), and the ground they share (``shim.errors``, ``shim._record``, ``shim.command``, ``shim._files``)."""

from __future__ import annotations

import ast
from pathlib import Path

SHIM = Path(__file__).resolve().parent.parent / "shim"
BASE = {"shim.errors", "shim._record", "shim.command", "shim._files"}   # the shared ground every room may stand on


def room(module: str) -> str:
    if module in BASE:
        return "base"
    if module == "shim":
        return "api"
    return module.split(".")[1]


def imports() -> list[tuple[str, str, int]]:
    """(importing module, imported shim module, line) for every import of ours in shim/."""
    out = []
    for path in sorted(SHIM.rglob("*.py")):
        rel = path.relative_to(SHIM.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = module if rel.name == "__init__" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    names = [".".join(base + ([node.module] if node.module else []))]
                else:
                    names = [node.module or ""]
            else:
                continue
            out += [(module, n, node.lineno) for n in names if n == "shim" or n.startswith("shim.")]
    return out


MAY_IMPORT = {
    "goplugin": {"goplugin"},                                  # usable alone: nothing else of ours
    "trust": {"trust", "base", "goplugin"},                    # pure: no room that does I/O for a living
    "launch": {"launch", "trust", "base", "goplugin"},
    "ops": {"ops", "launch", "trust", "base", "goplugin"},
    "demo": {"demo", "launch", "trust", "base", "goplugin"},
    "cli": {"cli", "api", "ops", "demo", "launch", "trust", "base", "goplugin"},
    "base": {"base", "goplugin"},
    "api": {"api", "trust", "base", "goplugin"},
}


def test_each_room_imports_only_what_it_may():
    wrong = [f"{src} imports {dst} (line {line})" for src, dst, line in imports()
             if room(dst) not in MAY_IMPORT[room(src)]]
    assert wrong == []


def test_only_the_command_line_imports_the_demo():
    assert [(s, d) for s, d, _ in imports() if room(d) == "demo" and room(s) not in ("demo", "cli")] == []


def test_the_rooms_import_each_other_without_a_cycle():
    edges = {(room(s), room(d)) for s, d, _ in imports() if room(s) != room(d)}
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    assert [r for r in graph if reaches(r, r, set())] == []


def test_the_command_line_modules_import_each_other_without_a_cycle():
    """shim/cli.py and the rooms' own cli modules once imported each other (UsageError,
    Parser): those now live below both, in shim.errors and shim.command."""
    below = [(s, d) for s, d, _ in imports() if s in ("shim.demo.cli", "shim.ops.cli", "shim.ops.doctor")
             and d == "shim.cli"]
    assert below == []


MODULES = {".".join(p.relative_to(SHIM.parent).with_suffix("").parts).removesuffix(".__init__")
           for p in SHIM.rglob("*.py")}


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def module_imports() -> list[tuple[str, str, int, bool, str | None]]:
    """(importing module, imported shim module, line, only for type checkers, name) for every
    import of ours in shim/, resolved to the module itself (``from shim.launch import swap`` is
    shim.launch.swap); ``name``: what a ``from`` import takes that is not a module."""
    out = []
    for path in sorted(SHIM.rglob("*.py")):
        rel = path.relative_to(SHIM.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = module if rel.name == "__init__" else module.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {id(n) for block in ast.walk(tree)
                       if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:
                    base = package.split(".")
                    source = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
                found = [(f"{source}.{a.name}", None) if f"{source}.{a.name}" in MODULES else (source, a.name)
                         for a in node.names]
            else:
                continue
            out += [(module, dst, node.lineno, id(node) in typing_only, name) for dst, name in found
                    if dst == "shim" or dst.startswith("shim.")]
    return out


def test_no_module_imports_a_private_name_of_another():
    """A leading underscore means "this module's own": another module that needs it needs a
    public name for it (``entry._private_copy`` became ``sealed.private_copy``). Read from
    ``from M import _x`` and from ``M._x`` on a module imported by name."""
    wrong = [f"{src} imports {dst}.{name} (line {line})" for src, dst, line, _, name in module_imports()
             if name is not None and private(name) and dst != src]
    for path in sorted(SHIM.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        modules = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for a in node.names if a.name.startswith("shim.") and a.asname}
        modules |= {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and node.module and node.module.startswith("shim") for a in node.names
                    if f"{node.module}.{a.name}" in MODULES}
        wrong += [f"{path.relative_to(SHIM.parent)} uses {node.value.id}.{node.attr} (line {node.lineno})"
                  for node in ast.walk(tree) if isinstance(node, ast.Attribute) and private(node.attr)
                  and isinstance(node.value, ast.Name) and node.value.id in modules]
    assert wrong == []


# private names of the standard library that are its documented API
STDLIB_PRIVATE = {"os._exit"}


def test_no_module_reads_a_private_attribute_it_does_not_define():
    """``child._pidfd`` read in three launch modules and ``server._pick_ports()`` called from the
    demo's cluster said "this is another module's business" and used it anyway: they are public
    now (``PluginClient.pidfd``, ``Server.pick_ports``). A module may read ``x._name`` only
    where it defines ``_name`` itself (its own classes' state, a closure over ``self``), or on
    ``self``/``cls`` (a subclass uses its base's)."""
    wrong = []
    for path in sorted(SHIM.rglob("*.py")):
        if "protos" in path.parts:  # generated
            continue
        tree = ast.parse(path.read_text(), str(path))
        own = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
        wrong += [f"{path.relative_to(SHIM.parent)}:{node.lineno}: {ast.unparse(node)}"
                  for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and private(node.attr)
                  and node.attr not in own and ast.unparse(node) not in STDLIB_PRIVATE
                  and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]
    assert wrong == []


def test_the_modules_import_each_other_without_a_cycle():
    """Not only the rooms: no module of ours reaches itself through what it imports, at the
    top or inside a function (a lazy import is a cycle still, only a later one). Imports for
    type checkers alone do not run, and do not count."""
    graph: dict[str, set[str]] = {}
    for src, dst, _, typing_only, _ in module_imports():
        if not typing_only and src != dst:
            graph.setdefault(src, set()).add(dst)

    def cycle_from(start: str) -> list[str] | None:
        path, seen = [start], set()

        def walk(node: str) -> bool:
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    path.append(nxt)
                    if walk(nxt):
                        return True
                    path.pop()
            return False

        return path + [start] if walk(start) else None

    cycles = {" -> ".join(c) for m in sorted(graph) if (c := cycle_from(m)) is not None}
    assert cycles == set()


# gRPC services of Vault's SDK (sdk/plugin/pb, sdk/database/dbplugin/v5, sdk/helper/pluginutil): what
# proxy mode's hot swap decodes. go-plugin's own services (plugin.GRPCBroker, GRPCController,
# GRPCStdio, grpc.health) are the wire protocol and belong in goplugin.
SDK_SERVICES = ("/pb.", "/dbplugin.", "/pluginutil.")


def test_the_go_plugin_room_calls_no_service_of_vaults_sdk():
    """goplugin speaks go-plugin to any host; what Vault's SDK services mean (Setup, the database
    plugin's Initialize) is launch's business (shim/launch/capture.py), not the protocol's. Read
    from the string and bytes constants of the code (docstrings may name them)."""
    named = []
    for path in sorted((SHIM / "goplugin").rglob("*.py")):
        if "protos" in path.parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Constant) or id(node) in docstrings:
                continue
            value = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
            if isinstance(value, str) and value.startswith(SDK_SERVICES):
                named.append(f"{path.relative_to(SHIM.parent)}:{node.lineno}: {value}")
    assert named == []
