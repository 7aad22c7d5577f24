"""The AWS API calls each function's code can make, derived statically from the source.

A call graph from the handler module, function by function, through the layer: a call or a
reference (a callback passed on, a decorator) to a project function, method, property or class
is an edge. Receivers are typed from the annotations the code already carries (parameters,
dataclass fields, ``self.x = param`` in ``__init__``, return types, ``x = <typed call>``), so
``runtime().store.get(...)`` reaches ``TokenStore.get`` and nothing else. A method called on a
receiver whose type cannot be told reaches every project method of that name (more calls, never
fewer). A call on a boto3 client (``DynamoDBClient``, ``KMSClient``...) is an AWS call; the
libraries that call AWS for the code (Powertools' SSMProvider and idempotency persistence) are
listed in :data:`LIBRARY_CALLS`.

Each AWS call is recorded with the project class it is made from, which is how the test maps it
to a resource of the template (``TokenStore`` -> the tokens table, ...).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import botocore.session

REPO = Path(__file__).resolve().parents[2]
LAYER = REPO / "layers" / "signing"
FUNCTIONS = REPO / "functions"

CLIENT_TYPES = {
    "DynamoDBClient": "dynamodb",
    "KMSClient": "kms",
    "SQSClient": "sqs",
    "SSMClient": "ssm",
    "EventBridgeClient": "events",
}
# Library types whose methods call AWS for the code: (type, method) -> (service, operations).
# Checked against the library's own source by the test (library_calls_are_what_it_does).
LIBRARY_CALLS: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    # Powertools Parameters: get() is one GetParameter (WithDecryption when decrypt=True).
    ("SSMProvider", "get"): ("ssm", ("get_parameter",)),
    # Powertools Idempotency's DynamoDB layer: the record's whole life.
    ("DynamoDBPersistenceLayer", "__init__"): (
        "dynamodb",
        ("get_item", "put_item", "update_item", "delete_item"),
    ),
}
_LIBRARY_TYPES = {name for name, _ in LIBRARY_CALLS}
# The items of a TransactWriteItems call, and the IAM action each one is authorized by.
TRANSACT_ITEM_ACTIONS = {
    "Update": "UpdateItem",
    "Put": "PutItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}


@dataclass(frozen=True)
class AwsCall:
    service: str  # boto3's name: dynamodb, kms, sqs, ssm, events
    operation: str  # the API operation, as IAM names it: GetItem, Decrypt, ...
    origin: str  # the project class (or library type) the call is made from
    where: str  # the function it is in, for messages


@dataclass
class _Def:
    qualname: str
    module: str
    node: ast.FunctionDef | ast.AsyncFunctionDef
    owner: str | None  # the class qualname for a method


@dataclass
class _Class:
    qualname: str
    module: str
    bases: list[ast.expr]
    methods: dict[str, str] = field(default_factory=dict)  # name -> def qualname
    attributes: dict[str, ast.expr] = field(default_factory=dict)  # name -> annotation


def _module_name(path: Path) -> str:
    if LAYER in path.parents:
        parts = path.relative_to(LAYER).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return path.stem  # a handler module: functions/<name>/ is on the path


class Program:
    """Every module of the layer and the functions, indexed for the call graph."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.trees: dict[str, ast.Module] = {}
        self.aliases: dict[str, dict[str, str]] = {}
        self.defs: dict[str, _Def] = {}
        self.classes: dict[str, _Class] = {}
        for path in paths:
            module = _module_name(path)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            self.trees[module] = tree
            self.aliases[module] = self._imports(module, tree)
            self._index(module, tree.body, owner=None)
        # Module-level tuples of strings (e.g. the SSM parameter names a loader reads).
        self.string_tuples: dict[str, tuple[str, ...]] = {}
        for module, tree in self.trees.items():
            for statement in tree.body:
                if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Tuple):
                    elements = statement.value.elts
                    values = tuple(
                        e.value
                        for e in elements
                        if isinstance(e, ast.Constant) and isinstance(e.value, str)
                    )
                    for target in statement.targets:
                        if isinstance(target, ast.Name) and len(values) == len(elements):
                            self.string_tuples[f"{module}.{target.id}"] = values
        self._methods_by_name: dict[str, list[str]] = {}
        for qualname, definition in self.defs.items():
            if definition.owner is not None:
                self._methods_by_name.setdefault(definition.node.name, []).append(qualname)

    @classmethod
    def of_the_project(cls) -> Program:
        paths = sorted((LAYER / "appauth").rglob("*.py")) + sorted(FUNCTIONS.glob("*/*.py"))
        return cls(paths)

    @staticmethod
    def _imports(module: str, tree: ast.Module) -> dict[str, str]:
        """Every import anywhere in the module (deferred ones too): local name -> qualname."""
        aliases: dict[str, str] = {}
        package = module.rsplit(".", 1)[0] if "." in module else module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([package, *filter(None, [base])])
                for name in node.names:
                    aliases[name.asname or name.name] = f"{base}.{name.name}"
            elif isinstance(node, ast.Import):
                for name in node.names:
                    aliases[name.asname or name.name.split(".")[0]] = name.name
        return aliases

    def _index(self, module: str, body: list[ast.stmt], owner: _Class | None) -> None:
        prefix = owner.qualname if owner else module
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                qualname = f"{prefix}.{node.name}"
                self.defs[qualname] = _Def(
                    qualname, module, node, owner.qualname if owner else None
                )
                if owner is not None:
                    owner.methods[node.name] = qualname
                    if node.name == "__init__":
                        owner.attributes.update(_init_attributes(node))
                    if _is_property(node) and node.returns is not None:
                        owner.attributes[node.name] = node.returns
            elif isinstance(node, ast.ClassDef) and owner is None:
                cls = _Class(f"{module}.{node.name}", module, node.bases)
                self.classes[cls.qualname] = cls
                for statement in node.body:
                    if isinstance(statement, ast.AnnAssign) and isinstance(
                        statement.target, ast.Name
                    ):
                        cls.attributes[statement.target.id] = statement.annotation
                self._index(module, node.body, owner=cls)

    # --- resolving names and types ---------------------------------------------------------

    def lookup(self, module: str, name: str) -> str | None:
        """A module-level name as a qualname (project or not), or None."""
        local = f"{module}.{name}"
        if local in self.defs or local in self.classes:
            return local
        target = self.aliases.get(module, {}).get(name)
        if target is None:
            return None
        # Re-exported names (``from appauth.x import y`` in another module) resolve through.
        head, _, tail = target.rpartition(".")
        if head in self.trees and tail not in ("",) and f"{head}.{tail}" not in self.defs:
            further = self.lookup(head, tail)
            if further is not None:
                return further
        return target

    def type_of_annotation(self, module: str, node: ast.expr | None) -> str | None:
        """A type as this analysis knows it: ``client:<service>``, ``lib:<Type>``, a project
        class qualname, or ``callable:<type>``; None when it cannot tell."""
        if node is None:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return self.type_of_annotation(module, ast.parse(node.value, mode="eval").body)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # X | None
            return self.type_of_annotation(module, node.left) or self.type_of_annotation(
                module, node.right
            )
        if isinstance(node, ast.Subscript):
            outer = _last_name(node.value)
            inner = node.slice
            if outer == "Callable" and isinstance(inner, ast.Tuple) and len(inner.elts) == 2:
                returned = self.type_of_annotation(module, inner.elts[1])
                return f"callable:{returned}" if returned else None
            if outer == "Optional":
                return self.type_of_annotation(module, inner)
            return None
        name = _last_name(node)
        if name is None:
            return None
        if name in CLIENT_TYPES:
            return f"client:{CLIENT_TYPES[name]}"
        if name in _LIBRARY_TYPES:
            return f"lib:{name}"
        qualname = self.lookup(module, name) if isinstance(node, ast.Name) else None
        if isinstance(node, ast.Attribute):
            qualname = self._attribute_module_symbol(module, node)
        return qualname if qualname in self.classes else None

    def _attribute_module_symbol(self, module: str, node: ast.Attribute) -> str | None:
        if isinstance(node.value, ast.Name):
            target = self.aliases.get(module, {}).get(node.value.id)
            if target in self.trees:
                return self.lookup(target, node.attr)
        return None

    def member(self, cls: str, name: str) -> tuple[str | None, str | None]:
        """(the def qualname, the attribute's type) of ``name`` on ``cls`` or a base class."""
        seen: set[str] = set()
        queue = [cls]
        while queue:
            current = queue.pop(0)
            if current in seen or current not in self.classes:
                continue
            seen.add(current)
            info = self.classes[current]
            definition = info.methods.get(name)
            annotation = info.attributes.get(name)
            if definition is not None or annotation is not None:
                return definition, self.type_of_annotation(info.module, annotation)
            for base in info.bases:
                resolved = self.type_of_annotation(info.module, base)
                if resolved:
                    queue.append(resolved)
        return None, None

    def is_protocol(self, cls: str) -> bool:
        return any(_last_name(base) in ("Protocol", "ABC") for base in self.classes[cls].bases)

    def methods_named(self, name: str) -> list[str]:
        return self._methods_by_name.get(name, [])


def _last_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_property(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(_last_name(d) in ("property", "cached_property") for d in node.decorator_list)


def _init_attributes(node: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, ast.expr]:
    """``self.x = <parameter>`` and ``self.x: T = ...`` in ``__init__``: x -> annotation."""
    params = {a.arg: a.annotation for a in [*node.args.args, *node.args.kwonlyargs] if a.annotation}
    found: dict[str, ast.expr] = {}
    for statement in ast.walk(node):
        if isinstance(statement, ast.AnnAssign) and _self_attribute(statement.target):
            found[statement.target.attr] = statement.annotation  # type: ignore[union-attr]
        elif isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, value = statement.targets[0], statement.value
            # ``self.x = param``, or ``self.x = param if ... else ...`` (a client or a factory)
            branches = [value.body, value.orelse] if isinstance(value, ast.IfExp) else [value]
            named = [b.id for b in branches if isinstance(b, ast.Name) and b.id in params]
            if _self_attribute(target) and named:
                found[target.attr] = params[named[0]]  # type: ignore[attr-defined]
    return found


def _self_attribute(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


class _Walker:
    """One function's body: its edges and its AWS calls."""

    def __init__(self, program: Program, definition: _Def) -> None:
        self.program = program
        self.definition = definition
        self.module = definition.module
        self.env: dict[str, str | None] = {}
        self.edges: set[str] = set()
        self.calls: set[AwsCall] = set()
        self.strings: set[str] = set()  # string constants (and those of tuples it names)
        self.untyped: set[str] = set()  # AWS-looking calls on receivers of no known type
        node = definition.node
        for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
            self.env[arg.arg] = program.type_of_annotation(self.module, arg.annotation)
        if definition.owner and node.args.args and node.args.args[0].arg in ("self", "cls"):
            self.env[node.args.args[0].arg] = definition.owner

    def run(self) -> None:
        for decorator in self.definition.node.decorator_list:
            self.visit(decorator)
        for statement in self.definition.node.body:
            self.visit(statement)

    def visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            value = node.value
            if value is not None:
                self.visit(value)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            typed = (
                self.program.type_of_annotation(self.module, node.annotation)
                if isinstance(node, ast.AnnAssign)
                else None
            ) or (self.type_of(value) if value is not None else None)
            for target in targets:
                if isinstance(target, ast.Name):
                    self.env[target.id] = typed
                else:
                    self.visit(target)
            return
        if isinstance(node, ast.Call):
            self._call(node)
        elif isinstance(node, ast.Attribute | ast.Name):
            self._reference(node)
            if isinstance(node, ast.Name):
                self.strings.update(self.program.string_tuples.get(f"{self.module}.{node.id}", ()))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            self.strings.add(node.value)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                # A nested function or lambda runs as part of this one (a callback, a retry).
                body = child.body if isinstance(child.body, list) else [child.body]
                for statement in body:
                    self.visit(statement)
                continue
            self.visit(child)

    # --- references and calls --------------------------------------------------------------

    def _targets(self, node: ast.expr) -> list[str]:
        """The project defs a name or attribute refers to."""
        if isinstance(node, ast.Name):
            if node.id in self.env:
                return []
            qualname = self.program.lookup(self.module, node.id)
            if qualname in self.program.defs:
                return [qualname]
            if qualname in self.program.classes:
                init, _ = self.program.member(qualname, "__init__")
                post, _ = self.program.member(qualname, "__post_init__")
                return [q for q in (init, post) if q]
            return []
        if isinstance(node, ast.Attribute):
            receiver = self.type_of(node.value)
            if receiver in self.program.classes:
                if self.program.is_protocol(receiver):
                    # Any implementation may be behind it (e.g. EventSink: the EventBridge one).
                    return self.program.methods_named(node.attr)
                definition, _ = self.program.member(receiver, node.attr)
                return [definition] if definition else []
            module_symbol = self.program._attribute_module_symbol(self.module, node)
            if module_symbol in self.program.defs:
                return [module_symbol]
            if receiver is None and not self._is_module(node.value):
                return self.program.methods_named(node.attr)
        return []

    def _is_module(self, node: ast.expr) -> bool:
        if not isinstance(node, ast.Name) or node.id in self.env:
            return False
        target = self.program.aliases.get(self.module, {}).get(node.id)
        return target is not None and (target in self.program.trees or "." not in target)

    def _reference(self, node: ast.Attribute | ast.Name) -> None:
        self.edges.update(self._targets(node))

    def _call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute):
            receiver = self.type_of(func.value)
            if receiver and receiver.startswith("client:"):
                self._aws(receiver.removeprefix("client:"), func.attr, node)
                return
            if receiver and receiver.startswith("lib:"):
                self._library(receiver.removeprefix("lib:"), func.attr)
                return
            if receiver is None and func.attr in _aws_method_names():
                self.untyped.add(f"{self.definition.qualname}: {ast.unparse(func)}")
        elif (
            isinstance(func, ast.Name)
            and func.id in _LIBRARY_TYPES
            and func.id in self.program.aliases.get(self.module, {})  # the library's, imported
        ):
            self._library(func.id, "__init__")

    def _origin(self) -> str:
        return self.definition.owner or self.definition.qualname

    def _aws(self, service: str, method: str, node: ast.Call) -> None:
        if method in ("get_paginator", "can_paginate"):
            (argument,) = node.args
            assert isinstance(argument, ast.Constant), f"{self.definition.qualname}: paginator"
            method = str(argument.value)
        if method in ("exceptions", "meta"):
            return
        where = self.definition.qualname
        if method == "transact_write_items":
            for action in _transact_actions(node, where):
                self.calls.add(AwsCall(service, action, self._origin(), where))
            return
        self.calls.add(AwsCall(service, operation_name(service, method), self._origin(), where))

    def _library(self, library: str, method: str) -> None:
        entry = LIBRARY_CALLS.get((library, method))
        if entry is None:
            return
        service, methods = entry
        for name in methods:
            operation = operation_name(service, name)
            self.calls.add(AwsCall(service, operation, f"lib:{library}", self.definition.qualname))

    # --- types of expressions --------------------------------------------------------------

    def type_of(self, node: ast.expr) -> str | None:
        program = self.program
        if isinstance(node, ast.Name):
            if node.id in self.env:
                return self.env[node.id]
            qualname = program.lookup(self.module, node.id)
            return f"def:{qualname}" if qualname in program.defs else None
        if isinstance(node, ast.Attribute):
            receiver = self.type_of(node.value)
            if receiver in program.classes:
                definition, typed = program.member(receiver, node.attr)
                if typed is not None:
                    return typed
                return f"def:{definition}" if definition else None
            symbol = program._attribute_module_symbol(self.module, node)
            if symbol in program.defs:
                return f"def:{symbol}"
            return None
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name | ast.Attribute):
                qualname = (
                    program.lookup(self.module, func.id) if isinstance(func, ast.Name) else None
                )
                if isinstance(func, ast.Attribute):
                    qualname = program._attribute_module_symbol(self.module, func)
                if qualname in program.classes:
                    return qualname
                if isinstance(func, ast.Name) and _last_name(func) in _LIBRARY_TYPES:
                    return f"lib:{func.id}"
                callee = self.type_of(func)
                if callee and callee.startswith("callable:"):
                    return callee.removeprefix("callable:")
                if callee and callee.startswith("client:"):
                    return callee  # ``Client | Callable[[], Client]``, called: the client
                if callee and callee.startswith("def:"):
                    called = program.defs[callee.removeprefix("def:")]
                    return program.type_of_annotation(called.module, called.node.returns)
        return None


def _transact_actions(node: ast.Call, where: str) -> Iterator[str]:
    (items,) = [k.value for k in node.keywords if k.arg == "TransactItems"]
    assert isinstance(items, ast.List), f"{where}: TransactItems must be a literal list"
    for item in items.elts:
        assert isinstance(item, ast.Dict), f"{where}: each transaction item a literal dict"
        for key in item.keys:
            assert isinstance(key, ast.Constant), f"{where}: transaction item kinds as literals"
            yield TRANSACT_ITEM_ACTIONS[str(key.value)]


@dataclass
class CallGraph:
    program: Program

    @cached_property
    def _walked(self) -> dict[str, _Walker]:
        walked: dict[str, _Walker] = {}
        for qualname, definition in self.program.defs.items():
            walker = _Walker(self.program, definition)
            walker.run()
            walked[qualname] = walker
        return walked

    def reachable(self, module: str) -> set[str]:
        """Every def reachable from the module's own functions (its handler, routes, hooks)."""
        start = [q for q, d in self.program.defs.items() if d.module == module]
        seen: set[str] = set()
        while start:
            current = start.pop()
            if current in seen:
                continue
            seen.add(current)
            start.extend(self._walked[current].edges - seen)
        return seen

    def calls(self, module: str) -> set[AwsCall]:
        return {call for q in self.reachable(module) for call in self._walked[q].calls}

    def strings(self, module: str) -> set[str]:
        """The string constants of every def reachable from the module."""
        return {text for q in self.reachable(module) for text in self._walked[q].strings}

    def untyped_calls(self) -> set[str]:
        """Calls named like an AWS operation on a receiver the analysis cannot type, anywhere."""
        return {call for walker in self._walked.values() for call in walker.untyped}


def operation_name(service: str, method: str) -> str:
    """boto3's method name -> the API operation (get_item -> GetItem), from botocore's model."""
    return _operations(service)[method]


_MODELS: dict[str, dict[str, str]] = {}


def _aws_method_names() -> set[str]:
    names = {"get_paginator"}
    for service in CLIENT_TYPES.values():
        names.update(_operations(service))
    return names


def _operations(service: str) -> dict[str, str]:
    if service not in _MODELS:
        from botocore import xform_name  # noqa: PLC0415

        model = botocore.session.get_session().get_service_model(service)
        _MODELS[service] = {xform_name(name): name for name in model.operation_names}
    return _MODELS[service]
