"""Checks every host URI passes before gpupass uses it, whatever the platform.

A URI is shown in errors, `--json`, `hosts list` and snapshot files, so it must never carry a secret; a
port gpupass cannot use and a character a terminal would obey are refused here with a clear error instead of
surfacing later as a traceback. Platform rules (which query parameters a scheme takes) are the backends'
(`Backend.check_uri`); `parameters()` is the helper they use.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

from gpupass.core.errors import UsageError

_USERINFO = r"://([^/?#]*)@"  # compiled on first use (re's cache), not at import
_UNPRINTABLE = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}
PASSWORD_REMEDY = ("take the password out of the URI and give it through GPUPASS_PASSWORD_<HOST>, password_env or "
                   "keyring = true in the config file (`gpupass hosts add NAME URI --password-env VAR`)")


def redacted(uri: str) -> str:
    """The URI with any password replaced by ***, for messages about a URI that carries one.

    Found by its shape (SCHEME://USER:PASSWORD@HOST, up to the last '@' before the path), not by urlsplit:
    text that urlsplit does not see as a URI (no scheme, an unclosed '[') must not leak its password either.
    """
    match = re.search(_USERINFO, uri)
    if not match or ":" not in match[1]:
        return uri
    return uri[:match.start(1)] + match[1].split(":", 1)[0] + ":***" + uri[match.end(1):]


def check_uri(uri: str) -> None:
    """Refuse a URI with a password in it, an unusable port, or characters that are no part of a URI."""
    if not isinstance(uri, str) or not uri:
        raise UsageError("a host URI is empty", remedy="write one such as qemu+ssh://admin@node/system")
    # Control and format characters and line separators are no part of a URI (RFC 3986) and a terminal may
    # obey them when the URI is printed. (A space is let through: a lab's test:/// path may hold one.)
    if any(unicodedata.category(c) in _UNPRINTABLE for c in uri):
        raise UsageError(f"the host URI {ascii(redacted(uri))} contains control characters",
                         remedy="percent-encode them, or check what was pasted")
    try:
        unquote(uri, errors="strict")
    except UnicodeDecodeError as exc:
        # Names gpupass shows and hands to SDKs are text; libvirt-python fails inside its C binding (SystemError)
        # on a URI that decodes to invalid UTF-8.
        raise UsageError(f"{redacted(uri)!r} has percent-escapes that are not UTF-8 text",
                         remedy="percent-encode UTF-8 bytes only (e.g. %C3%A4 for ä)") from exc
    try:
        parts = urlsplit(uri)
    except ValueError as exc:  # e.g. "Invalid IPv6 URL" for an unclosed [
        raise UsageError(f"{redacted(uri)!r} is not a valid URI: {exc}",
                         remedy="write it as SCHEME://[USER@]HOST[:PORT]/PATH, IPv6 addresses in [brackets]") from exc
    if not parts.scheme:
        raise UsageError(f"{redacted(uri)!r} names no scheme", remedy="start it with qemu+ssh://, esxi://, hyperv:// or the like")
    if parts.password is not None or redacted(uri) != uri:
        raise UsageError(f"the host URI {redacted(uri)} carries a password, which gpupass never takes from a URI "
                         "(it would show in errors, --json, `hosts list` and snapshot files)", remedy=PASSWORD_REMEDY)
    try:
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"the port in {redacted(uri)!r} is not a number from 1 to 65535",
                         remedy="write HOST:PORT with a port from 1 to 65535, or leave the port out") from exc
    if port == 0:
        raise UsageError(f"the port in {redacted(uri)!r} is 0", remedy="write a port from 1 to 65535, or leave it out")


def parameters(uri: str, allowed: Mapping[str, Callable[[str], str | None]], platform: str) -> dict[str, str]:
    """The URI's query parameters, each checked by its validator in `allowed` (which returns a problem or None).

    A parameter not in `allowed`, one given twice, or one whose value is refused is an error naming it.
    """
    query = urlsplit(uri).query
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise UsageError(f"the query of {redacted(uri)!r} is not NAME=VALUE pairs joined by &",
                         remedy="write ?NAME=VALUE&NAME=VALUE, percent-encoding the values") from exc
    found: dict[str, str] = {}
    for name, value in pairs:
        if name in found:
            raise UsageError(f"the URI parameter {name!r} is given twice in {redacted(uri)!r}", remedy="give it once")
        check = allowed.get(name)
        if check is None:
            names = ", ".join(sorted(allowed)) or "none"
            raise UsageError(f"{platform} host URIs do not take the parameter {name!r} ({redacted(uri)!r})",
                             remedy=f"remove it; the parameters gpupass accepts here: {names}")
        problem = check(value)
        if problem:
            raise UsageError(f"the URI parameter {name}={value!r} is refused: {problem}",
                             remedy=f"remove {name}= from the URI or give it an accepted value")
        found[name] = value
    return found


def one_of(*values: str) -> Callable[[str], str | None]:
    return lambda value: None if value in values else f"it must be one of {', '.join(values)}"


def absolute_path(value: str) -> str | None:
    return None if value.startswith("/") else "it must be an absolute path"
