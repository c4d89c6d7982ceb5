"""The freeze the frozen-endpoint fault rows rely on (support.frozen_endpoint.freeze): once it returns, the simulator
answers nothing more. kill(SIGSTOP) alone did not give that -- Linux stops a process's threads one by one as each next
runs (kernel/signal.c, do_signal_stop), and a vcsim thread still running answered a request sent right after kill()
in 3 of 40 rounds here, which made the frozen-endpoint tests fail with "DID NOT RAISE" under load."""

from __future__ import annotations

import http.client

from support.frozen_endpoint import freeze, running_threads, thaw

ROUNDS = 20


def test_a_request_sent_right_after_the_freeze_is_never_answered_until_the_thaw(fresh_vcsim):
    sim = fresh_vcsim()
    conn = http.client.HTTPSConnection(sim.host, sim.port, context=sim.ssl_context(), timeout=5)
    conn.request("GET", "/sdk/vimServiceVersions.xml")   # a kept-alive connection: nothing left to set up when frozen
    conn.getresponse().read()
    try:
        for _ in range(ROUNDS):
            freeze(sim.pid)
            assert running_threads(sim.pid) == []
            conn.timeout = 0.2
            conn.sock.settimeout(0.2)
            conn.request("GET", "/sdk/vimServiceVersions.xml")
            try:
                answered = conn.getresponse().read()
            except TimeoutError:
                answered = None
            thaw(sim.pid)
            assert answered is None, "the frozen simulator answered"
            conn.close()                                  # the request waiting there is answered on a dead socket
            conn = http.client.HTTPSConnection(sim.host, sim.port, context=sim.ssl_context(), timeout=5)
            conn.request("GET", "/sdk/vimServiceVersions.xml")
            again = conn.getresponse()
            assert again.status == 200 and again.read()    # thawed: it answers again
    finally:
        thaw(sim.pid)
        conn.close()
