"""Display names of images and detectors: labels only, never used to build a path.

Names are shown in the web app and written into WMTS XML, where control characters are not
allowed even escaped (one such name would break the service document for every layer), and
PostgreSQL text cannot hold NUL. Path-like names ("../x") are harmless labels: files are keyed
by ids.
"""

from __future__ import annotations

import re

from catalog.errors import InvalidNameError

MAX_NAME_LENGTH = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(name: str, what: str = "name") -> str:
    """The name stripped of surrounding spaces, or InvalidNameError saying what is wrong."""
    cleaned = name.strip()
    if not cleaned:
        raise InvalidNameError(f"the {what} is empty")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"the {what} has {len(cleaned)} characters; at most {MAX_NAME_LENGTH}"
        )
    found = _CONTROL.search(cleaned)
    if found:
        raise InvalidNameError(
            f"the {what} contains the control character {found.group()!r}; use printable text"
        )
    return cleaned
