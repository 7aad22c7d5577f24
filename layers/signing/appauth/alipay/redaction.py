"""Masking for anything secret that must be mentioned (logs, CLI output, errors)."""

from __future__ import annotations


def mask(secret: str | None) -> str:
    """Enough to tell two tokens apart in a log, not enough to use one: ``2019…A89 (40)``."""
    if not secret:
        return "<empty>"
    if len(secret) < 16:
        return f"*** ({len(secret)})"
    return f"{secret[:4]}…{secret[-3:]} ({len(secret)})"
