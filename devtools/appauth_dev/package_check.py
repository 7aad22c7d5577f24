"""``make package``: checks what ``sam build`` made, before anything is deployed.

Reads the built template (``.aws-sam/build/template.yaml``) for the functions, their layers,
their runtime and architecture, then checks each artifact folder:

- platform: every installed wheel carries a tag the runtime accepts (CPython 3.12, abi3 or pure
  Python; manylinux for the architecture up to the runtime's glibc, 2.34 on Amazon Linux 2023),
  every ELF file (extension modules, bundled libraries) is for that architecture and asks for no
  newer glibc, extension modules are named for that CPython (or abi3), no ``.pyc`` was compiled
  by another Python (the build machine's);
- size: a function and its layers, unzipped, within a budget well under Lambda's 250 MiB; each
  artifact zipped (as ``sam deploy`` uploads it) measured and within a budget;
- nothing developer-only: no ``appauth_dev``/``devtools``, no tests of ours, no development
  distributions (pytest, moto, mypy, type stubs, ruff...), no private key, and not the AWS SDK.
  boto3, botocore and s3transfer come with the Lambda runtime as a matched set: a copy in
  ``/opt/python`` (aws-xray-sdk pulls botocore in) would shadow the runtime's botocore and pair
  it with a boto3 it was not released with, and would double the layer;
- complete: every file belongs to an installed distribution or to our own code (no console
  scripts or data files left by pip), every dependency a distribution declares is installed or
  comes with the runtime, every module our code imports is found (``if TYPE_CHECKING:`` imports
  aside), and every function's handler exists.

Prints a table (package, version, platform, size) per artifact and the sizes; exits 1 on any
violation, naming each, and 2 when there is no build to check.
"""

from __future__ import annotations

import argparse
import ast
import csv
import re
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags, parse_tag
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

MIB = 1024 * 1024
# Lambda: a function and all its layers, unzipped (262,144,000 bytes).
LAMBDA_UNZIPPED_LIMIT = 250 * MIB
DEFAULT_MAX_UNZIPPED_MIB = 50.0  # a fifth of the limit
DEFAULT_MAX_ZIPPED_MIB = 25.0  # half of the limit on a zip uploaded directly (50 MB)


@dataclass(frozen=True)
class Runtime:
    name: str
    python: tuple[int, int]
    glibc: tuple[int, int]

    @property
    def cp(self) -> str:
        return f"cp{self.python[0]}{self.python[1]}"


# The Lambda Python runtimes: Amazon Linux 2 (glibc 2.26) up to 3.11, Amazon Linux 2023 (2.34).
RUNTIMES = {
    "python3.10": Runtime("python3.10", (3, 10), (2, 26)),
    "python3.11": Runtime("python3.11", (3, 11), (2, 26)),
    "python3.12": Runtime("python3.12", (3, 12), (2, 34)),
    "python3.13": Runtime("python3.13", (3, 13), (2, 34)),
}
# Lambda architecture -> (machine name in tags and extension suffixes, ELF e_machine).
ARCHITECTURES = {"arm64": ("aarch64", 183), "x86_64": ("x86_64", 62)}
# Standard modules gone from the newer runtimes (the checker itself may run on an older Python).
STDLIB_REMOVED = {
    (3, 12): {"asynchat", "asyncore", "distutils", "imp", "smtpd"},
    (3, 13): {
        "aifc", "audioop", "cgi", "cgitb", "chunk", "crypt", "imghdr", "lib2to3", "mailcap",
        "msilib", "nis", "nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd", "sunau",
        "telnetlib", "uu", "xdrlib",
    },
}  # fmt: skip

# What the Lambda Python runtime ships beside the standard library: boto3 and what it needs.
RUNTIME_DISTRIBUTIONS = frozenset(
    {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"}
)
RUNTIME_MODULES = frozenset(
    {"boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3"}
)
# Must not be in an artifact: they would shadow the runtime's matched set (see the docstring).
AWS_SDK = frozenset({"boto3", "botocore", "s3transfer"})
DEV_DISTRIBUTIONS = frozenset(
    {
        "alipay-appauth", "aws-sam-cli", "aws-sam-translator", "boto3-stubs", "botocore-stubs",
        "cfn-lint", "coverage", "hypothesis", "moto", "mypy", "pip", "pytest", "responses",
        "ruff", "setuptools", "wheel",
    }
)  # fmt: skip
DEV_DISTRIBUTION_PREFIXES = ("mypy-boto3-", "pytest-", "types-")
DEV_DISTRIBUTION_SUFFIXES = ("-stubs",)
# Folders of ours that never ship: the developer package, its folder, tests.
DEV_PATH_PARTS = frozenset({"appauth_dev", "devtools", "tests", "test"})
TEST_FILE = re.compile(r"^(test_.*|.*_test|conftest)\.py$")
# Where `pip install --target` puts console scripts, data files and headers: nothing imports them.
PIP_SCHEME_DIRS = frozenset({"bin", "share", "include", "etc"})
# `appauth keygen`'s private key files, and PEM private key blocks in any file.
PRIVATE_KEY_FILES = frozenset({"app_private_key.pem", "app_private_key.txt"})
PRIVATE_KEY_PEM = re.compile(
    rb"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----\r?\n[A-Za-z0-9+/=\r\n]{40}"
)
GLIBC_VERSION = re.compile(rb"GLIBC_2\.(\d+)")
EXTENSION_SUFFIX = re.compile(r"\.cpython-(\d+)-([A-Za-z0-9_]+)-linux-gnu\.so$")
PYC_TAG = re.compile(r"\.(cpython-\d+)(?:\.opt-\d)?\.pyc$")
KEY_SCAN_LIMIT = 1 * MIB


@dataclass(frozen=True)
class Violation:
    artifact: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.artifact}: [{self.rule}] {self.message}"


@dataclass
class Distribution:
    name: str
    version: str
    tags: frozenset[Tag]
    tag_lines: list[str]
    requires: list[str]
    files: set[PurePosixPath]
    dist_info: str

    @property
    def key(self) -> str:
        return canonicalize_name(self.name)


@dataclass
class Artifact:
    name: str
    kind: str  # "function" or "layer"
    folder: Path  # what is zipped
    site: Path  # what is on sys.path: the function folder, or the layer's python/
    runtime: Runtime | None = None
    architecture: str = ""
    handler: str = ""
    layers: list[str] = field(default_factory=list)
    distributions: list[Distribution] = field(default_factory=list)
    own_files: list[PurePosixPath] = field(default_factory=list)
    unzipped: int = 0
    zipped: int = 0


@dataclass(frozen=True)
class Row:
    package: str
    version: str
    platform: str
    size: int


@dataclass
class Report:
    artifacts: list[Artifact]
    rows: dict[str, list[Row]]
    violations: list[Violation]
    # The runtime's distributions each artifact relies on, instead of bundling them.
    from_runtime: dict[str, set[str]] = field(default_factory=dict)


# ---------------------------------------------------------------- reading the build


def _lambda_platforms(runtime: Runtime, machine: str) -> list[str]:
    major, newest = runtime.glibc
    platforms = [f"manylinux_{major}_{minor}_{machine}" for minor in range(newest, 4, -1)]
    legacy = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
    platforms += [f"{name}_{machine}" for name, minor in legacy.items() if minor <= newest]
    return platforms


def supported_tags(runtime: Runtime, machine: str) -> frozenset[Tag]:
    """The wheel tags pip would accept on the Lambda runtime (no plain ``linux_*`` builds)."""
    platforms = _lambda_platforms(runtime, machine)
    tags = set(cpython_tags(runtime.python, [runtime.cp, "abi3", "none"], platforms))
    tags |= set(compatible_tags(runtime.python, runtime.cp, platforms))
    return frozenset(tags)


def _record_files(dist_info: Path) -> set[PurePosixPath]:
    record = dist_info / "RECORD"
    if not record.is_file():
        return set()
    files: set[PurePosixPath] = set()
    with record.open(newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if not row or not row[0]:
                continue
            parts: list[str] = []
            for part in PurePosixPath(row[0]).parts:
                if part == "..":
                    if not parts:
                        break  # outside the site (a script in ../../bin): not importable
                    parts.pop()
                elif part != ".":
                    parts.append(part)
            else:
                if parts:
                    files.add(PurePosixPath(*parts))
    return files


def _parse_tag(line: str) -> frozenset[Tag]:
    try:
        return parse_tag(line)
    except ValueError:
        return frozenset()


def read_distributions(site: Path) -> list[Distribution]:
    distributions = []
    for dist_info in sorted(site.glob("*.dist-info")):
        metadata_file = dist_info / "METADATA"
        metadata = HeaderParser().parsestr(
            metadata_file.read_text(encoding="utf-8", errors="replace")
            if metadata_file.is_file()
            else ""
        )
        name = metadata.get("Name") or dist_info.name.removesuffix(".dist-info").split("-")[0]
        wheel_file = dist_info / "WHEEL"
        tag_lines: list[str] = []
        if wheel_file.is_file():
            wheel = HeaderParser().parsestr(wheel_file.read_text(encoding="utf-8"))
            tag_lines = [str(tag).strip() for tag in wheel.get_all("Tag") or []]
        tags = frozenset().union(*map(_parse_tag, tag_lines))
        files = _record_files(dist_info)
        files |= {
            PurePosixPath(path.relative_to(site).as_posix())
            for path in dist_info.rglob("*")
            if path.is_file()
        }
        distributions.append(
            Distribution(
                name=str(name),
                version=str(metadata.get("Version") or "?"),
                tags=tags,
                tag_lines=tag_lines,
                requires=[str(line) for line in metadata.get_all("Requires-Dist") or []],
                files=files,
                dist_info=dist_info.name,
            )
        )
    return distributions


def _files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            yield path


def _zipped_size(folder: Path) -> int:
    with tempfile.TemporaryFile() as handle:
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in _files(folder):
                archive.write(path, path.relative_to(folder).as_posix())
        return handle.tell()


def _ref(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("Ref"), str):
        return str(value["Ref"])
    return None


def load_artifacts(build_dir: Path) -> tuple[list[Artifact], list[Violation]]:
    """The functions and layers of the built template, with their runtime and architecture."""
    template = yaml.safe_load((build_dir / "template.yaml").read_text(encoding="utf-8"))
    globals_ = (template.get("Globals") or {}).get("Function") or {}
    resources = template.get("Resources") or {}
    artifacts: dict[str, Artifact] = {}
    violations: list[Violation] = []
    for logical_id, resource in resources.items():
        if not isinstance(resource, dict):
            continue  # Fn::ForEach and the like: nothing to build
        properties = resource.get("Properties") or {}
        kind = resource.get("Type")
        if kind == "AWS::Serverless::Function":
            folder = build_dir / str(properties.get("CodeUri", logical_id))
            runtime_name = str(properties.get("Runtime") or globals_.get("Runtime") or "")
            architectures = properties.get("Architectures") or globals_.get("Architectures")
            layers = properties.get("Layers") or globals_.get("Layers") or []
            artifact = Artifact(logical_id, "function", folder, folder)
            artifact.architecture = str((architectures or ["x86_64"])[0])
            artifact.handler = str(properties.get("Handler") or "")
            artifact.layers = [name for name in map(_ref, layers) if name]
        elif kind == "AWS::Serverless::LayerVersion":
            folder = build_dir / str(properties.get("ContentUri", logical_id))
            artifact = Artifact(logical_id, "layer", folder, folder / "python")
            runtime_name = str((properties.get("CompatibleRuntimes") or [""])[0])
            artifact.architecture = str((properties.get("CompatibleArchitectures") or [""])[0])
        else:
            continue
        artifact.runtime = RUNTIMES.get(runtime_name)
        if artifact.runtime is None:
            violations.append(
                Violation(
                    logical_id, "runtime", f"not a known Lambda Python runtime: {runtime_name!r}"
                )
            )
        if artifact.architecture not in ARCHITECTURES:
            violations.append(
                Violation(logical_id, "runtime", f"unknown architecture {artifact.architecture!r}")
            )
        artifacts[logical_id] = artifact
    for function in artifacts.values():
        for layer_id in function.layers:
            layer = artifacts.get(layer_id)
            if layer is None or layer.kind != "layer":
                continue
            if (layer.runtime, layer.architecture) != (function.runtime, function.architecture):
                violations.append(
                    Violation(
                        layer_id,
                        "runtime",
                        f"built for {_target(layer)} but {function.name} runs {_target(function)}",
                    )
                )
    return list(artifacts.values()), violations


def _target(artifact: Artifact) -> str:
    runtime = artifact.runtime.name if artifact.runtime else "?"
    return f"{runtime} {artifact.architecture}"


# ---------------------------------------------------------------- the rules


def _is_dev_distribution(key: str) -> bool:
    return (
        key in DEV_DISTRIBUTIONS
        or key.startswith(DEV_DISTRIBUTION_PREFIXES)
        or key.endswith(DEV_DISTRIBUTION_SUFFIXES)
    )


def _check_distributions(artifact: Artifact, tags: frozenset[Tag] | None) -> list[Violation]:
    violations = []
    for dist in artifact.distributions:
        label = f"{dist.name} {dist.version}"
        if dist.key in AWS_SDK:
            violations.append(
                Violation(
                    artifact.name,
                    "aws-sdk",
                    f"{label}: the runtime provides boto3/botocore/s3transfer as a matched set; "
                    "a copy here would shadow it",
                )
            )
        if _is_dev_distribution(dist.key):
            violations.append(
                Violation(artifact.name, "dev-only", f"{label} is a development tool")
            )
        if any(path.parts[0] in {"tests", "test"} for path in dist.files):
            # A package's own tests (certifi/tests) are its business; a top-level one is not.
            violations.append(
                Violation(artifact.name, "dev-only", f"{label} installs a top-level tests package")
            )
        if not dist.tag_lines:
            violations.append(
                Violation(artifact.name, "platform", f"{label}: no WHEEL tags (not from a wheel?)")
            )
        elif tags is not None and not dist.tags & tags:
            violations.append(
                Violation(
                    artifact.name,
                    "platform",
                    f"{label} is built for {', '.join(dist.tag_lines)}, not {_target(artifact)}",
                )
            )
    return violations


def _check_file(
    artifact: Artifact, relative: PurePosixPath, path: Path, machine: tuple[str, int] | None
) -> list[Violation]:
    violations = []
    name = relative.name
    if name.endswith(".pyc") and artifact.runtime is not None:
        tag = PYC_TAG.search(name)
        if tag is None or tag.group(1) != f"cpython-{artifact.runtime.cp[2:]}":
            violations.append(
                Violation(
                    artifact.name,
                    "pyc",
                    f"{relative} was not compiled by {artifact.runtime.name} (dead weight)",
                )
            )
    if name in PRIVATE_KEY_FILES:
        violations.append(
            Violation(artifact.name, "private-key", f"{relative}: a private key file")
        )
    with path.open("rb") as handle:
        head = handle.read(KEY_SCAN_LIMIT)
    if PRIVATE_KEY_PEM.search(head):
        violations.append(
            Violation(artifact.name, "private-key", f"{relative} holds a private key")
        )
    if head[:4] == b"\x7fELF":
        if machine is not None:
            violations += _check_elf(artifact, relative, path, head, machine)
    elif name.endswith(".so") or ".so." in name:
        violations.append(Violation(artifact.name, "elf", f"{relative} is not an ELF file"))
    return violations


def _check_elf(
    artifact: Artifact, relative: PurePosixPath, path: Path, head: bytes, machine: tuple[str, int]
) -> list[Violation]:
    violations = []
    machine_name, elf_machine = machine
    found = int.from_bytes(head[18:20], "little" if head[5:6] == b"\x01" else "big")
    if head[4:5] != b"\x02" or found != elf_machine:
        violations.append(
            Violation(
                artifact.name,
                "elf",
                f"{relative} is for ELF machine {found} ({head[4] * 32}-bit), not {machine_name}",
            )
        )
    runtime = artifact.runtime
    if runtime is not None:
        needed = max((int(m) for m in GLIBC_VERSION.findall(path.read_bytes())), default=0)
        if needed > runtime.glibc[1]:
            violations.append(
                Violation(
                    artifact.name,
                    "glibc",
                    f"{relative} needs glibc 2.{needed}; {runtime.name} has "
                    f"{runtime.glibc[0]}.{runtime.glibc[1]}",
                )
            )
        suffix = EXTENSION_SUFFIX.search(relative.name)
        if suffix and (suffix.group(1), suffix.group(2)) != (runtime.cp[2:], machine_name):
            violations.append(
                Violation(
                    artifact.name,
                    "extension",
                    f"{relative} is an extension module for another Python or machine",
                )
            )
    return violations


def _check_own_file(artifact: Artifact, relative: PurePosixPath) -> list[Violation]:
    if artifact.kind == "layer" and (relative.parts[0] != "python" or len(relative.parts) < 2):
        return [Violation(artifact.name, "stray", f"{relative}: outside python/, never imported")]
    parts = relative.parts[1:] if artifact.kind == "layer" else relative.parts
    top = parts[0]
    if top in PIP_SCHEME_DIRS and len(parts) > 1:
        return [
            Violation(
                artifact.name,
                "stray",
                f"{relative}: a script or data file pip left outside the packages",
            )
        ]
    if DEV_PATH_PARTS & set(parts) or TEST_FILE.match(relative.name):
        return [Violation(artifact.name, "dev-only", f"{relative} is developer-only code")]
    return []


def _marker_environment(runtime: Runtime, machine: str) -> dict[str, str]:
    """PEP 508 marker values on the Lambda runtime, for the requirements that apply there."""
    major, minor = runtime.python
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{major}.{minor}.0",
        "os_name": "posix",
        "platform_machine": machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": f"{major}.{minor}.0",
        "python_version": f"{major}.{minor}",
        "sys_platform": "linux",
        "extra": "",
    }


def _check_dependencies(
    artifact: Artifact, visible: Sequence[Distribution]
) -> tuple[list[Violation], set[str]]:
    """Every requirement of the artifact's distributions met by it, its layers or the runtime.

    Also returns the runtime's distributions it relies on (botocore, for aws-xray-sdk).
    """
    machine = ARCHITECTURES.get(artifact.architecture)
    if artifact.runtime is None or machine is None:
        return [], set()
    environment = _marker_environment(artifact.runtime, machine[0])
    installed = {dist.key: dist for dist in visible}
    violations = []
    from_runtime: set[str] = set()
    for dist in artifact.distributions:
        for line in dist.requires:
            try:
                requirement = Requirement(line)
            except InvalidRequirement:
                continue
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue
            key = canonicalize_name(requirement.name)
            found = installed.get(key)
            if found is None:
                if key in RUNTIME_DISTRIBUTIONS:
                    from_runtime.add(key)
                else:
                    violations.append(
                        Violation(
                            artifact.name,
                            "dependency",
                            f"{dist.name} needs {requirement}, which is neither here, "
                            "in a layer nor in the runtime",
                        )
                    )
                continue
            try:
                ok = requirement.specifier.contains(Version(found.version), prereleases=True)
            except InvalidVersion:
                ok = False
            if not ok:
                violations.append(
                    Violation(
                        artifact.name,
                        "dependency",
                        f"{dist.name} needs {requirement}, found {found.name} {found.version}",
                    )
                )
    return violations, from_runtime


def _importable(site: Path) -> set[str]:
    names = set()
    if site.is_dir():
        for entry in site.iterdir():
            if entry.is_dir() and not entry.name.endswith((".dist-info", ".data")):
                names.add(entry.name)
            elif entry.suffix in {".py", ".so", ".pyc"}:
                names.add(entry.name.split(".")[0])
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_modules(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Top-level module names imported at run time: not under ``if TYPE_CHECKING:``."""
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno
        pending.extend(ast.iter_child_nodes(node))


def _stdlib(runtime: Runtime) -> set[str]:
    names = set(sys.stdlib_module_names)
    for version, removed in STDLIB_REMOVED.items():
        if runtime.python >= version:
            names -= removed
    return names


def _check_code(artifact: Artifact, sites: Sequence[Path]) -> list[Violation]:
    if artifact.runtime is None:
        return []
    available = _stdlib(artifact.runtime) | RUNTIME_MODULES
    for site in sites:
        available |= _importable(site)
    violations = []
    for relative in artifact.own_files:
        if relative.suffix != ".py":
            continue
        path = artifact.folder / relative
        try:
            tree = ast.parse(path.read_bytes(), filename=str(relative))
        except SyntaxError as error:
            violations.append(Violation(artifact.name, "import", f"{relative}: {error}"))
            continue
        for module, line in sorted(set(_imported_modules(tree))):
            if module not in available:
                violations.append(
                    Violation(
                        artifact.name,
                        "import",
                        f"{relative}:{line} imports {module}, found neither here, "
                        "in a layer nor in the runtime",
                    )
                )
    return violations


def _defines(tree: ast.Module, name: str) -> bool:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            return True
        if isinstance(node, ast.AnnAssign | ast.AugAssign) and (
            isinstance(node.target, ast.Name) and node.target.id == name
        ):
            return True
        if isinstance(node, ast.Import | ast.ImportFrom) and any(
            (alias.asname or alias.name) == name for alias in node.names
        ):
            return True
    return False


def _check_handler(artifact: Artifact) -> list[Violation]:
    module, _, function = artifact.handler.rpartition(".")
    path = artifact.folder.joinpath(*module.split(".")).with_suffix(".py")
    if not module or not path.is_file():
        return [Violation(artifact.name, "handler", f"no module for handler {artifact.handler!r}")]
    if not _defines(ast.parse(path.read_bytes()), function):
        return [
            Violation(artifact.name, "handler", f"{path.name} defines no {function!r} (handler)")
        ]
    return []


def check_artifact(artifact: Artifact) -> tuple[list[Row], list[Violation]]:
    """Reads and checks one artifact alone (dependencies and imports need its layers: see below)."""
    if not artifact.folder.is_dir():
        return [], [Violation(artifact.name, "missing", f"no folder {artifact.folder}")]
    violations: list[Violation] = []
    machine = ARCHITECTURES.get(artifact.architecture)
    tags = supported_tags(artifact.runtime, machine[0]) if artifact.runtime and machine else None
    artifact.distributions = read_distributions(artifact.site)
    violations += _check_distributions(artifact, tags)
    site_prefix = artifact.site.relative_to(artifact.folder).parts
    owned = {
        PurePosixPath(*site_prefix, *path.parts)
        for dist in artifact.distributions
        for path in dist.files
    }
    sizes: dict[PurePosixPath, int] = {}
    for path in _files(artifact.folder):
        relative = PurePosixPath(path.relative_to(artifact.folder).as_posix())
        sizes[relative] = path.stat().st_size
        violations += _check_file(artifact, relative, path, machine)
        if relative not in owned and relative.suffix != ".pyc":
            artifact.own_files.append(relative)
            violations += _check_own_file(artifact, relative)
    artifact.unzipped = sum(sizes.values())
    artifact.zipped = _zipped_size(artifact.folder)
    rows = []
    own: dict[str, int] = {}
    for relative in artifact.own_files:
        inside = relative.parts[len(site_prefix) :] or relative.parts
        own[inside[0]] = own.get(inside[0], 0) + sizes[relative]
    for name, size in sorted(own.items()):
        rows.append(Row(name, "(own code)", "source", size))
    for dist in sorted(artifact.distributions, key=lambda dist: dist.key):
        size = sum(sizes.get(PurePosixPath(*site_prefix, *p.parts), 0) for p in dist.files)
        platform = next(
            (line for line in dist.tag_lines if tags and _parse_tag(line) & tags),
            dist.tag_lines[0] if dist.tag_lines else "?",
        )
        rows.append(Row(dist.name, dist.version, platform, size))
    if artifact.kind == "function" and artifact.handler:
        violations += _check_handler(artifact)
    return rows, violations


def check_build(
    build_dir: Path,
    *,
    max_unzipped: int = int(DEFAULT_MAX_UNZIPPED_MIB * MIB),
    max_zipped: int = int(DEFAULT_MAX_ZIPPED_MIB * MIB),
) -> Report:
    artifacts, violations = load_artifacts(build_dir)
    by_name = {artifact.name: artifact for artifact in artifacts}
    rows: dict[str, list[Row]] = {}
    from_runtime: dict[str, set[str]] = {}
    for artifact in artifacts:
        rows[artifact.name], found = check_artifact(artifact)
        violations += found
        if artifact.zipped > max_zipped:
            violations.append(
                Violation(
                    artifact.name,
                    "size",
                    f"zipped {_size(artifact.zipped)}, over the budget of {_size(max_zipped)}",
                )
            )
    for artifact in artifacts:
        layers = [by_name[name] for name in artifact.layers if name in by_name]
        visible = [dist for item in [artifact, *layers] for dist in item.distributions]
        found, from_runtime[artifact.name] = _check_dependencies(artifact, visible)
        violations += found
        violations += _check_code(artifact, [artifact.site, *(layer.site for layer in layers)])
        total = artifact.unzipped + sum(layer.unzipped for layer in layers)
        budget = min(max_unzipped, LAMBDA_UNZIPPED_LIMIT)
        if total > budget:
            violations.append(
                Violation(
                    artifact.name,
                    "size",
                    f"unzipped with its layers {_size(total)}, over the budget of {_size(budget)} "
                    f"(Lambda's limit: {_size(LAMBDA_UNZIPPED_LIMIT)})",
                )
            )
    return Report(artifacts, rows, violations, from_runtime)


# ---------------------------------------------------------------- output


def _size(size: int) -> str:
    if size >= MIB / 10:
        return f"{size / MIB:.1f} MiB"
    return f"{size / 1024:.1f} KiB"


def _table(rows: Sequence[Sequence[str]], right: Sequence[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def render(report: Report, *, max_unzipped: int, max_zipped: int) -> str:
    lines: list[str] = []
    for artifact in report.artifacts:
        lines.append(f"{artifact.name} ({artifact.kind}, {_target(artifact)})")
        table = [("package", "version", "platform", "size")]
        table += [
            (row.package, row.version, row.platform, _size(row.size))
            for row in report.rows.get(artifact.name, [])
        ]
        lines += _table(table, right=[3])
        lines.append(f"  {_size(artifact.unzipped)} unzipped, {_size(artifact.zipped)} zipped")
        if report.from_runtime.get(artifact.name):
            names = ", ".join(sorted(report.from_runtime[artifact.name]))
            lines.append(f"  from the Lambda runtime, not bundled: {names}")
        lines.append("")
    by_name = {artifact.name: artifact for artifact in report.artifacts}
    lines.append(
        f"function + layers, unzipped (budget {_size(max_unzipped)}, "
        f"Lambda's limit {_size(LAMBDA_UNZIPPED_LIMIT)}); zips within {_size(max_zipped)}:"
    )
    sums = []
    for artifact in report.artifacts:
        if artifact.kind != "function":
            continue
        layers = [by_name[name] for name in artifact.layers if name in by_name]
        total = artifact.unzipped + sum(layer.unzipped for layer in layers)
        parts = " + ".join(f"{layer.name} {_size(layer.unzipped)}" for layer in layers)
        sums.append((artifact.name, _size(total), f"= {_size(artifact.unzipped)} + {parts}"))
    if sums:
        lines += _table(sums, right=[1])
    lines.append("")
    if report.violations:
        lines.append(f"package check FAILED: {len(report.violations)} violation(s)")
        lines += [f"  {violation}" for violation in report.violations]
    else:
        lines.append(f"package check passed: {len(report.artifacts)} artifacts, no violations")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m appauth_dev.package_check",
        description="Check a `sam build` output: platforms, sizes, nothing developer-only.",
    )
    parser.add_argument("build_dir", nargs="?", default=".aws-sam/build", type=Path)
    parser.add_argument(
        "--max-unzipped-mib",
        type=float,
        default=DEFAULT_MAX_UNZIPPED_MIB,
        help="budget for a function and its layers, unzipped (default: %(default)s)",
    )
    parser.add_argument(
        "--max-zipped-mib",
        type=float,
        default=DEFAULT_MAX_ZIPPED_MIB,
        help="budget for each artifact, zipped (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if not (args.build_dir / "template.yaml").is_file():
        print(f"no {args.build_dir}/template.yaml: run `make package` (or sam build) first")
        return 2
    max_unzipped = int(args.max_unzipped_mib * MIB)
    max_zipped = int(args.max_zipped_mib * MIB)
    report = check_build(args.build_dir, max_unzipped=max_unzipped, max_zipped=max_zipped)
    print(render(report, max_unzipped=max_unzipped, max_zipped=max_zipped))
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
