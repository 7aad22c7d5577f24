#!/bin/sh
# `make bench` runs this (after installing requirements/bench.txt): the bench from the
# repository root with the project's venv. Arguments go to `python -m bench` (--quick, --only).
set -eu
cd "$(dirname "$0")/.."
exec "${BENCH_PYTHON:-.venv/bin/python}" -m bench "$@"
