"""Zip sizes of what ``sam deploy`` uploads: the signing layer and each function, measured by
``appauth_dev.package_check`` (the check ``make package`` runs) beside its budgets.

From ``.aws-sam/build`` when ``make package`` ran (its age is shown). Otherwise the layer alone
is built the way ``sam build`` builds it, by ``layers/signing/Makefile`` (wheels for the Lambda
runtime from the package index), into a temporary folder, unless asked not to build (--quick):
then the rows say to run ``make package``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from appauth_dev.package_check import (
    DEFAULT_MAX_UNZIPPED_MIB,
    DEFAULT_MAX_ZIPPED_MIB,
    MIB,
    check_build,
)
from appauth_dev.stack import DEFAULT_TEMPLATE, load_template
from bench.report import Row

SECTION = "Package"
REPO = Path(__file__).resolve().parents[1]
SAM_BUILD = REPO / ".aws-sam" / "build"
LAYER = "SigningLayer"


@contextmanager
def _layer_only_build() -> Iterator[Path]:
    """The layer built by its Makefile into a temporary build folder with a one-resource
    template (the real template's runtime and architecture), as package_check reads a build."""
    properties = load_template(DEFAULT_TEMPLATE)["Resources"][LAYER]["Properties"]
    with tempfile.TemporaryDirectory(prefix="appauth-bench-layer-") as folder:
        build = Path(folder)
        subprocess.run(  # noqa: S603 (make with our own Makefile)
            [  # noqa: S607 (make from PATH, as `make bench` itself)
                "make",
                "--no-print-directory",
                "-C",
                str(REPO / "layers" / "signing"),
                "build-SigningLayer",
                f"ARTIFACTS_DIR={build / LAYER}",
                f"PIP={sys.executable} -m pip",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=900,
        )
        template = {
            "Resources": {
                LAYER: {
                    "Type": "AWS::Serverless::LayerVersion",
                    "Properties": {
                        "ContentUri": LAYER,
                        "CompatibleRuntimes": properties["CompatibleRuntimes"],
                        "CompatibleArchitectures": properties["CompatibleArchitectures"],
                    },
                }
            }
        }
        (build / "template.yaml").write_text(yaml.safe_dump(template), encoding="utf-8")
        yield build


def _rows_of(build: Path, source: str) -> tuple[list[Row], dict[str, Any]]:
    report = check_build(build)
    by_name = {artifact.name: artifact for artifact in report.artifacts}
    rows = []
    for artifact in sorted(report.artifacts, key=lambda item: (item.kind != "layer", item.name)):
        layers = [by_name[name] for name in artifact.layers if name in by_name]
        unzipped = artifact.unzipped + sum(layer.unzipped for layer in layers)
        rows.append(
            Row(
                SECTION,
                f"{artifact.name} zipped",
                artifact.zipped / MIB,
                "MiB",
                "package_check's budget",
                DEFAULT_MAX_ZIPPED_MIB,
                ratio_at_most=1.0,
                note=f"{source}; unzipped{' with its layers' if layers else ''} "
                f"{unzipped / MIB:.1f} MiB (budget {DEFAULT_MAX_UNZIPPED_MIB:g})",
            )
        )
    rows.append(
        Row(
            SECTION,
            "package_check violations",
            float(len(report.violations)),
            "",
            value_at_most=0,
            note="; ".join(str(violation) for violation in report.violations[:3]),
        )
    )
    details = {
        "source": source,
        "artifacts": {
            artifact.name: {"zipped": artifact.zipped, "unzipped": artifact.unzipped}
            for artifact in report.artifacts
        },
        "violations": [str(violation) for violation in report.violations],
    }
    return rows, details


def measure(*, build_if_missing: bool) -> tuple[list[Row], dict[str, Any]]:
    if (SAM_BUILD / "template.yaml").exists():
        built = datetime.fromtimestamp((SAM_BUILD / "template.yaml").stat().st_mtime, UTC)
        return _rows_of(SAM_BUILD, f".aws-sam/build of {built:%Y-%m-%d %H:%M} UTC")
    if not build_if_missing:
        row = Row(SECTION, f"{LAYER} zipped", None, "MiB", note="not built: run make package")
        return [row], {"source": None}
    with _layer_only_build() as build:
        return _rows_of(build, "the layer built now by layers/signing/Makefile")
