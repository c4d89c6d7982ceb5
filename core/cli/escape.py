"""Names from a host (VM names, labels, a platform's messages) are data: on a terminal they must never act.

A VM named "\x1b]0;...\x07" or "\x1b[2J" would retitle or clear the admin's terminal if printed raw, and a
right-to-left override can make one name look like another. Human output passes every such string through
`shown()`, which writes unprintable characters as Python escapes; `--json` keeps names exact (JSON escapes
control characters itself).
"""

from __future__ import annotations


def shown(text: object, multiline: bool = False) -> str:
    """`text` with every character str.isprintable() rejects (C0/C1 controls, format characters such as bidi
    overrides, line separators, unassigned code points) written as \\xNN / \\uNNNN; newlines and tabs are kept
    when `multiline` (messages and previews that are laid out in lines)."""
    text = str(text)
    if text.isprintable():
        return text
    keep = "\n\t" if multiline else ""
    return "".join(c if c.isprintable() or c in keep else ascii(c)[1:-1] for c in text)
