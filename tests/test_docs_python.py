"""The Python the guides and the README show (what notebook users copy) names what the code has.

Every ```python block of README.md and docs/*.md must parse; every name it imports from
protrans_cli, and every `protrans_cli.a.b` the pages mention (inline or in a block), must exist;
calls of protrans functions and classes (and of the methods of what they return, where the code
says what that is) must fit their signatures: no keyword the function lacks, no required argument
left out, not too many positional ones; and an attribute read from a protrans dataclass or class
instance must be one it has. The check reads protrans_cli's source with `ast` and imports nothing
of it (torch alone takes seconds to import), so it runs in about a second. The snippets name
published models and files no test has, so only README's one-hot example is also run as written.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass

from conftest import ROOT

PACKAGE = "protrans_cli"


def _pages():
    return [ROOT / "README.md"] + [p for p in sorted((ROOT / "docs").glob("*.md")) if p.name != "cli.md"]


def _python_blocks():
    """(page, line, source) of every ```python / ```py block."""
    for page in _pages():
        text = page.read_text()
        for m in re.finditer(r"^```(?:python|py)\n(.*?)^```", text, re.S | re.M):
            yield page.name, text[:m.start()].count("\n") + 2, m.group(1)


def _inline_python():
    """(page, line, source) of inline code that is a protrans import or a protrans_cli.x(...) call
    and parses as Python (`...` as arguments means "elided")."""
    for page in _pages():
        text = page.read_text()
        prose = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
        for m in re.finditer(r"`([^`]+)`", prose):
            code = " ".join(m.group(1).split())
            if not re.match(rf"(from {PACKAGE}[\w.]* import |import {PACKAGE}\b|{PACKAGE}\.\w[\w.]*\()", code):
                continue
            try:
                ast.parse(code)
            except SyntaxError:
                continue
            yield page.name, prose[:m.start()].count("\n") + 1, code


# --- protrans_cli's source, read statically ------------------------------------------------


@dataclass(frozen=True)
class Module:
    name: str


@dataclass(frozen=True)
class Symbol:  # a top-level def or class of a protrans module, or a method
    module: str
    node: ast.AST


@dataclass(frozen=True)
class Instance:
    cls: Symbol


UNKNOWN = None  # a value the check cannot follow (outside protrans, or not written down)


def _module_file(name: str):
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@functools.cache
def _tree(module: str) -> ast.Module:
    return ast.parse(_module_file(module).read_text())


def _statements(body):
    """Top-level statements, looking into if/try blocks (TYPE_CHECKING imports, fallbacks)."""
    for node in body:
        if isinstance(node, ast.If):
            yield from _statements(node.body)
            yield from _statements(node.orelse)
        elif isinstance(node, ast.Try):
            for part in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _statements(part)
        else:
            yield node


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if _module_file(module).name == "__init__.py" else module.split(".")[:-1]
    package = package[:len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


@functools.cache
def _namespace(module: str) -> dict:
    """name -> ast node (def/class/assignment) or ("from", module, name) for an import."""
    names = {}
    for node in _statements(_tree(module).body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for t in ast.walk(target):
                    if isinstance(t, ast.Name):
                        names[t.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                names[alias.asname or alias.name] = ("from", source, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = ("module", alias.name if alias.asname else alias.name.split(".")[0])
    lazy = names.get("_LAZY")  # protrans_cli/__init__.py: public name -> module, imported on first use
    if isinstance(lazy, ast.Assign) and isinstance(lazy.value, ast.Dict):
        for key, value in zip(lazy.value.keys, lazy.value.values):
            names.setdefault(key.value, ("from", value.value, key.value))
    return names


class Missing(Exception):
    pass


def _member(module: str, name: str, depth: int = 0):
    """What `module.name` is: a Module, a Symbol, UNKNOWN (outside protrans); Missing if it has none."""
    if depth > 20:
        return UNKNOWN
    if not module.startswith(PACKAGE):
        return UNKNOWN
    if _module_file(module) is None:
        raise Missing(f"no module {module}")
    entry = _namespace(module).get(name)
    if entry is None:
        if _module_file(f"{module}.{name}"):
            return Module(f"{module}.{name}")
        lazy = _namespace(module).get("__getattr__")  # a module's lazy names: the strings it compares
        if isinstance(lazy, ast.FunctionDef) and any(
                isinstance(n, ast.Constant) and n.value == name for n in ast.walk(lazy)):
            return UNKNOWN
        raise Missing(f"{module} has no {name!r}")
    if isinstance(entry, tuple) and entry[0] == "module":
        return Module(entry[1]) if entry[1].startswith(PACKAGE) else UNKNOWN
    if isinstance(entry, tuple):
        _, source, original = entry
        if not source.startswith(PACKAGE):
            return UNKNOWN
        if _module_file(f"{source}.{original}") and original not in _namespace(source):
            return Module(f"{source}.{original}")
        return _member(source, original, depth + 1)
    if isinstance(entry, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return Symbol(module, entry)
    return UNKNOWN  # a constant or other assignment


def _resolve_dotted(dotted: str):
    parts = dotted.split(".")
    value = Module(parts[0])
    for i, part in enumerate(parts[1:], 2):
        if isinstance(value, Module) and i < len(parts) and _module_file(f"{value.name}.{part}"):
            value = Module(f"{value.name}.{part}")  # (`protrans_cli.embed.X`: the module, not its function)
        else:
            value = _attribute(value, part)
        if value is UNKNOWN:
            break
    return value


def _decorators(node) -> set[str]:
    names = set()
    for d in node.decorator_list:
        d = d.func if isinstance(d, ast.Call) else d
        names.add(d.attr if isinstance(d, ast.Attribute) else getattr(d, "id", ""))
    return names


def _class_members(cls: Symbol):
    """{name: node} of a class and its protrans bases, with `self.x` assignments; None where a base
    is outside protrans (what it inherits is not known here). A value annotated with a base class
    (`LoadedModel.family: Family`) has the base's members: a guide calling what only some
    subclasses have is reported, as it should be."""
    members = {}
    for base in reversed(cls.node.bases):
        if isinstance(base, ast.Name) and base.id in ("object", "Protocol", "Generic", "ABC"):
            continue
        if isinstance(base, ast.Subscript):
            base = base.value
        try:
            resolved = _annotation_value(cls.module, base)
        except Missing:
            return None
        if not isinstance(resolved, Instance):
            return None
        inherited = _class_members(resolved.cls)
        if inherited is None:
            return None
        members.update(inherited)
    for node in cls.node.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            members[node.name] = node
            for sub in ast.walk(node):
                targets = sub.targets if isinstance(sub, ast.Assign) else [getattr(sub, "target", None)]
                for t in targets:
                    if (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"):
                        members.setdefault(t.attr, sub)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            members[node.target.id] = node
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    members[t.id] = node
    if "__getattr__" in members:
        return None
    return members


def _annotation_value(module: str, annotation):
    """The Instance an annotation names (`EmbedSummary`, "TrainResult"), or UNKNOWN."""
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return UNKNOWN
    if isinstance(annotation, ast.Name):
        try:
            value = _member(module, annotation.id)
        except Missing:  # (a builtin: dict, float)
            return UNKNOWN
        if isinstance(value, Symbol) and isinstance(value.node, ast.ClassDef):
            return Instance(value)
    return UNKNOWN


def _attribute(value, name: str):
    if isinstance(value, Module):
        return _member(value.name, name)
    if isinstance(value, Instance):
        members = _class_members(value.cls)
        if members is None:
            return UNKNOWN
        if name not in members:
            raise Missing(f"{value.cls.node.name} has no attribute {name!r}")
        node = members[name]
        if isinstance(node, ast.AnnAssign):
            return _annotation_value(value.cls.module, node.annotation)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if "property" in _decorators(node):
                return _annotation_value(value.cls.module, node.returns) if node.returns else UNKNOWN
            return ("method", Symbol(value.cls.module, node))
        return UNKNOWN
    if isinstance(value, Symbol) and isinstance(value.node, ast.ClassDef):
        members = _class_members(value)
        if members is None:
            return UNKNOWN
        if name not in members:
            raise Missing(f"{value.node.name} has no attribute {name!r}")
        node = members[name]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            bound = "classmethod" in _decorators(node)
            return ("method", Symbol(value.module, node)) if bound else Symbol(value.module, node)
        return UNKNOWN
    return UNKNOWN


def _parameters(callee):
    """(positional names, required positional, keyword names, required keywords, *args, **kwargs)
    of a Symbol or bound method, or None where it is not known."""
    bound = isinstance(callee, tuple)
    symbol = callee[1] if bound else callee
    node = symbol.node
    if isinstance(node, ast.ClassDef):
        members = _class_members(symbol)
        if members is None:
            return None
        if "__init__" in members and isinstance(members["__init__"], ast.FunctionDef):
            node, bound = members["__init__"], True
        elif "dataclass" in _decorators(node):
            fields = [n for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
                      and "ClassVar" not in ast.unparse(n.annotation)]
            names = [f.target.id for f in fields]
            required = [f.target.id for f in fields if f.value is None]
            return names, required, set(names), set(), False, False
        else:
            return None
    args = node.args
    positional = [a.arg for a in args.posonlyargs + args.args]
    defaults = len(args.defaults)
    required = positional[:len(positional) - defaults]
    if bound and "staticmethod" not in _decorators(node):
        positional, required = positional[1:], required[1:]
    keywords = {a.arg for a in args.args + args.kwonlyargs} - {a.arg for a in args.posonlyargs}
    required_kw = {a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None}
    return positional, required, keywords, required_kw, args.vararg is not None, args.kwarg is not None


def _check_call(call: ast.Call, callee) -> str | None:
    params = _parameters(callee)
    if params is None:
        return None
    positional, required, keywords, required_kw, varargs, varkw = params
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return None
    elided = any(isinstance(a, ast.Constant) and a.value is Ellipsis for a in call.args)
    given = {k.arg for k in call.keywords}
    unknown = sorted(given - keywords) if not varkw else []
    if unknown:
        return f"no keyword {', '.join(unknown)}"
    if not varargs and len(call.args) > len(positional):
        return f"{len(call.args)} positional arguments, it takes {len(positional)}"
    if elided:
        return None
    left_out = [p for p in required[len(call.args):] if p not in given] + sorted(required_kw - given)
    if left_out:
        return f"required argument {', '.join(left_out)} left out"
    return None


def _value_of_call(callee):
    symbol = callee[1] if isinstance(callee, tuple) else callee
    if isinstance(symbol, Symbol) and isinstance(symbol.node, ast.ClassDef):
        return Instance(symbol)
    if isinstance(symbol, Symbol) and symbol.node.returns is not None:
        return _annotation_value(symbol.module, symbol.node.returns)
    return UNKNOWN


class _Checker(ast.NodeVisitor):
    """Follows what a snippet binds (imports, `x = f(...)`, `with C(...) as x`) in order."""

    def __init__(self, env=None):
        self.env = dict(env or {})
        self.problems = []
        self.checked = 0

    def value(self, node):
        try:
            return self._value(node)
        except Missing as exc:
            self.problems.append(f"line {node.lineno}: {ast.unparse(node)}: {exc}")
            return UNKNOWN

    def _value(self, node):
        if isinstance(node, ast.Name):
            return self.env.get(node.id, UNKNOWN)
        if isinstance(node, ast.Attribute):
            base = self._value(node.value)
            return UNKNOWN if base is UNKNOWN else _attribute(base, node.attr)
        if isinstance(node, ast.Call):
            callee = self._value(node.func)
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                self._value(arg)
            if callee is UNKNOWN or isinstance(callee, Module):
                return UNKNOWN
            self.checked += 1
            problem = _check_call(node, callee)
            if problem:
                self.problems.append(f"line {node.lineno}: {ast.unparse(node)[:90]}: {problem}")
            return _value_of_call(callee)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self._value(child)
        return UNKNOWN

    def visit_ImportFrom(self, node):
        if not (node.module or "").startswith(PACKAGE):
            return
        for alias in node.names:
            try:
                self.env[alias.asname or alias.name] = _resolve_dotted(f"{node.module}.{alias.name}")
                self.checked += 1
            except Missing as exc:
                self.problems.append(f"line {node.lineno}: from {node.module} import {alias.name}: {exc}")

    def visit_Import(self, node):
        for alias in node.names:
            if alias.name.split(".")[0] == PACKAGE:
                if _module_file(alias.name) is None:
                    self.problems.append(f"line {node.lineno}: import {alias.name}: no such module")
                self.env[alias.asname or PACKAGE] = Module(alias.asname and alias.name or PACKAGE)

    def visit_Assign(self, node):
        value = self.value(node.value)
        for target in node.targets:
            self._bind(target, value)

    def visit_With(self, node):
        for item in node.items:
            value = self.value(item.context_expr)
            if item.optional_vars is not None:
                if isinstance(value, Instance):  # (`__enter__` returning self: a reader, a scorer)
                    enter = (_class_members(value.cls) or {}).get("__enter__")
                    returns_self = enter is not None and any(
                        isinstance(n, ast.Return) and isinstance(n.value, ast.Name) and n.value.id == "self"
                        for n in ast.walk(enter))
                    value = value if returns_self else UNKNOWN
                self._bind(item.optional_vars, value)
        for stmt in node.body:
            self.visit(stmt)

    def visit_For(self, node):
        self.value(node.iter)
        self._bind(node.target, UNKNOWN)
        for stmt in node.body + node.orelse:
            self.visit(stmt)

    def visit_Expr(self, node):
        self.value(node.value)

    def _bind(self, target, value):
        if isinstance(target, ast.Name):
            self.env[target.id] = value
        else:
            for t in ast.walk(target):
                if isinstance(t, ast.Name):
                    self.env[t.id] = UNKNOWN


def _check_source(source: str) -> tuple[list[str], int]:
    checker = _Checker({PACKAGE: Module(PACKAGE)})  # (inline code names `protrans_cli.fit(...)` unimported)
    for stmt in ast.parse(source).body:
        checker.visit(stmt)
    return checker.problems, checker.checked


def test_python_blocks_parse_and_name_what_the_code_has():
    checked, problems, blocks = 0, [], 0
    for page, line, source in _python_blocks():
        blocks += 1
        try:
            ast.parse(source)
        except SyntaxError as exc:
            problems.append(f"{page}:{line + (exc.lineno or 1) - 1}: does not parse: {exc.msg}")
            continue
        found, n = _check_source(source)
        checked += n
        problems += [f"{page} (block at line {line}): {p}" for p in found]
    assert blocks >= 14 and checked > 60, (blocks, checked)  # (the extraction still finds the snippets)
    assert not problems, "Python in the guides that no longer fits the code:\n" + "\n".join(problems)


def test_python_blocks_define_what_they_use():
    """A notebook user pastes one block: a name it uses must be bound in it or be a builtin
    (`embed_sequences(seqs, ...)` with no `seqs` stopped with a NameError)."""
    import builtins

    problems = []
    for page, line, source in _python_blocks():
        tree = ast.parse(source)
        bound = set(dir(builtins))
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                bound.add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                bound.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in bound:
                problems.append(f"{page}:{line + node.lineno - 1}: {node.id} is used but not defined in the block")
    assert not problems, "\n".join(problems)


def test_inline_python_names_what_the_code_has():
    checked, problems = 0, []
    for page, line, source in _inline_python():
        found, n = _check_source(source)
        checked += n
        problems += [f"{page}:{line}: `{source}`: {p}" for p in found]
    assert checked >= 5, checked
    assert not problems, "inline Python in the guides that no longer fits the code:\n" + "\n".join(problems)


def test_every_protrans_cli_dotted_name_in_the_guides_exists():
    """`protrans_cli.io.h5.unescape_key`, `python -m protrans_cli.cli.docs`, ...: a module or a
    name in one (renaming a module or function leaves such mentions stale)."""
    problems, checked = [], 0
    for page in _pages():
        text = page.read_text()
        for m in re.finditer(rf"\b{PACKAGE}(?:\.[A-Za-z_]\w*)+", text):
            checked += 1
            try:
                _resolve_dotted(m.group(0))
            except Missing as exc:
                problems.append(f"{page.name}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)}: {exc}")
    assert checked > 20, checked
    assert not problems, "\n".join(problems)


def test_the_check_finds_what_it_is_for():
    """A renamed keyword, an argument left out, a missing name or attribute: each is reported."""
    cases = {
        'from protrans_cli.embed import EmbedOptions\nEmbedOptions(modle="onehot")': "no keyword modle",
        'from protrans_cli.embed import embed_sequences\nembed_sequences({"a": "MK"})': "left out",
        "from protrans_cli.embed import embed_everything": "has no 'embed_everything'",
        'from protrans_cli.embed import embed\ns = embed("a.fa", "a.h5")\ns.proteins': "no attribute 'proteins'",
        'from protrans_cli.io.h5 import EmbeddingsReader\nwith EmbeddingsReader("a.h5") as r:\n    r.item()':
            "no attribute 'item'",
        'from protrans_cli import load_model\nload_model("x").family.encode(1, 2, 3, 4)': "positional",
        'protrans_cli.fit(protrans_cli.FitConfig(tsk="ss3"), "a", "b", "c")': "no keyword tsk",
    }
    for source, expected in cases.items():
        problems, _ = _check_source(source)
        assert any(expected in p for p in problems), (source, problems)
    fine = ('from protrans_cli import embed_sequences, EmbedOptions\n'
            'v = embed_sequences(["MK"], EmbedOptions(model="onehot"), kind="per_protein")\n'
            'from protrans_cli.embed import embed\nembed("a.fa", "a.h5").residues_per_second\n'
            'protrans_cli.heads.predict.evaluate_head(...)')
    assert _check_source(fine)[0] == []


def test_the_readme_onehot_snippet_runs_as_written():
    """The one snippet that needs no weights and no file runs as it stands, and gives the shape
    its comment says (the others name published models and files a test does not have)."""
    import numpy as np

    (source,) = [s for page, _, s in _python_blocks()
                 if page == "README.md" and 'EmbedOptions(model="onehot")' in s and "embed_sequences" in s]
    *statements, last = source.strip().splitlines()
    namespace = {}
    exec("\n".join(statements), namespace)
    value = eval(last.split("#")[0], namespace)
    comment = re.search(r"#\s*(\(\d+,\))", last).group(1)
    assert value == ast.literal_eval(comment)
    assert isinstance(namespace["means"]["P69905"], np.ndarray)
