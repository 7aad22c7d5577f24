"""``make package``'s checker (appauth_dev.package_check) on a synthetic `sam build` output.

A clean build passes; each case breaks one rule and the checker must name that rule.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.tags import parse_tag

from appauth_dev import package_check
from appauth_dev.package_check import MIB, RUNTIMES, Violation, check_build, main, supported_tags

AARCH64, X86_64 = 183, 62
PY312 = RUNTIMES["python3.12"]


def elf(machine: int = AARCH64, glibc_minor: int = 17) -> bytes:
    """The start of a 64-bit little-endian shared object, and the glibc version it asks for."""
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header += (3).to_bytes(2, "little") + machine.to_bytes(2, "little") + bytes(44)
    return header + f"\0GLIBC_2.{glibc_minor}\0".encode()


class Build:
    """A `sam build` folder: template.yaml, one layer, one function using it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layer = root / "SigningLayer" / "python"
        self.function = root / "CallbackFunction"
        self.template: dict[str, Any] = {
            "Globals": {
                "Function": {
                    "Runtime": "python3.12",
                    "Architectures": ["arm64"],
                    "Layers": [{"Ref": "SigningLayer"}],
                }
            },
            "Resources": {
                "SigningLayer": {
                    "Type": "AWS::Serverless::LayerVersion",
                    "Properties": {
                        "ContentUri": "SigningLayer",
                        "CompatibleRuntimes": ["python3.12"],
                        "CompatibleArchitectures": ["arm64"],
                    },
                },
                "CallbackFunction": {
                    "Type": "AWS::Serverless::Function",
                    "Properties": {
                        "CodeUri": "CallbackFunction",
                        "Handler": "callback_app.lambda_handler",
                    },
                },
                # What Fn::ForEach leaves in the built template: no artifact.
                "Fn::ForEach::Callers": ["Arn", {"Ref": "Arns"}, {}],
            },
        }

    def write(self, path: Path, content: bytes | str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    def dist(
        self,
        site: Path,
        name: str,
        version: str,
        files: dict[str, bytes | str],
        *,
        tag: str | None = "py3-none-any",
        requires: tuple[str, ...] = (),
    ) -> None:
        """An installed wheel: its files, METADATA, WHEEL and a RECORD listing them all."""
        dist_info = f"{name.replace('-', '_')}-{version}.dist-info"
        for relative, content in files.items():
            self.write(site / relative, content)
        metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        metadata += "".join(f"Requires-Dist: {line}\n" for line in requires)
        self.write(site / dist_info / "METADATA", metadata)
        if tag is not None:
            wheel = "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
            wheel += "".join(f"Tag: {line}\n" for line in tag.split())
            self.write(site / dist_info / "WHEEL", wheel)
        record = io.StringIO()
        writer = csv.writer(record, lineterminator="\n")
        for relative in [*files, f"{dist_info}/METADATA", f"{dist_info}/WHEEL"]:
            writer.writerow([relative, "", ""])
        writer.writerow([f"{dist_info}/RECORD", "", ""])
        self.write(site / dist_info / "RECORD", record.getvalue())

    def save(self) -> Path:
        self.write(self.root / "template.yaml", yaml.safe_dump(self.template))
        return self.root


@pytest.fixture
def build(tmp_path: Path) -> Build:
    """A clean build, shaped like ours."""
    b = Build(tmp_path / "build")
    b.write(
        b.layer / "appauth" / "__init__.py",
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import botocore.exceptions\n"  # from the runtime
        "from cryptography.hazmat.primitives import hashes\n"
        "if TYPE_CHECKING:\n"
        "    from mypy_boto3_ssm import SSMClient\n"  # typing only: never imported in Lambda
        "else:\n"
        "    import json\n",
    )
    b.dist(
        b.layer,
        "cryptography",
        "50.0.2",
        {
            "cryptography/__init__.py": "",
            "cryptography/hazmat/bindings/_rust.abi3.so": elf(),
            "cryptography/hazmat/bindings/_helper.cpython-312-aarch64-linux-gnu.so": elf(),
        },
        tag="cp311-abi3-manylinux_2_17_aarch64 cp311-abi3-manylinux2014_aarch64",
        requires=("cffi>=2.0; platform_python_implementation != 'PyPy'", "pytest; extra == 'test'"),
    )
    b.dist(
        b.layer,
        "cffi",
        "2.1.1",
        {"cffi/__init__.py": "", "_cffi_backend.cpython-312-aarch64-linux-gnu.so": elf()},
        tag="cp312-cp312-manylinux_2_28_aarch64",
    )
    b.dist(
        b.layer,
        "aws-xray-sdk",
        "2.15.0",
        {"aws_xray_sdk/__init__.py": ""},
        requires=("botocore>=1.11.3", "wrapt; python_version < '3'"),
    )
    b.dist(
        b.layer,
        "certifi",
        "2026.10.18",
        # A CA bundle, and a third-party distribution's own tests: both allowed.
        {"certifi/cacert.pem": "-----BEGIN CERTIFICATE-----\nMIIB\n", "certifi/tests/t.py": ""},
    )
    b.write(
        b.function / "callback_app.py",
        "import appauth\nimport callback_pages\n\n"
        "def lambda_handler(event, context):\n    import segno\n    return {}\n",
    )
    b.write(b.function / "callback_pages.py", "import html\n")
    b.dist(b.function, "segno", "1.6.6", {"segno/__init__.py": ""})
    b.save()
    return b


def rules(root: Path, **budgets: int) -> set[str]:
    return {violation.rule for violation in check_build(root, **budgets).violations}


def test_a_clean_build_passes_with_a_table(
    build: Build, capsys: pytest.CaptureFixture[str]
) -> None:
    report = check_build(build.root)
    assert report.violations == []
    assert report.from_runtime["SigningLayer"] == {"botocore"}
    assert main([str(build.root)]) == 0
    out = capsys.readouterr().out
    assert "package check passed" in out
    assert re.search(
        r"\n  cryptography +50\.0\.2 +cp311-abi3-manylinux_2_17_aarch64 +[\d.]+ KiB\n", out
    )
    assert re.search(r"\n  appauth +\(own code\) +source +[\d.]+ KiB\n", out)
    assert "zipped" in out
    assert "CallbackFunction" in out


def _x86_wheel(b: Build) -> None:
    b.dist(
        b.layer,
        "wrapt",
        "2.5.2",
        {"wrapt/__init__.py": ""},
        tag="cp312-cp312-manylinux_2_17_x86_64",
    )


def _newer_python_wheel(b: Build) -> None:
    b.dist(
        b.layer,
        "wrapt",
        "2.5.2",
        {"wrapt/__init__.py": ""},
        tag="cp313-cp313-manylinux_2_17_aarch64",
    )


def _newer_glibc_wheel(b: Build) -> None:
    b.dist(
        b.layer,
        "wrapt",
        "2.5.2",
        {"wrapt/__init__.py": ""},
        tag="cp312-cp312-manylinux_2_39_aarch64",
    )


def _plain_linux_wheel(b: Build) -> None:
    b.dist(b.layer, "wrapt", "2.5.2", {"wrapt/__init__.py": ""}, tag="cp312-cp312-linux_aarch64")


def _no_wheel_metadata(b: Build) -> None:
    b.dist(b.layer, "wrapt", "2.5.2", {"wrapt/__init__.py": ""}, tag=None)


def _x86_extension(b: Build) -> None:
    b.write(b.layer / "cryptography/hazmat/bindings/_rust.abi3.so", elf(machine=X86_64))


def _extension_for_another_python(b: Build) -> None:
    b.write(b.layer / "cffi/_x.cpython-311-aarch64-linux-gnu.so", elf())


def _extension_needing_newer_glibc(b: Build) -> None:
    b.write(b.layer / "cryptography/hazmat/bindings/_rust.abi3.so", elf(glibc_minor=38))


def _not_an_elf(b: Build) -> None:
    b.write(b.layer / "cffi/_y.so", b"MZ not a shared object")


def _pyc_of_the_build_machine(b: Build) -> None:
    b.write(b.layer / "appauth/__pycache__/__init__.cpython-311.pyc", b"\0")


def _boto3_bundled(b: Build) -> None:
    b.dist(b.layer, "botocore", "1.44.5", {"botocore/__init__.py": ""})


def _pytest_bundled(b: Build) -> None:
    b.dist(b.layer, "pytest", "9.2.0", {"pytest/__init__.py": ""})


def _stubs_bundled(b: Build) -> None:
    b.dist(b.function, "boto3-stubs", "1.43.126", {"boto3-stubs/__init__.pyi": ""})


def _mypy_boto3_bundled(b: Build) -> None:
    b.dist(b.layer, "mypy-boto3-ssm", "1.43.104", {"mypy_boto3_ssm/__init__.pyi": ""})


def _dev_package_copied(b: Build) -> None:
    b.write(b.layer / "appauth_dev" / "__init__.py", "")


def _our_tests_copied(b: Build) -> None:
    b.write(b.function / "tests" / "helpers.py", "")


def _third_party_top_level_tests(b: Build) -> None:
    b.dist(b.layer, "sloppy", "1.0", {"sloppy/__init__.py": "", "tests/__init__.py": ""})


def _a_test_module(b: Build) -> None:
    b.write(b.function / "test_callback_app.py", "")


def _private_key_in_code(b: Build) -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQ" + "A" * 64 + "\n-----END PRIVATE KEY-----\n"
    b.write(b.layer / "appauth" / "fixture.pem", pem)


def _keygen_output_copied(b: Build) -> None:
    b.write(b.function / "keys" / "app_private_key.txt", "MII")


def _console_script_left(b: Build) -> None:
    b.write(b.function / "bin" / "segno", "#!/usr/bin/python\n")


def _outside_python_folder(b: Build) -> None:
    b.write(b.layer.parent / "appauth" / "__init__.py", "")


def _missing_dependency(b: Build) -> None:
    b.dist(b.layer, "requests", "2.34.2", {"requests/__init__.py": ""}, requires=("idna<4,>=2.5",))


def _dependency_too_old(b: Build) -> None:
    b.dist(b.layer, "xcffi", "1.0", {"xcffi/__init__.py": ""}, requires=("cffi>=3",))


def _import_not_found(b: Build) -> None:
    b.write(b.function / "callback_pages.py", "import qrcode\n")


def _layer_imports_function_code(b: Build) -> None:
    b.write(b.layer / "appauth" / "pages.py", "import callback_pages\n")


def _handler_missing(b: Build) -> None:
    b.template["Resources"]["CallbackFunction"]["Properties"]["Handler"] = "callback_app.handler"
    b.save()


def _handler_module_missing(b: Build) -> None:
    (b.function / "callback_app.py").unlink()


def _layer_for_another_architecture(b: Build) -> None:
    layer = b.template["Resources"]["SigningLayer"]["Properties"]
    layer["CompatibleArchitectures"] = ["x86_64"]
    b.save()


def _unknown_runtime(b: Build) -> None:
    b.template["Globals"]["Function"]["Runtime"] = "python2.7"
    b.save()


def _artifact_missing(b: Build) -> None:
    shutil.rmtree(b.function)


BROKEN: dict[str, tuple[Callable[[Build], None], str]] = {
    "x86_64 wheel": (_x86_wheel, "platform"),
    "wheel for Python 3.13": (_newer_python_wheel, "platform"),
    "wheel for glibc 2.39": (_newer_glibc_wheel, "platform"),
    "linux_aarch64 (not manylinux) wheel": (_plain_linux_wheel, "platform"),
    "no WHEEL file": (_no_wheel_metadata, "platform"),
    "x86_64 extension module": (_x86_extension, "elf"),
    "cpython-311 extension module": (_extension_for_another_python, "extension"),
    "extension needing glibc 2.38": (_extension_needing_newer_glibc, "glibc"),
    ".so that is no ELF": (_not_an_elf, "elf"),
    "cpython-311 .pyc": (_pyc_of_the_build_machine, "pyc"),
    "botocore bundled": (_boto3_bundled, "aws-sdk"),
    "pytest bundled": (_pytest_bundled, "dev-only"),
    "boto3-stubs bundled": (_stubs_bundled, "dev-only"),
    "mypy-boto3-ssm bundled": (_mypy_boto3_bundled, "dev-only"),
    "appauth_dev copied": (_dev_package_copied, "dev-only"),
    "tests copied": (_our_tests_copied, "dev-only"),
    "a test module": (_a_test_module, "dev-only"),
    "a distribution's top-level tests": (_third_party_top_level_tests, "dev-only"),
    "a PEM private key": (_private_key_in_code, "private-key"),
    "keygen's private key file": (_keygen_output_copied, "private-key"),
    "console script left by pip": (_console_script_left, "stray"),
    "layer file outside python/": (_outside_python_folder, "stray"),
    "dependency missing": (_missing_dependency, "dependency"),
    "dependency too old": (_dependency_too_old, "dependency"),
    "import not found": (_import_not_found, "import"),
    "layer importing function code": (_layer_imports_function_code, "import"),
    "handler not defined": (_handler_missing, "handler"),
    "handler module missing": (_handler_module_missing, "handler"),
    "layer for another architecture": (_layer_for_another_architecture, "runtime"),
    "unknown runtime": (_unknown_runtime, "runtime"),
    "function folder missing": (_artifact_missing, "missing"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_broken_rule_is_named_and_fails_the_check(
    build: Build, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    breaker, rule = BROKEN[case]
    breaker(build)
    assert rule in rules(build.root)
    assert main([str(build.root)]) == 1
    out = capsys.readouterr().out
    assert "package check FAILED" in out
    assert f"[{rule}]" in out


def test_sizes_over_budget_fail(build: Build) -> None:
    build.write(build.layer / "appauth" / "blob.bin", b"\0" * (2 * MIB))
    assert "size" not in rules(build.root)
    # Unzipped: the function and its layer together; zipped: each artifact.
    assert "size" in rules(build.root, max_unzipped=MIB)
    violations = check_build(build.root, max_zipped=1024).violations
    assert any(v.rule == "size" and "zipped" in v.message for v in violations)
    assert main([str(build.root), "--max-unzipped-mib", "1"]) == 1


def test_lambdas_limit_caps_any_budget(build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(package_check, "LAMBDA_UNZIPPED_LIMIT", 1024)
    assert "size" in rules(build.root, max_unzipped=10 * MIB)


def test_no_build_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    assert "run `make package`" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("tag", "accepted"),
    [
        ("py3-none-any", True),
        ("cp312-cp312-manylinux_2_34_aarch64", True),
        ("cp311-abi3-manylinux2014_aarch64", True),
        ("cp312-cp312-manylinux_2_35_aarch64", False),
        ("cp312-cp312-musllinux_1_2_aarch64", False),
        ("cp311-cp311-manylinux_2_17_aarch64", False),
        ("cp312-cp312-manylinux_2_17_x86_64", False),
    ],
)
def test_tags_the_python312_arm64_runtime_accepts(tag: str, accepted: bool) -> None:
    assert bool(parse_tag(tag) & supported_tags(PY312, "aarch64")) is accepted


def test_violation_names_artifact_and_rule() -> None:
    assert str(Violation("SigningLayer", "pyc", "x")) == "SigningLayer: [pyc] x"
