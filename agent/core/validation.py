"""Turning msgspec validation errors into the one-line messages start-up stops with."""

from __future__ import annotations

import re

import msgspec

_PATH = re.compile(r"\s*-\s*at `\$\.?([^`]*)`")
_NAMED_FIELD = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")


def split_error(err: msgspec.ValidationError) -> tuple[str, str]:
    """(dotted path of the offending field, the reason without msgspec's path suffix).

    msgspec puts the path of the *containing* object in its suffix when a field is missing or unknown,
    and names the field itself only in the text; both are joined here.
    """
    text = str(err)
    match = _PATH.search(text)
    path = match.group(1) if match else ""
    reason = _PATH.sub("", text)
    named = _NAMED_FIELD.search(reason)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    return path or "?", reason
