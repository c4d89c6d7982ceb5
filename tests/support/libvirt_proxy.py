"""A UNIX socket in front of a real libvirtd that passes libvirt's RPC through and can lose one reply or hold one
call: the faults a network or a killed client produce, which libvirt itself offers no way to cause.

libvirt's RPC framing (libvirt src/rpc/virnetprotocol.x, "RPC wire format"): every message is a 4-byte big-endian
length that counts itself, then a virNetMessageHeader of six big-endian 32-bit words -- prog, vers, proc, type
(VIR_NET_CALL 0, VIR_NET_REPLY 1, ...), serial, status -- then the payload. "serial is set by client, incrementing
by 1 each time" and a reply's "serial matches that from the corresponding VIR_NET_CALL", which is how a reply is
told to belong to a call here. The remote driver's program is REMOTE_PROGRAM 0x20008086 (src/remote/
remote_protocol.x); the procedures gpupass's KVM writes send are listed below with their numbers there.

* ``drop_reply_to(proc)``: the next call of ``proc`` goes to the daemon, which carries it out; its reply (matched by
  serial) is read and thrown away, and the client's connection is closed: a reply lost after the fact (``times``:
  so many such calls in a row, on whatever connection the client opens next). Drops of different procedures can be
  armed at once (a lost define, then a lost claim removal in the undo that follows).
* ``withhold_reply_to(proc)``: the same, but the connection stays open: the reply simply never comes (a host
  that stalls after doing the work), so the client waits for its own timeout.
* ``lose_call_to(proc)``: the next call of ``proc`` never reaches the daemon: it is thrown away and the client's
  connection closed (a request lost on the way, whose sender sees its connection lost: the host did nothing).
* ``hold_call_to(proc)``: the next call of ``proc`` is kept from the daemon until ``release()``: a request still on
  the wire when its sender dies. Released, it is sent to the daemon, and the daemon's reply to it is waited for
  (``replied``) before the daemon side is closed, so the daemon carries it out whatever happened to the client.
  It can be armed again while a call is held (``release()`` lets the held one go, the next one is then held).

Point gpupass at it with ``qemu+unix:///session?socket=<path>``.
"""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

REMOTE_PROGRAM = 0x20008086
CALL, REPLY = 0, 1  # virNetMessageType

# remote_procedure numbers (src/remote/remote_protocol.x): what libvirt-python's calls in backends/kvm send.
DOMAIN_DEFINE_XML = 11  # virConnect.defineXML
DOMAIN_GET_XML_DESC = 14  # virDomain.XMLDesc
SECRET_DEFINE_XML = 142  # virConnect.secretDefineXML
SECRET_UNDEFINE = 146  # virSecret.undefine
DOMAIN_ATTACH_DEVICE_FLAGS = 160  # virDomain.attachDeviceFlags (a hot-plug)
DOMAIN_DETACH_DEVICE_FLAGS = 161  # virDomain.detachDeviceFlags
# libvirt 7.3's node device calls, read off the wire of libvirt 9.0's client here (remote_protocol.x numbers them in
# order of addition): virConnect.nodeDeviceDefineXML, virNodeDevice.undefine, virNodeDevice.create.
NODE_DEVICE_DEFINE_XML, NODE_DEVICE_UNDEFINE, NODE_DEVICE_CREATE = 428, 429, 430
CONNECT_LIST_ALL_NODE_DEVICES = 285  # virConnect.listAllDevices (libvirt 9.0.0 src/remote/remote_protocol.x line 5943)

# How long a connection whose client is gone waits for the daemon's replies to the calls it had passed on.
_REPLY_WAIT_S = 30.0


def _read_exactly(sock: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read_message(sock: socket.socket) -> bytes | None:
    head = _read_exactly(sock, 4)
    if head is None:
        return None
    (length,) = struct.unpack(">I", head)
    body = _read_exactly(sock, length - 4)
    return None if body is None else head + body


def _header(message: bytes) -> tuple[int, int, int, int]:
    """-> (prog, proc, type, serial) of a framed message."""
    prog, _vers, proc, kind, serial = struct.unpack(">IIiII", message[4:24])
    return prog, proc, kind, serial


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class _Link:
    """One client connection and the proxy's own connection to the daemon for it."""

    def __init__(self, client: socket.socket, daemon: socket.socket) -> None:
        self.client, self.daemon = client, daemon
        self.pending: set[int] = set()  # serials passed to the daemon and not answered yet
        self.to_drop: set[int] = set()  # serials whose reply is to be lost, with the connection
        self.to_withhold: set[int] = set()  # serials whose reply is never passed on
        self.answered = threading.Condition()


class LibvirtProxy:
    def __init__(self, daemon_socket: Path, path: Path) -> None:
        self.daemon_socket, self.path = Path(daemon_socket), Path(path)
        self._lock = threading.Lock()
        self._drops: dict[int, list[int]] = {}  # proc -> [calls of it still to let through, replies still to lose]
        self._withhold: tuple[int, int] | None = None
        self._hold: tuple[int, int] | None = None
        self._lose: tuple[int, int] | None = None
        self.lost = threading.Event()  # a call was thrown away before the daemon got it
        self._held_at: tuple[_Link, int] | None = None  # the connection and serial of the call held
        self.held = threading.Event()  # a call is being held
        self.dropped = threading.Event()  # a reply was lost
        self.replied = threading.Event()  # the daemon answered the call that was held
        self._go = threading.Event()  # what the next call held waits for
        self._held_go: threading.Event | None = None  # what the call held now waits for
        self._gates: list[threading.Event] = [self._go]
        self._closed = False
        self._links: list[_Link] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(16)
        threading.Thread(target=self._accept, name="libvirt-proxy", daemon=True).start()

    @property
    def uri(self) -> str:
        return f"qemu+unix:///session?socket={self.path}"

    def drop_reply_to(self, proc: int, skip: int = 0, times: int = 1) -> None:
        """Lose the replies to the next `times` calls of `proc` (after letting `skip` such calls through)."""
        with self._lock:
            self._drops[proc] = [skip, times]
            self.dropped.clear()

    def withhold_reply_to(self, proc: int, skip: int = 0) -> None:
        """Keep back the reply to the next call of `proc` (after letting `skip` such calls through), with the connection
        left open."""
        with self._lock:
            self._withhold = (proc, skip)

    def lose_call_to(self, proc: int, skip: int = 0) -> None:
        """Throw the next call of `proc` away (after letting `skip` such calls through) and close its client's
        connection: the daemon never sees it."""
        with self._lock:
            self._lose = (proc, skip)
            self.lost.clear()

    def hold_call_to(self, proc: int, skip: int = 0) -> None:
        """Hold the next call of `proc` (after letting `skip` such calls through) until release()."""
        with self._lock:
            self._hold = (proc, skip)
            self._held_at = None  # the reply awaited is this next call's, not one held before
            self.held.clear()
            self.replied.clear()
            self._go = threading.Event()
            self._gates.append(self._go)

    def release(self) -> None:
        """Let the call held now go to the daemon."""
        with self._lock:
            gate = self._held_go
        if gate is not None:
            gate.set()

    def close(self) -> None:
        self._closed = True
        for gate in self._gates:
            gate.set()
        self._listener.close()
        for link in self._links:
            _shut(link.client)
            _shut(link.daemon)
        self.path.unlink(missing_ok=True)

    # -- the two directions of each connection -----------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            daemon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                daemon.connect(str(self.daemon_socket))
            except OSError:  # the daemon is down (killed by a test): the client's connection is closed at once
                _shut(client)
                daemon.close()
                continue
            link = _Link(client, daemon)
            self._links.append(link)
            threading.Thread(target=self._calls, args=(link,), daemon=True).start()
            threading.Thread(target=self._replies, args=(link,), daemon=True).start()

    def _armed(self, which: str, prog: int, proc: int, kind: int) -> bool:
        """Is this call one that `which` ("_withhold" or "_hold") waits for? Counts down its skips."""
        armed = getattr(self, which)  # (proc, calls of it still to let through)
        if armed is None or prog != REMOTE_PROGRAM or kind != CALL or proc != armed[0]:
            return False
        if armed[1] > 0:
            setattr(self, which, (armed[0], armed[1] - 1))
            return False
        setattr(self, which, None)
        return True

    def _to_drop(self, prog: int, proc: int, kind: int) -> bool:
        armed = self._drops.get(proc)
        if armed is None or prog != REMOTE_PROGRAM or kind != CALL:
            return False
        if armed[0] > 0:
            armed[0] -= 1
            return False
        armed[1] -= 1
        if armed[1] <= 0:
            del self._drops[proc]
        return True

    def _calls(self, link: _Link) -> None:
        try:
            while (message := _read_message(link.client)) is not None:
                prog, proc, kind, serial = _header(message)
                with self._lock:
                    lose = self._armed("_lose", prog, proc, kind)
                if lose:
                    self.lost.set()
                    _shut(link.client)  # the client sees its connection lost, its call never passed on
                    break
                with self._lock:
                    hold = self._armed("_hold", prog, proc, kind)
                    if self._to_drop(prog, proc, kind):
                        link.to_drop.add(serial)
                    if self._armed("_withhold", prog, proc, kind):
                        link.to_withhold.add(serial)
                    if hold:
                        self._held_at, self._held_go = (link, serial), self._go
                        gate = self._go
                if hold:
                    self.held.set()
                    gate.wait()
                if kind == CALL:
                    with link.answered:
                        link.pending.add(serial)
                link.daemon.sendall(message)
        except OSError:
            pass
        # The client is gone (or closed its side): what it had sent is with the daemon; wait for the answers, as
        # the daemon carries out a call whose reply can no longer be delivered.
        with link.answered:
            link.answered.wait_for(lambda: not link.pending, timeout=_REPLY_WAIT_S)
        _shut(link.daemon)

    def _replies(self, link: _Link) -> None:
        client_gone = False
        try:
            while (message := _read_message(link.daemon)) is not None:
                prog, _proc, kind, serial = _header(message)
                if kind == REPLY:
                    with link.answered:
                        link.pending.discard(serial)
                        link.answered.notify_all()
                    if self._held_at == (link, serial):
                        self.replied.set()
                if kind == REPLY and serial in link.to_drop:
                    self.dropped.set()
                    client_gone = True
                    _shut(link.client)  # the client never hears of it: its connection is lost instead
                    continue
                if kind == REPLY and serial in link.to_withhold:
                    continue  # the client waits for it in vain, its connection open
                if not client_gone:
                    try:
                        link.client.sendall(message)
                    except OSError:
                        client_gone = True
        except OSError:
            pass
        finally:
            with link.answered:
                link.pending.clear()
                link.answered.notify_all()
            _shut(link.client)


def start_python(script: str) -> subprocess.Popen:
    """`script` run by this interpreter in a process of its own (a gpupass run that a test kills), output captured."""
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_when_held(proxy: LibvirtProxy, running: subprocess.Popen, meanwhile: Callable[[], object] | None = None
                   ) -> None:
    """SIGKILL `running` once its call is held at the proxy (armed with hold_call_to), then let the call through and
    wait for the daemon's reply to it, which nobody reads: a client killed with its call on the wire. `meanwhile` runs
    after the kill and before the call goes on (another run that races the call on the wire)."""
    import pytest

    try:
        if not proxy.held.wait(60):
            running.kill()
            pytest.fail("the call never reached the proxy: " + running.communicate()[0][-3000:])
        running.send_signal(signal.SIGKILL)
        assert running.wait(30) == -signal.SIGKILL
        if meanwhile is not None:
            meanwhile()
    finally:
        assert running.stdout is not None
        running.stdout.close()
        proxy.release()
    assert proxy.replied.wait(30), "the daemon never answered the call its killed client had sent"
