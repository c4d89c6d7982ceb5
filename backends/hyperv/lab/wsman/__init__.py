"""Stdlib WS-Management endpoint serving a Hyper-V host model to pywinrm."""
from .server import CMD_LINE_LIMIT, WSManEndpoint, clixml_errors, serve

__all__ = ["CMD_LINE_LIMIT", "WSManEndpoint", "clixml_errors", "serve"]
