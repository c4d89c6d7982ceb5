"""A WS-Management endpoint (the five WinRS shell actions pywinrm uses) in front of a HostModel.

* stdlib ``http.server`` (threaded, HTTP/1.1 keep-alive, TCP_NODELAY), bound to 127.0.0.1, path ``/wsman``;
* Basic auth, or NTLM with pyspnego's acceptor and MS-WSMV message encryption
  (``multipart/encrypted; protocol="application/HTTP-SPNEGO-session-encrypted"``) exactly as pywinrm
  speaks it over plain HTTP;
* Create shell / Command / Receive / Signal / Delete;
* a command line ``powershell -encodedcommand <UTF-16LE base64>`` is decoded and run by the host model's
  interpreter; other command lines fail like cmd.exe would ("... is not recognized ...");
* cmd.exe's 8,191 character command line limit: longer lines produce "The command line is too long."
  on stderr and exit code 1, as a real host does;
* PowerShell errors are written to stderr as CLIXML (``#< CLIXML`` + ``<S S="Error">`` lines), the way
  powershell.exe does when its stderr is redirected, so pywinrm's ``run_ps`` turns them back into text.
"""
from __future__ import annotations

import base64
import binascii
import http.server
import math
import os
import re
import socket
import ssl
import struct
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

import spnego

from ..hostmodel.interp import ScriptError, run_script
from ..hostmodel.model import HostModel

CMD_LINE_LIMIT = 8191

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "p": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
}
A_CREATE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create"
A_DELETE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete"
A_COMMAND = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command"
A_RECEIVE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive"
A_SIGNAL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal"
SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
DONE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"
ENC_PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
BOUNDARY = b"--Encrypted Boundary"

_ENC_RE = re.compile(r"^\s*powershell(?:\.exe)?\s+(?:-noprofile\s+|-noninteractive\s+|-executionpolicy\s+\S+\s+)*"
                     r"-(?:e|ec|enc|encodedcommand)\s+(\S+)\s*$", re.I)


@dataclass
class CommandState:
    stdout: bytes
    stderr: bytes
    exit_code: int
    # A stalled command (WSManEndpoint.stall_next_script): done only from this time.monotonic() on (inf: never), and
    # set when a Signal or the shell's Delete ends it first.
    ready_at: float = 0.0
    ended: threading.Event = field(default_factory=threading.Event)
    drop_reply: bool = False   # WSManEndpoint.drop_reply_of_next
    drip: float | None = None  # WSManEndpoint.drip_reply_of_next: seconds between the bytes of its first reply


@dataclass
class Shell:
    shell_id: str
    owner: str
    commands: dict[str, CommandState] = field(default_factory=dict)


def clixml_errors(text: str) -> bytes:
    """Render error text as powershell.exe writes it to a redirected stderr."""
    parts = []
    for line in text.split("\n"):
        enc = escape(line).replace("\r", "_x000D_").replace("\t", "_x0009_")
        parts.append(f'<S S="Error">{enc}_x000D__x000A_</S>')
    return ('#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
            + "".join(parts) + "</Objs>").encode("utf-8")


class _NtlmUsers:
    """pyspnego's NTLM acceptor reads users from the file named by $NTLM_USER_FILE.

    Each server keeps its own file; a process-wide lock sets the variable only around accept steps.
    """
    lock = threading.Lock()

    def __init__(self, users: dict[str, str]):
        fd, self.path = tempfile.mkstemp(prefix="gpupass-wsman-ntlm-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for user, pw in users.items():
                dom, _, name = user.rpartition("\\")
                fh.write(f"{dom}:{name}:{pw}\n")

    def step(self, ctx: spnego.ContextProxy, token: bytes) -> bytes | None:
        with self.lock:
            old = os.environ.get("NTLM_USER_FILE")
            os.environ["NTLM_USER_FILE"] = self.path
            try:
                return ctx.step(token)
            finally:
                if old is None:
                    os.environ.pop("NTLM_USER_FILE", None)
                else:
                    os.environ["NTLM_USER_FILE"] = old

    def new_context(self) -> spnego.ContextProxy:
        with self.lock:
            old = os.environ.get("NTLM_USER_FILE")
            os.environ["NTLM_USER_FILE"] = self.path
            try:
                return spnego.server(protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm)
            finally:
                if old is None:
                    os.environ.pop("NTLM_USER_FILE", None)
                else:
                    os.environ["NTLM_USER_FILE"] = old

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


class _ReplyDropped(Exception):
    """Raised inside handle_soap to end the connection without a reply (WSManEndpoint.drop_next_receive)."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    # per-connection NTLM state lives on the handler (one handler per TCP connection)
    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ntlm_ctx: spnego.ContextProxy | None = None
        self.ntlm_user: str | None = None

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet
        if self.server.app.verbose:
            super().log_message(fmt, *args)

    def _send(self, code: int, body: bytes = b"", ctype: str | None = None,
              headers: dict[str, str] | None = None, close: bool = False) -> None:
        self.send_response(code)
        if ctype:
            self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Server", "Microsoft-HTTPAPI/2.0")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self) -> None:
        self._send(405, b"", close=True)

    def do_POST(self) -> None:
        app = self.server.app
        body = self._read_body()
        if self.path.split("?")[0].rstrip("/").lower() != "/wsman":
            self._send(404, b"", close=True)
            return
        auth = self.headers.get("Authorization", "")
        if app.auth == "basic":
            if not self._basic_ok(auth):
                self._send(401, b"", headers={"WWW-Authenticate": 'Basic realm="WSMAN"'})
                return
            user = self.basic_user
            plain = body
        else:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() in ("negotiate", "ntlm") and token:
                self._ntlm_step(scheme, token)
                if self.ntlm_ctx is None or not self.ntlm_ctx.complete:
                    return
                # the authenticating request carries pywinrm's empty body
                if not body:
                    self._send(200, b"", ctype="application/soap+xml;charset=UTF-8")
                    return
            if self.ntlm_ctx is None or not self.ntlm_ctx.complete:
                self._send(401, b"", headers={"WWW-Authenticate": "Negotiate"})
                return
            user = self.ntlm_user or ""
            ctype = self.headers.get("Content-Type", "")
            if "multipart/encrypted" not in ctype or ENC_PROTOCOL not in ctype:
                # WinRM refuses unencrypted traffic over HTTP (AllowUnencrypted=false)
                self._send(401, b"", headers={"WWW-Authenticate": "Negotiate"}, close=True)
                return
            try:
                plain = self._decrypt(body)
            except Exception:
                self._send(400, b"", close=True)
                return
        try:
            status, reply = app.handle_soap(plain, user, self.headers.get("Host", "127.0.0.1"))
        except _ReplyDropped:
            self.close_connection = True  # nothing is sent: the client sees the connection end
            return
        drip = app.take_drip()
        if app.auth == "ntlm":
            reply = self._encrypt(reply)
            ctype = f'multipart/encrypted;protocol="{ENC_PROTOCOL}";boundary="Encrypted Boundary"'
        else:
            ctype = "application/soap+xml;charset=UTF-8"
        if drip is not None:
            self._drip(status, reply, ctype, drip)
        else:
            self._send(status, reply, ctype=ctype)

    def _drip(self, code: int, body: bytes, ctype: str, interval: float) -> None:
        """The whole response -- status line, headers, body -- one byte every `interval` seconds, until it is sent or
        the client goes (WSManEndpoint.drip_reply_of_next): each read of the client's socket gets a byte well within
        any read timeout, so only a bound on the whole request ends it. The connection closes after."""
        app = self.server.app
        head = (f"HTTP/1.1 {code} {http.server.BaseHTTPRequestHandler.responses.get(code, ('',))[0]}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nServer: Microsoft-HTTPAPI/2.0\r\n"
                "Connection: close\r\n\r\n").encode("ascii")
        self.close_connection = True
        app.dripping.set()
        try:
            for i, byte in enumerate(head + body):
                if i:
                    time.sleep(interval)
                self.wfile.write(bytes((byte,)))
                self.wfile.flush()
        except OSError:   # the client cut the connection: what bounds the request
            app.drip_cut.set()

    # -- Basic
    def _basic_ok(self, auth: str) -> bool:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, pw = base64.b64decode(token).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        ok = self.server.app.check_password(user, pw)
        self.basic_user = user
        return ok

    # -- NTLM
    def _ntlm_step(self, scheme: str, token_b64: str) -> None:
        app = self.server.app
        try:
            token = base64.b64decode(token_b64)
        except binascii.Error:
            self._send(400, b"", close=True)
            return
        if token[:8] == b"NTLMSSP\x00" and token[8:12] == b"\x01\x00\x00\x00":
            self.ntlm_ctx = app.ntlm.new_context()
        if self.ntlm_ctx is None:
            self._send(401, b"", headers={"WWW-Authenticate": "Negotiate"}, close=True)
            return
        try:
            out = app.ntlm.step(self.ntlm_ctx, token)
        except Exception:
            self.ntlm_ctx = None
            self._send(401, b"", headers={"WWW-Authenticate": "Negotiate"}, close=True)
            return
        if not self.ntlm_ctx.complete:
            self._send(401, b"", headers={"WWW-Authenticate": f"{scheme} {base64.b64encode(out or b'').decode()}"})
            return
        principal = self.ntlm_ctx.client_principal or ""
        if not app.known_user(principal):
            self.ntlm_ctx = None
            self._send(401, b"", headers={"WWW-Authenticate": "Negotiate"}, close=True)
            return
        self.ntlm_user = principal

    def _decrypt(self, body: bytes) -> bytes:
        parts = [p for p in body.split(BOUNDARY + b"\r\n") if p]
        out = b""
        for i in range(0, len(parts) - 1, 2):
            header, payload = parts[i], parts[i + 1]
            length = int(header.split(b"Length=")[1].split(b"\r\n")[0])
            if payload.endswith(BOUNDARY + b"--\r\n"):
                payload = payload[: -len(BOUNDARY + b"--\r\n")]
            data = payload.replace(b"\tContent-Type: application/octet-stream\r\n", b"", 1)
            sig_len = struct.unpack("<i", data[:4])[0]
            sig, enc = data[4:4 + sig_len], data[4 + sig_len:]
            assert self.ntlm_ctx is not None
            msg = self.ntlm_ctx.unwrap(sig + enc).data
            if len(msg) != length:
                raise ValueError("length mismatch")
            out += msg
        return out

    def _encrypt(self, msg: bytes) -> bytes:
        assert self.ntlm_ctx is not None
        wrapped = self.ntlm_ctx.wrap(msg, encrypt=True).data
        sig, enc = wrapped[:16], wrapped[16:]
        return (BOUNDARY + b"\r\n\tContent-Type: " + ENC_PROTOCOL.encode() + b"\r\n"
                b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=" + str(len(msg)).encode()
                + b"\r\n" + BOUNDARY + b"\r\n\tContent-Type: application/octet-stream\r\n"
                + struct.pack("<i", len(sig)) + sig + enc + BOUNDARY + b"--\r\n")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: "WSManEndpoint"


class WSManEndpoint:
    """A running endpoint. Use :func:`serve` to start one; ``.stop()`` to stop it."""

    def __init__(self, host_model: HostModel, auth: str, users: dict[str, str], host: str, port: int,
                 verbose: bool = False, state_path: str | os.PathLike[str] | None = None,
                 tls: ssl.SSLContext | None = None):
        if auth not in ("basic", "ntlm"):
            raise ValueError("auth must be 'basic' or 'ntlm'")
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("the test endpoint binds 127.0.0.1 only")
        self.model = host_model
        self.auth = auth
        self.users = dict(users)
        self.verbose = verbose
        self.state_path = os.fspath(state_path) if state_path is not None else None
        self.shells: dict[str, Shell] = {}
        self.lock = threading.Lock()
        self.scripts: list[str] = []            # every decoded script, in order (for tests)
        self.runs = []
        self.command_lines: list[str] = []
        self.ntlm = _NtlmUsers(self.users) if auth == "ntlm" else None
        self.httpd = _Server(("127.0.0.1", port), _Handler)
        self.httpd.app = self
        self.port = self.httpd.server_address[1]
        if tls is not None:  # an HTTPS listener, as WinRM's on 5986: the handshake happens on accept
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"{'https' if tls is not None else 'http'}://127.0.0.1:{self.port}/wsman"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"wsman-{self.port}", daemon=True)
        self.thread.start()

    # -- lifecycle
    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
        if self.ntlm:
            self.ntlm.remove()

    def __enter__(self) -> "WSManEndpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- fault injection (delegates to the model so it also works without the endpoint)
    def inject_fault(self, cmdlet: str, nth: int = 1, message: str | None = None) -> None:
        """Make the ``nth`` call of ``cmdlet`` (counted from now, across scripts) fail with a terminating error."""
        self.model.inject_fault(cmdlet, nth, message)

    def clear_faults(self) -> None:
        self.model.clear_faults()
        self.drop_replies = 0
        self._drop_marker = None

    # A reply lost on the way back: the host ran the command (its effects stay), but the connection closes
    # before the client reads the output -- what a dropped network or a proxy reset does after the fact.
    drop_replies = 0

    def drop_next_receive(self, count: int = 1) -> None:
        self.drop_replies = count

    # ... the same for the next script holding `containing` only: it runs, and the first Receive of it is dropped.
    _drop_marker: str | None = None

    def drop_reply_of_next(self, containing: str) -> None:
        self._drop_marker = containing

    # A command held on the wire: the next Command is neither run nor answered until release_command(); a client
    # killed meanwhile has sent its script all the same, and the host runs it when it gets to it.
    _hold: threading.Event | None = None
    _hold_marker = ""
    command_held = threading.Event()
    command_done = threading.Event()

    _hold_runs = True

    def hold_next_command(self, containing: str = "", runs: bool = True) -> None:
        """Hold the next Command (whose script contains ``containing``, if given); command_held is set while it
        waits, command_done once it has run. ``runs`` False: released, it is neither run nor answered (its connection
        closed): what a client killed just before it sent the request leaves -- nothing of it reaches the host."""
        self.command_held, self.command_done = threading.Event(), threading.Event()
        self._hold_marker, self._hold_runs = containing, runs
        self._hold = threading.Event()

    _holding: threading.Event | None = None

    def release_command(self) -> None:
        for gate in (self._hold, self._holding):
            if gate is not None:
                gate.set()

    # The host's PowerShell killed in the middle of a script: a MODEL of that failure, assumed (no published output of
    # it; what it rests on: hostmodel/interp.py, KILLED_EXIT_CODE). The next script holding `containing` stops after
    # `statements` statements; the command ends with what it printed so far and KILLED_EXIT_CODE.
    _kill_after: int | None = None
    _kill_marker = ""

    def kill_next_script_after(self, statements: int, containing: str = "") -> None:
        self._kill_after, self._kill_marker = statements, containing

    # A script that takes long on the host, or never ends (a cmdlet that hangs): the next script holding `containing`
    # runs its first `after` statements (None: all of it) when its Command comes, and its command then stays running:
    # each Receive waits the OperationTimeout that request carries and is answered with the WS-Management timeout fault
    # (MS-WSMV, Receive: with no output before the OperationTimeout "the server MUST return a WSManFault with the Code
    # attribute equal to 2150858793. When the client receives this fault, it SHOULD issue another Receive request",
    # quoted in WinRb/WinRM#123), until `seconds` have passed since the Command (then its output comes as for any
    # script: a script stopped at `after` ends like a killed one, KILLED_EXIT_CODE), or until a Signal to the command
    # or the Delete of its shell ends it ("terminate": "Terminates the shell or command", MS-WSMV 2.2.5.6): what its
    # first `after` statements did stays, the rest never runs (the lab's kill model again, assumed as it is).
    _stall: tuple[str, int | None, float] | None = None
    stalled = threading.Event()     # set once a stalled command is running
    stall_ended = threading.Event()  # set once a Signal or a Delete ended it

    def stall_next_script(self, containing: str = "", after: int | None = 0, seconds: float = math.inf) -> None:
        self.stalled, self.stall_ended = threading.Event(), threading.Event()
        self._stall = (containing, after, seconds)

    # A reply that comes a byte at a time (a host, or something between, dripping it): the first Receive reply of the
    # next script holding `containing` (or, with shell=True, the reply to the next Create of a shell) is sent one byte
    # every `interval` seconds (_Handler._drip); the script itself runs as any other. `dripping` is set once it starts,
    # `drip_cut` once the client cut the connection before its end.
    _drip_marker: str | None = None
    _drip_shell: float | None = None
    _drip_interval = 0.5
    dripping = threading.Event()
    drip_cut = threading.Event()
    _drip_now = threading.local()

    def drip_reply_of_next(self, containing: str = "", interval: float = 0.5, shell: bool = False) -> None:
        self.dripping, self.drip_cut = threading.Event(), threading.Event()
        if shell:
            self._drip_shell = interval
        else:
            self._drip_marker, self._drip_interval = containing, interval

    def take_drip(self) -> float | None:
        """The interval to drip the reply the handler thread is about to send (None: send it whole)."""
        interval = getattr(self._drip_now, "interval", None)
        self._drip_now.interval = None
        return interval

    before_killed: tuple[dict[str, Any], str] | None = None

    # (script, statements it ran, killed) for every script run, in order (a test counts a script's statements here)
    runs: list[tuple[str, int, bool]]

    def save_state(self) -> None:
        """Write the model to ``state_path`` (atomically) so a restarted lab endpoint resumes from it."""
        if self.state_path is None:
            return
        with self.model.lock:
            text = self.model.to_json()
        tmp = f"{self.state_path}.tmp-{os.getpid()}-{threading.get_ident()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, self.state_path)

    # -- auth helpers
    def check_password(self, user: str, pw: str) -> bool:
        for u, p in self.users.items():
            if _same_user(u, user) and p == pw:
                return True
        return False

    def known_user(self, principal: str) -> bool:
        return any(_same_user(u, principal) for u in self.users)

    # -- SOAP
    def handle_soap(self, body: bytes, user: str, host_header: str) -> tuple[int, bytes]:
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            return 400, b""
        hdr = root.find("s:Header", NS)
        action = _text(hdr, "a:Action")
        msg_id = _text(hdr, "a:MessageID") or ""
        shell_id = None
        if hdr is not None:
            for sel in hdr.iterfind("w:SelectorSet/w:Selector", NS):
                if sel.get("Name") == "ShellId":
                    shell_id = sel.text
        body_el = root.find("s:Body", NS)
        try:
            if action == A_CREATE:
                if self._drip_shell is not None:
                    self._drip_now.interval, self._drip_shell = self._drip_shell, None
                sid = str(uuid.uuid4()).upper()
                with self.lock:
                    self.shells[sid] = Shell(sid, user)
                inner = (f'<x:ResourceCreated><a:Address>http://{escape(host_header)}/wsman</a:Address>'
                         f'<a:ReferenceParameters><w:ResourceURI>{SHELL_URI}</w:ResourceURI><w:SelectorSet>'
                         f'<w:Selector Name="ShellId">{sid}</w:Selector></w:SelectorSet></a:ReferenceParameters>'
                         f'</x:ResourceCreated><rsp:Shell><rsp:ShellId>{sid}</rsp:ShellId>'
                         f'<rsp:ResourceUri>{SHELL_URI}</rsp:ResourceUri><rsp:Owner>{escape(user)}</rsp:Owner>'
                         '<rsp:ClientIP>127.0.0.1</rsp:ClientIP><rsp:IdleTimeOut>PT7200.000S</rsp:IdleTimeOut>'
                         '<rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr'
                         '</rsp:OutputStreams><rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime>'
                         '<rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity></rsp:Shell>')
                return 200, _envelope(A_CREATE + "Response", msg_id, inner)
            shell = self.shells.get(shell_id or "")
            if shell is None:
                return 500, _fault(msg_id, "s:Sender", "w:InvalidSelectors", 2150858843,
                                   "The request for the Windows Remote Shell with ShellId "
                                   f"{shell_id} failed because the shell was not found on the server. Possible "
                                   "causes are: the specified ShellId is incorrect or the shell no longer exists on "
                                   "the server. Provide the correct ShellId or create a new shell and retry the "
                                   "operation.")
            if action == A_COMMAND:
                cl = body_el.find("rsp:CommandLine", NS) if body_el is not None else None
                command = _text(cl, "rsp:Command") or ""
                args = [a.text or "" for a in (cl.iterfind("rsp:Arguments", NS) if cl is not None else [])]
                line = " ".join([command] + args)
                hold = self._hold
                held = hold is not None and self._hold_marker in _script_of(line)
                if held and hold is not None:
                    self._hold, self._holding = None, hold
                    self.command_held.set()
                    hold.wait(60)
                    if not self._hold_runs:
                        self.command_done.set()
                        raise _ReplyDropped()
                cid = str(uuid.uuid4()).upper()
                stall = self._stall
                if stall is not None and stall[0] in _script_of(line):
                    self._stall = None
                    if stall[1] is not None:
                        self.kill_next_script_after(stall[1], stall[0])
                    state = self.run_command_line(line)
                    state.ready_at = time.monotonic() + stall[2]
                    self.stalled.set()
                else:
                    state = self.run_command_line(line)
                if self._drop_marker is not None and self._drop_marker in _script_of(line):
                    self._drop_marker, state.drop_reply = None, True
                if self._drip_marker is not None and self._drip_marker in _script_of(line):
                    self._drip_marker, state.drip = None, self._drip_interval
                shell.commands[cid] = state
                if held:
                    self.command_done.set()
                return 200, _envelope(A_COMMAND + "Response", msg_id,
                                      f"<rsp:CommandResponse><rsp:CommandId>{cid}</rsp:CommandId></rsp:CommandResponse>")
            if action == A_RECEIVE and self.drop_replies > 0:
                self.drop_replies -= 1
                raise _ReplyDropped()
            if action == A_RECEIVE:
                ds = body_el.find("rsp:Receive/rsp:DesiredStream", NS) if body_el is not None else None
                cid = ds.get("CommandId") if ds is not None else None
                st = shell.commands.get(cid or "")
                if st is None:
                    return 500, _fault(msg_id, "s:Sender", "w:InvalidParameter", 2150858843,
                                       "The command was not found.")
                if st.drop_reply:
                    st.drop_reply = False
                    raise _ReplyDropped()
                if st.drip is not None:
                    self._drip_now.interval, st.drip = st.drip, None
                if not st.ended.is_set() and time.monotonic() < st.ready_at:
                    wait = min(_operation_timeout(hdr), st.ready_at - time.monotonic())
                    if not st.ended.wait(wait) and time.monotonic() < st.ready_at:
                        return 500, _fault(msg_id, "s:Receiver", "w:TimedOut", 2150858793,
                                           "The WS-Management service cannot complete the operation within the time "
                                           "specified in OperationTimeout.")
                streams = []
                for name, data in (("stdout", st.stdout), ("stderr", st.stderr)):
                    for i in range(0, len(data), 8192):
                        streams.append(f'<rsp:Stream Name="{name}" CommandId="{cid}">'
                                       f'{base64.b64encode(data[i:i + 8192]).decode()}</rsp:Stream>')
                    streams.append(f'<rsp:Stream Name="{name}" CommandId="{cid}" End="true"></rsp:Stream>')
                inner = (f'<rsp:ReceiveResponse>{"".join(streams)}<rsp:CommandState CommandId="{cid}" '
                         f'State="{DONE}"><rsp:ExitCode>{st.exit_code}</rsp:ExitCode></rsp:CommandState>'
                         '</rsp:ReceiveResponse>')
                return 200, _envelope(A_RECEIVE + "Response", msg_id, inner)
            if action == A_SIGNAL:
                sig = body_el.find("rsp:Signal", NS) if body_el is not None else None
                cid = sig.get("CommandId") if sig is not None else None
                _end(shell.commands.pop(cid or "", None), self.stall_ended)
                return 200, _envelope(A_SIGNAL + "Response", msg_id, "<rsp:SignalResponse/>")
            if action == A_DELETE:
                with self.lock:
                    self.shells.pop(shell.shell_id, None)
                for command in shell.commands.values():  # a real WinRM service ends the shell's commands with it
                    _end(command, self.stall_ended)
                return 200, _envelope(A_DELETE + "Response", msg_id, "")
            return 500, _fault(msg_id, "s:Sender", "a:ActionNotSupported", 2150858757,
                               f"The action {action} is not supported by the service.")
        except _ReplyDropped:
            raise
        except Exception as e:  # pragma: no cover - keep the server alive, report like WinRM would
            return 500, _fault(msg_id, "s:Receiver", "w:InternalError", 2147500037, f"Internal error: {e}")

    def run_command_line(self, line: str) -> CommandState:
        """What cmd.exe + powershell.exe would produce for one WinRS command line."""
        self.command_lines.append(line)
        if len(line) > CMD_LINE_LIMIT:
            return CommandState(b"", b"The command line is too long.\r\n", 1)
        m = _ENC_RE.match(line)
        if not m:
            word = line.strip().split(" ", 1)[0]
            return CommandState(b"", (f"'{word}' is not recognized as an internal or external command,\r\n"
                                      "operable program or batch file.\r\n").encode(), 1)
        try:
            script = base64.b64decode(m.group(1), validate=True).decode("utf-16-le")
        except (binascii.Error, UnicodeDecodeError):
            return CommandState(b"", clixml_errors("Cannot process the command because the value specified "
                                                   "with -EncodedCommand is not properly encoded. The value "
                                                   "must be Base64 encoded."), 1)
        self.scripts.append(script)
        stop_after = None
        if self._kill_after is not None and self._kill_marker in script:
            stop_after, self._kill_after = self._kill_after, None
            with self.model.lock:
                self.before_killed = (self.model.to_dict(), script)   # the host and the script the kill stops
        try:
            res = run_script(self.model, script, stop_after=stop_after)
            self.runs.append((script, res.statements, res.killed))
        except ScriptError as e:
            # Not PowerShell behaviour: the model refuses what it cannot execute faithfully.
            return CommandState(b"", clixml_errors(f"gpupass host model refused the script: {e}"), 1)
        finally:
            self.save_state()
        out = res.stdout.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
        err = clixml_errors(res.stderr.replace("\r\n", "\n")) if res.errors else b""
        return CommandState(out, err, res.exit_code)


def _operation_timeout(header: ET.Element | None) -> float:
    """The request's wsman:OperationTimeout (an xs:duration such as PT20S or PT1.500S), in seconds; 60 without one
    (MS-WSMV 3.2.4.1.2: clients SHOULD set it to 60 seconds)."""
    text = _text(header, "w:OperationTimeout") or ""
    match = re.fullmatch(r"PT(\d+(?:\.\d+)?)S", text.strip())
    return float(match.group(1)) if match else 60.0


def _end(command: CommandState | None, ended: threading.Event) -> None:
    """A command ended by a Signal or its shell's Delete: a stalled one stops waiting (and says so)."""
    if command is not None and not command.ended.is_set() and command.ready_at > time.monotonic():
        command.ended.set()
        ended.set()


def _script_of(line: str) -> str:
    """The PowerShell script of a ``powershell -encodedcommand`` line ("" for any other)."""
    m = _ENC_RE.match(line)
    try:
        return base64.b64decode(m.group(1), validate=True).decode("utf-16-le") if m else ""
    except (binascii.Error, UnicodeDecodeError):
        return ""


def _same_user(configured: str, given: str) -> bool:
    c, g = configured.lower(), given.lower()
    if c == g:
        return True
    return c.rpartition("\\")[2] == g.rpartition("\\")[2] and ("\\" not in c or "\\" not in g)


def _text(el: ET.Element | None, path: str) -> str | None:
    if el is None:
        return None
    f = el.find(path, NS)
    return f.text if f is not None else None


def _envelope(action: str, relates_to: str, body: str) -> bytes:
    return (f'<s:Envelope xml:lang="en-US" xmlns:s="{NS["s"]}" xmlns:a="{NS["a"]}" xmlns:x="{NS["x"]}" '
            f'xmlns:w="{NS["w"]}" xmlns:rsp="{NS["rsp"]}" xmlns:p="{NS["p"]}"><s:Header>'
            f'<a:Action>{action}</a:Action><a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>'
            '<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>'
            f'<a:RelatesTo>{escape(relates_to)}</a:RelatesTo></s:Header><s:Body>{body}</s:Body>'
            '</s:Envelope>').encode("utf-8")


def _fault(relates_to: str, code: str, subcode: str, wsman_code: int, text: str) -> bytes:
    body = (f'<s:Fault><s:Code><s:Value>{code}</s:Value><s:Subcode><s:Value>{subcode}</s:Value></s:Subcode>'
            f'</s:Code><s:Reason><s:Text xml:lang="en-US">{escape(text)}</s:Text></s:Reason><s:Detail>'
            f'<f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="{wsman_code}" '
            f'Machine="127.0.0.1"><f:Message>{escape(text)}</f:Message></f:WSManFault></s:Detail></s:Fault>')
    return _envelope("http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", relates_to, body)


def serve(host_model: HostModel, auth: str = "basic", users: dict[str, str] | None = None,
          host: str = "127.0.0.1", port: int = 0, verbose: bool = False,
          state_path: str | os.PathLike[str] | None = None, tls: ssl.SSLContext | None = None) -> WSManEndpoint:
    """Start an endpoint for ``host_model`` on 127.0.0.1 (``port=0``: a free port).

    ``users`` maps user name (``"user"`` or ``"DOMAIN\\user"``) to password.  With ``state_path`` the model
    is written there (JSON) after every script, so a lab restarted with ``HostModel.from_json`` resumes.
    With ``tls`` (a server-side SSLContext) it listens for HTTPS only.
    The caller stops it with ``.stop()`` (or uses it as a context manager).
    """
    return WSManEndpoint(host_model, auth, users or {"Administrator": "Passw0rd!"}, host, port, verbose,
                         state_path, tls)

