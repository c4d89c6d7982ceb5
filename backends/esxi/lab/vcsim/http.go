package main

// HTTP layer in front of the simulator's /sdk handler, plus the test-control
// endpoints.
//
// /sdk interception (sdkInterceptor):
//   - ReconfigVM_Task / RelocateVM_Task: the request is stashed in lab.pending
//     so the task hook (passthru.go) can check the device changes / target host.
//   - RebootHost_Task (missing from the stock simulator): answered here after
//     checking that the caller's session is authenticated (a CurrentTime probe
//     through the simulator with the caller's cookie); it creates a real
//     simulator Task that flips passthruEnabled -> passthruActive.
//   - esx mode (a direct ESXi endpoint): while its host reboots, every /sdk
//     request is dropped unanswered, and afterwards the sessions opened before
//     the reboot get NotAuthenticated (hostd restarted with the host: assumed,
//     not verified on real ESXi; the encs-esxi and Dell corpus files do not show
//     it).
//   - every /sdk response is buffered so that the localized messages of task
//     faults raised by our checks are filled in before the client can see the
//     task (the stock Task.Run sets localizedMessage to the Go type name).
//
// Test control ("make a host vanish mid-operation"), HTTP Basic auth with the
// simulator's username/password, same TLS listener:
//
//	POST /gpupass/disconnect?host=NAME
//	    The host is marked disconnected at once: host.runtime.connectionState
//	    and its VMs' runtime.connectionState become "disconnected"; from then
//	    on UpdatePassthruConfig, RebootHost_Task, QueryConfigTarget(host) fail
//	    with HostNotConnected and VM tasks (reconfigure, power, snapshot...)
//	    fail in the task with HostNotConnected.
//	POST /gpupass/disconnect?host=NAME&after=METHOD[,METHOD...]
//	    Arms a trigger instead: the host disconnects when the next SOAP call
//	    named METHOD (e.g. ReconfigVM_Task, PowerOnVM_Task, UpdatePassthruConfig,
//	    RebootHost_Task, QueryConfigTarget) that targets this host, its
//	    pciPassthruSystem or one of its VMs arrives, so that very call fails:
//	    a host vanishing in the middle of a multi-step operation.
//	POST /gpupass/reconnect?host=NAME   undoes it (state of devices is kept).
//	POST /gpupass/drop-reply?call=METHOD[&skip=N]
//	    A reply lost on the way back: the next SOAP call named METHOD (e.g.
//	    UpdatePassthruConfig, RebootHost_Task, ReconfigVM_Task) is carried out
//	    as usual, then the client's connection is closed without the answer
//	    (what a dropped network or a proxy reset does after the fact).  With
//	    skip=N the N calls of that name before it are answered as usual (the
//	    second ReconfigVM_Task of a run, say).
//	POST /gpupass/hold?call=METHOD[&skip=N]
//	    The next SOAP call named METHOD (after N answered ones, with skip=N)
//	    waits, neither carried out nor answered, until POST /gpupass/release
//	    (or 60 s): a request on the wire when its client is killed, which the
//	    server carries out all the same.
//	POST /gpupass/release[?discard=1]
//	    Lets the held call go (a hold armed while it waited stays armed); with
//	    none waiting, disarms the holds.  With discard=1 the held call is not
//	    carried out: its connection is closed unanswered (a request lost on the
//	    way, before the host saw it).
//	POST /gpupass/restart[?carried=1]
//	    The endpoint killed and started again at once, its inventory kept:
//	    the model of an endpoint kill (docs/faults.md).  The held call (see
//	    /gpupass/hold) is lost with the process (default: never carried out)
//	    or was carried out before it died (carried=1); either way its
//	    connection is closed unanswered.  Every session a request was seen
//	    with is gone: its cookie gets NotAuthenticated from then on, except on
//	    the calls that open a new session -- as deadSession does for a direct
//	    ESXi host after a reboot (sessions live in the agent's memory:
//	    assumed, not verified on real ESXi/vCenter).  What survives is the
//	    state: the host's passthrough, graphics and VM configuration, tasks.
//	    That hostd/vpxd restarting keeps the host's configuration is assumed
//	    (the configuration lives in the host, not in the agent; a
//	    community.broadcom.com thread on restarting the management agents,
//	    difference-between-servicessh-restart-and-restart-mgmt-servcies-from-dcui-on-v51,
//	    calls services.sh restart "No Down time to VMs"; not a vendor
//	    statement).  Other open
//	    connections are not closed: a client finds its session gone on them.
//	POST /gpupass/slow-task?call=METHOD&seconds=S[&skip=N]
//	    The next call of METHOD (after N served as usual, with skip=N; a method
//	    answered with a Task: ReconfigVM_Task,
//	    EnterMaintenanceMode_Task, ...) is answered at once with a task that
//	    stays "queued" for S seconds, then runs and carries the call out as
//	    usual -- a vCenter whose task queue is busy: TaskInfoState "queued"
//	    ("When there are too many tasks for threads to handle", vSphere API
//	    reference).  A client that stops waiting for the task meanwhile does
//	    not stop it, nor does its logout: the host still carries it out (the
//	    call runs in a session of the simulator's own once the caller's
//	    session was checked; that a queued task outlives its client's session
//	    on a real vCenter is assumed: a task is the server's, TaskManager).
//	POST /gpupass/drip?call=METHOD&interval=S[&bytes=B][&skip=N]
//	    The next call of METHOD (after N served as usual) is carried out as
//	    usual, and its answer sent one byte (or B bytes) every S seconds
//	    (headers first, the Content-Length the whole answer's): a host or a
//	    network on the way that
//	    answers too slowly -- each read a client makes gets a byte well within
//	    a socket timeout longer than S, so only a bound on the whole call ends
//	    it.  The drip stops when the client closes the connection.
//	GET  /gpupass/held                  JSON: {"held": METHOD or ""}
//	GET  /gpupass/state                 JSON: hosts, passthrough devices
//	                                    (enabled/active/owner), connection.

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

func simulatorNow() time.Time { return time.Now() }

var vimTypeFunc = types.TypeFunc()

type sdkInterceptor struct {
	lab  *lab
	next http.Handler
	// the simulator's own credentials: the session a slow task is carried out in (serveLate)
	user, pass string
}

type bufferedWriter struct {
	header http.Header
	status int
	buf    bytes.Buffer
}

func (b *bufferedWriter) Header() http.Header         { return b.header }
func (b *bufferedWriter) Write(p []byte) (int, error) { return b.buf.Write(p) }
func (b *bufferedWriter) WriteHeader(code int) {
	if b.status == 0 {
		b.status = code
	}
}

func (b *bufferedWriter) flushTo(w http.ResponseWriter) {
	for k, v := range b.header {
		w.Header()[k] = v
	}
	if b.status == 0 {
		b.status = http.StatusOK
	}
	w.WriteHeader(b.status)
	_, _ = w.Write(b.buf.Bytes())
}

func (si *sdkInterceptor) interesting(body []byte) bool {
	if bytes.Contains(body, []byte("ReconfigVM_Task")) || bytes.Contains(body, []byte("RebootHost_Task")) ||
		bytes.Contains(body, []byte("RelocateVM_Task")) {
		return true
	}
	si.lab.mu.Lock()
	defer si.lab.mu.Unlock()
	for _, h := range si.lab.hosts {
		for name := range h.armed {
			if bytes.Contains(body, []byte(name)) {
				return true
			}
		}
	}
	return false
}

// targetHost returns the host a SOAP call is about, if any.
func (si *sdkInterceptor) targetHost(m *simulator.Method) *hostState {
	l := si.lab
	switch m.This.Type {
	case "HostSystem":
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.hosts[m.This]
	case "HostPciPassthruSystem":
		if p, ok := simulator.Map.Get(m.This).(*PciPassthruSystem); ok {
			return p.host
		}
	case "VirtualMachine":
		if vm, ok := simulator.Map.Get(m.This).(*simulator.VirtualMachine); ok && vm.Runtime.Host != nil {
			l.mu.Lock()
			defer l.mu.Unlock()
			return l.hosts[*vm.Runtime.Host]
		}
	case "EnvironmentBrowser":
		if q, ok := m.Body.(*types.QueryConfigTarget); ok && q.Host != nil {
			l.mu.Lock()
			defer l.mu.Unlock()
			return l.hosts[*q.Host]
		}
	}
	return nil
}

// authenticated asks the simulator whether the caller's session cookie is a
// logged-in session, by replaying a CurrentTime call with the same cookies.
func (si *sdkInterceptor) authenticated(r *http.Request) bool {
	const probe = xml.Header + `<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">` +
		`<soapenv:Body><CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></CurrentTime>` +
		`</soapenv:Body></soapenv:Envelope>`
	req := httptest.NewRequest(http.MethodPost, r.URL.Path, strings.NewReader(probe))
	for _, c := range r.Cookies() {
		req.AddCookie(c)
	}
	req.Header.Set("Content-Type", "text/xml")
	rec := httptest.NewRecorder()
	si.next.ServeHTTP(rec, req)
	return rec.Code == http.StatusOK
}

func writeTaskResponse(w http.ResponseWriter, method string, task types.ManagedObjectReference) {
	var out bytes.Buffer
	out.WriteString(xml.Header)
	out.WriteString(`<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" ` +
		`xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" ` +
		`xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>`)
	fmt.Fprintf(&out, `<%sResponse xmlns="urn:vim25"><returnval type="Task">`, method)
	_ = xml.EscapeText(&out, []byte(task.Value))
	fmt.Fprintf(&out, `</returnval></%sResponse></soapenv:Body></soapenv:Envelope>`, method)
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out.Bytes())
}

func (si *sdkInterceptor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, "/sdk") {
		si.next.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	l := si.lab
	if l.esxEndpointDown() {
		dropConnection(w) // a rebooting ESXi host does not answer at all
		return
	}
	if l.deadSession(w, r, body) {
		return
	}

	dropAfter := false // carried out, then its connection closed (/gpupass/restart?carried=1)
	if gate, name := l.takeHold(body); gate != nil {
		l.mu.Lock()
		l.heldBy = name
		l.mu.Unlock()
		select {
		case <-gate.open:
		case <-time.After(60 * time.Second):
		}
		l.mu.Lock()
		l.heldBy = ""
		discard := gate.discard
		dropAfter = gate.dropAfter
		l.mu.Unlock()
		if discard {
			dropConnection(w) // lost on the way: never carried out, never answered
			return
		}
	}
	if name, delay, ok := l.takeSlow(body); ok {
		if si.authenticated(r) && si.serveLate(w, r, body, name, delay) {
			return
		}
	}
	drop := dropAfter || l.takeDropReply(body)
	drip, dripping := l.takeDrip(body)
	var method *simulator.Method
	if si.interesting(body) {
		method, _ = simulator.UnmarshalBody(vimTypeFunc, body)
	}
	if method != nil {
		if h := si.targetHost(method); h != nil {
			l.mu.Lock()
			fire := h.armed[method.Name]
			if fire {
				delete(h.armed, method.Name)
			}
			l.mu.Unlock()
			if fire {
				l.setConnected(h, false)
			}
		}
		switch req := method.Body.(type) {
		case *types.ReconfigVM_Task, *types.RelocateVM_Task:
			// One such request at a time until its task has taken its spec from pending (the task hook runs
			// while the simulator handles the request): two reconfigures of one VM at once must not swap or
			// lose each other's spec, and with it the changeVersion check.
			l.stash.Lock()
			defer l.stash.Unlock()
			l.mu.Lock()
			l.pending[method.This] = req
			l.mu.Unlock()
			defer func() {
				l.mu.Lock()
				delete(l.pending, method.This)
				l.mu.Unlock()
			}()
		case *types.RebootHost_Task:
			l.mu.Lock()
			h := l.hosts[method.This]
			l.mu.Unlock()
			if h != nil && si.authenticated(r) {
				host := simulator.Map.Get(h.ref)
				force := req.Force
				task := simulator.CreateTask(host, "rebootHostTask", func(t *simulator.Task) (types.AnyType, types.BaseMethodFault) {
					f, msg := l.reboot(h, force)
					if f != nil {
						l.mu.Lock()
						l.faultMsg[t.Self] = msg
						l.mu.Unlock()
						return nil, f
					}
					return nil, nil
				})
				// TaskInfo.descriptionId of a RebootHost_Task is "HostSystem.reboot" on a real vCenter (its
				// TaskManager.description.methodInfo, recorded in govmomi's simulator/vpx/task_manager.go);
				// CreateTask would make it "HostSystem.rebootHost".  A client whose reply was lost finds the
				// task by it in TaskManager.recentTask.
				simulator.Map.Update(task, []types.PropertyChange{{Name: "info.descriptionId", Val: "HostSystem.reboot"}})
				ref := task.Run()
				l.applyFaultMessages()
				if drop {
					dropConnection(w)
					return
				}
				writeTaskResponse(w, "RebootHost_Task", ref)
				return
			}
			// unauthenticated or unknown host: the simulator answers
			// (NotAuthenticated / MethodNotFound)
		}
	}

	bw := &bufferedWriter{header: http.Header{}}
	if !si.serve(bw, r, body) {
		// govmomi 0.24's PropertyCollector.Fetch panics (index out of range)
		// when the property is unset, e.g. vm.snapshot of a VM without
		// snapshots; vSphere answers with an empty FetchResponse (None):
		// what pyvmomi reads as an unset property (assumed, not verified
		// against a real vCenter's bytes).
		bw = &bufferedWriter{header: http.Header{}}
		writeEmptyResponse(bw, "Fetch")
	}
	l.applyFaultMessages()
	if drop {
		dropConnection(w) // carried out; the answer never reaches the client
		return
	}
	if dripping {
		bw.dripTo(w, drip)
		return
	}
	bw.flushTo(w)
}

// dripArm: the answer to the next call of a method is sent size bytes every
// interval, after skip calls of it served as usual (POST /gpupass/drip).
type dripArm struct {
	interval time.Duration
	size     int
	skip     int
}

// takeDrip reports (and uses up) an armed drip for the SOAP method in body,
// once its calls to skip have passed.
func (l *lab) takeDrip(body []byte) (*dripArm, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for name, arm := range l.drip {
		if isCall(body, name) {
			if arm.skip > 0 {
				arm.skip--
				return nil, false
			}
			delete(l.drip, name)
			return arm, true
		}
	}
	return nil, false
}

// dripTo sends the buffered answer with its headers at once (Content-Length
// the whole body's), then its body arm.size bytes every arm.interval, each
// flushed to the client, until all is sent or the client has gone.
func (b *bufferedWriter) dripTo(w http.ResponseWriter, arm *dripArm) {
	for k, v := range b.header {
		w.Header()[k] = v
	}
	if b.status == 0 {
		b.status = http.StatusOK
	}
	body := b.buf.Bytes()
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(b.status)
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	for start := 0; start < len(body); start += arm.size {
		time.Sleep(arm.interval)
		end := start + arm.size
		if end > len(body) {
			end = len(body)
		}
		if _, err := w.Write(body[start:end]); err != nil {
			return // the client closed the connection
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
}

// holdGate is where a held call waits (POST /gpupass/hold): skip calls of its
// name pass first; the one after waits until open is closed, and is dropped
// unanswered instead of carried out if discard is set by then.
type holdGate struct {
	open      chan struct{}
	skip      int
	discard   bool
	dropAfter bool // carried out, its answer never sent (the endpoint died after the work)
}

// isCall: the SOAP method in body is name (the first element of the SOAP body,
// e.g. <UpdatePassthruConfig ...>).
func isCall(body []byte, name string) bool {
	return bytes.Contains(body, []byte("<"+name+" ")) || bytes.Contains(body, []byte("<"+name+">"))
}

// takeHold returns the gate for the SOAP method in body, if one is armed and
// has no calls left to skip.
func (l *lab) takeHold(body []byte) (*holdGate, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for name, gate := range l.hold {
		if isCall(body, name) {
			if gate.skip > 0 {
				gate.skip--
				return nil, ""
			}
			delete(l.hold, name)
			l.waiting = gate
			return gate, name
		}
	}
	return nil, ""
}

// slowArm: how long the task of the next call of a method stays queued, after
// skip calls of it served as usual (POST /gpupass/slow-task).
type slowArm struct {
	delay time.Duration
	skip  int
}

// takeSlow reports (and uses up) an armed slow task for the SOAP method in body,
// once its calls to skip have passed.
func (l *lab) takeSlow(body []byte) (string, time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for name, arm := range l.slow {
		if isCall(body, name) {
			if arm.skip > 0 {
				arm.skip--
				return "", 0, false
			}
			delete(l.slow, name)
			return name, arm.delay, true
		}
	}
	return "", 0, false
}

var taskReturn = regexp.MustCompile(`<returnval[^>]*type="Task"[^>]*>([^<]+)</returnval>`)
var faultString = regexp.MustCompile(`<faultstring>([^<]*)</faultstring>`)

// serveLate answers a call of name (a method that returns a Task) at once with
// a task of its own that stays queued for delay, then carries the call out
// through the interceptor (so every check and hook of a normal call applies)
// and ends with the outcome of the task that call made (POST /gpupass/slow-task).
// It returns false, answering nothing, when the call names no object.
func (si *sdkInterceptor) serveLate(w http.ResponseWriter, r *http.Request, body []byte, name string, delay time.Duration) bool {
	method, err := simulator.UnmarshalBody(vimTypeFunc, body)
	if err != nil || method == nil {
		return false
	}
	entity := simulator.Map.Get(method.This)
	if entity == nil {
		return false
	}
	l := si.lab
	path, cookies := r.URL.Path, r.Cookies()
	run := func(t *simulator.Task) (types.AnyType, types.BaseMethodFault) {
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		own := si.ownSession(path)
		if own == nil {
			own = cookies
		}
		for _, c := range own {
			req.AddCookie(c)
		}
		req.Header.Set("Content-Type", "text/xml")
		rec := httptest.NewRecorder()
		si.ServeHTTP(rec, req)
		m := taskReturn.FindSubmatch(rec.Body.Bytes())
		if m == nil { // answered with a fault, no task: that fault ends this task
			reason := "the call made no task"
			if f := faultString.FindSubmatch(rec.Body.Bytes()); f != nil {
				reason = string(f[1])
			}
			if bytes.Contains(rec.Body.Bytes(), []byte("NotAuthenticated")) {
				return nil, &types.NotAuthenticated{}
			}
			return nil, &types.SystemError{Reason: reason}
		}
		ref := types.ManagedObjectReference{Type: "Task", Value: string(m[1])}
		done, ok := simulator.Map.Get(ref).(*simulator.Task)
		if !ok {
			return nil, &types.SystemError{Reason: "the call's task is gone"}
		}
		var res types.AnyType
		var fault types.BaseMethodFault
		simulator.Map.WithLock(done, func() {
			res = done.Info.Result
			if done.Info.Error != nil {
				fault = done.Info.Error.Fault
				l.mu.Lock()
				l.faultMsg[t.Self] = done.Info.Error.LocalizedMessage
				l.mu.Unlock()
			}
		})
		return res, fault
	}
	// The task's name and descriptionId as the simulator makes them for that call ("ReconfigVM_Task" ->
	// "VirtualMachine.reconfigVm"), so a client looking for it in TaskManager.recentTask finds it.
	short := strings.TrimSuffix(name, "_Task")
	short = strings.Replace(strings.ToLower(short[:1])+short[1:], "VM", "Vm", 1)
	l.stash.Lock() // the lab's task hook (PutObject) takes pending specs: none of another call's
	task := simulator.CreateTask(entity, short+"Task", run)
	l.stash.Unlock()
	task.Execute = run // not the lab's hook around it: the call run inside carries its own
	if name == "RebootHost_Task" {
		simulator.Map.Update(task, []types.PropertyChange{{Name: "info.descriptionId", Val: "HostSystem.reboot"}})
	}
	go func() {
		time.Sleep(delay)
		task.Run()
		l.applyFaultMessages()
	}()
	writeTaskResponse(w, name, task.Self)
	return true
}

// ownSession logs in to the simulator with its own credentials: the cookies of
// a new session (nil if the login failed).
func (si *sdkInterceptor) ownSession(path string) []*http.Cookie {
	var b bytes.Buffer
	b.WriteString(xml.Header + `<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">` +
		`<soapenv:Body><Login xmlns="urn:vim25"><_this type="SessionManager">`)
	_ = xml.EscapeText(&b, []byte(simulator.Map.SessionManager().Reference().Value))
	b.WriteString(`</_this><userName>`)
	_ = xml.EscapeText(&b, []byte(si.user))
	b.WriteString(`</userName><password>`)
	_ = xml.EscapeText(&b, []byte(si.pass))
	b.WriteString(`</password></Login></soapenv:Body></soapenv:Envelope>`)
	req := httptest.NewRequest(http.MethodPost, path, &b)
	req.Header.Set("Content-Type", "text/xml")
	rec := httptest.NewRecorder()
	si.next.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		return nil
	}
	return rec.Result().Cookies()
}

// takeDropReply reports (and uses up) an armed drop for the SOAP method in body,
// once its calls to skip have passed.
func (l *lab) takeDropReply(body []byte) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for name, n := range l.dropReply {
		if n > 0 && isCall(body, name) {
			if l.dropSkip[name] > 0 {
				l.dropSkip[name]--
				return false
			}
			if n == 1 {
				delete(l.dropReply, name)
			} else {
				l.dropReply[name] = n - 1
			}
			return true
		}
	}
	return false
}

// serve passes the request to the simulator; it returns false if a Fetch call
// panicked (any other panic propagates and the connection is closed).
func (si *sdkInterceptor) serve(w http.ResponseWriter, r *http.Request, body []byte) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			if !bytes.Contains(body, []byte("Fetch")) {
				panic(p)
			}
			ok = false
		}
	}()
	si.next.ServeHTTP(w, r)
	return true
}

func writeEmptyResponse(w http.ResponseWriter, method string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, `%s<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" `+
		`xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" `+
		`xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><%sResponse xmlns="urn:vim25"></%sResponse>`+
		`</soapenv:Body></soapenv:Envelope>`, xml.Header, method, method)
}

// esxEndpointDown: esx mode and the (only) host is rebooting.
func (l *lab) esxEndpointDown() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, h := range l.hosts {
		if h.esx && h.down {
			return true
		}
	}
	return false
}

// deadSession: in esx mode a session opened before a host reboot no longer
// exists afterwards (hostd restarts with the host); nor, in either mode, one
// opened before a /gpupass/restart.  A call with such a cookie
// gets NotAuthenticated (the fault the API reference documents for a call
// without a valid session; its text here is assumed), except the calls that
// open a new session: for those the dead cookie is dropped from the request.
// Returns true when it answered the request.
func (l *lab) deadSession(w http.ResponseWriter, r *http.Request, body []byte) bool {
	c, err := r.Cookie(soap.SessionCookieName)
	if err != nil {
		return false
	}
	l.mu.Lock()
	dead := l.deadCookies[c.Value]
	if !dead { // the sessions a reboot (esx mode) or a restart (/gpupass/restart) ends
		l.seenCookies[c.Value] = true
	}
	l.mu.Unlock()
	if !dead {
		return false
	}
	if !bytes.Contains(body, []byte("<Login")) && !bytes.Contains(body, []byte("RetrieveServiceContent")) {
		writeNotAuthenticated(w)
		return true
	}
	others := r.Cookies()
	r.Header.Del("Cookie")
	for _, o := range others {
		if o.Name != soap.SessionCookieName {
			r.AddCookie(o)
		}
	}
	return false
}

func writeNotAuthenticated(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, `%s<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" `+
		`xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" `+
		`xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault>`+
		`<faultcode>ServerFaultCode</faultcode><faultstring>The session is not authenticated.</faultstring>`+
		`<detail><NotAuthenticatedFault xmlns="urn:vim25" xsi:type="NotAuthenticated">`+
		`<object type="SessionManager">ha-sessionmgr</object><privilegeId>System.View</privilegeId>`+
		`</NotAuthenticatedFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`, xml.Header)
}

// dropConnection closes the client's connection without an answer, as a host
// that is rebooting does.
func dropConnection(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
			return
		}
	}
	w.WriteHeader(http.StatusServiceUnavailable)
}

func (l *lab) applyFaultMessages() {
	l.mu.Lock()
	msgs := l.faultMsg
	l.faultMsg = map[types.ManagedObjectReference]string{}
	l.mu.Unlock()
	for ref, msg := range msgs {
		t, ok := simulator.Map.Get(ref).(*simulator.Task)
		if !ok {
			continue
		}
		simulator.Map.WithLock(t, func() {
			if t.Info.Error != nil {
				t.Info.Error.LocalizedMessage = msg
				if mf := t.Info.Error.Fault.GetMethodFault(); mf != nil {
					mf.FaultMessage = append(mf.FaultMessage, types.LocalizableMessage{Key: "gpupass.vcsim", Message: msg})
				}
			}
		})
	}
}

// ---------------------------------------------------------------------------
// control endpoints

// skipParam: the skip=N of a hold or drop-reply (0 when absent).
func skipParam(r *http.Request) (int, error) {
	text := r.URL.Query().Get("skip")
	if text == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(text)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("skip=%q is not a count", text)
	}
	return n, nil
}

func (l *lab) controlHandler(user, pass string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 ||
			subtle.ConstantTimeCompare([]byte(p), []byte(pass)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="gpupass-vcsim"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		reply := func(v interface{}) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(v)
		}
		switch r.URL.Path {
		case "/gpupass/state":
			reply(l.state())
			return
		case "/gpupass/held":
			l.mu.Lock()
			held := l.heldBy
			l.mu.Unlock()
			reply(map[string]interface{}{"held": held})
			return
		case "/gpupass/hold", "/gpupass/release":
			if r.Method != http.MethodPost {
				http.Error(w, "POST only", http.StatusMethodNotAllowed)
				return
			}
			skip, err := skipParam(r)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			l.mu.Lock()
			if r.URL.Path == "/gpupass/hold" {
				l.hold[r.URL.Query().Get("call")] = &holdGate{open: make(chan struct{}), skip: skip}
			} else if l.waiting != nil {
				// the waiting call goes; a hold armed meanwhile stays armed for its own call
				l.waiting.discard = r.URL.Query().Get("discard") == "1"
				close(l.waiting.open)
				l.waiting = nil
			} else {
				for name, gate := range l.hold { // none reached its hold: disarmed
					close(gate.open)
					delete(l.hold, name)
				}
			}
			l.mu.Unlock()
			reply(map[string]interface{}{"ok": true})
			return
		case "/gpupass/restart":
			if r.Method != http.MethodPost {
				http.Error(w, "POST only", http.StatusMethodNotAllowed)
				return
			}
			carried := r.URL.Query().Get("carried") == "1"
			l.mu.Lock()
			for c := range l.seenCookies {
				l.deadCookies[c] = true
			}
			l.seenCookies = map[string]bool{}
			held := l.heldBy
			if l.waiting != nil {
				l.waiting.discard = !carried
				l.waiting.dropAfter = carried
				close(l.waiting.open)
				l.waiting = nil
			}
			l.mu.Unlock()
			reply(map[string]interface{}{"restarted": true, "held": held, "carried": carried})
			return
		case "/gpupass/slow-task":
			if r.Method != http.MethodPost {
				http.Error(w, "POST only", http.StatusMethodNotAllowed)
				return
			}
			name := r.URL.Query().Get("call")
			seconds, err := strconv.ParseFloat(r.URL.Query().Get("seconds"), 64)
			if name == "" || !strings.HasSuffix(name, "_Task") || err != nil || seconds < 0 {
				http.Error(w, "call=METHOD_Task and seconds=S (S >= 0) are required", http.StatusBadRequest)
				return
			}
			skip, err := skipParam(r)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			l.mu.Lock()
			l.slow[name] = &slowArm{delay: time.Duration(seconds * float64(time.Second)), skip: skip}
			l.mu.Unlock()
			reply(map[string]interface{}{"method": name, "seconds": seconds})
			return
		case "/gpupass/drip":
			if r.Method != http.MethodPost {
				http.Error(w, "POST only", http.StatusMethodNotAllowed)
				return
			}
			name := r.URL.Query().Get("call")
			seconds, err := strconv.ParseFloat(r.URL.Query().Get("interval"), 64)
			if name == "" || err != nil || seconds <= 0 {
				http.Error(w, "call=METHOD and interval=S (S > 0) are required", http.StatusBadRequest)
				return
			}
			size := 1
			if text := r.URL.Query().Get("bytes"); text != "" {
				if size, err = strconv.Atoi(text); err != nil || size < 1 {
					http.Error(w, "bytes=B (B >= 1) is a count", http.StatusBadRequest)
					return
				}
			}
			skip, err := skipParam(r)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			l.mu.Lock()
			l.drip[name] = &dripArm{interval: time.Duration(seconds * float64(time.Second)), size: size, skip: skip}
			l.mu.Unlock()
			reply(map[string]interface{}{"method": name, "interval": seconds, "bytes": size})
			return
		case "/gpupass/drop-reply":
			if r.Method != http.MethodPost {
				http.Error(w, "POST only", http.StatusMethodNotAllowed)
				return
			}
			name := r.URL.Query().Get("call")
			if name == "" {
				http.Error(w, "call= is required", http.StatusBadRequest)
				return
			}
			skip, err := skipParam(r)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			l.mu.Lock()
			l.dropReply[name]++
			l.dropSkip[name] = skip
			l.mu.Unlock()
			reply(map[string]interface{}{"method": name, "drop": true})
			return
		case "/gpupass/disconnect", "/gpupass/reconnect":
		default:
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		name := r.URL.Query().Get("host")
		l.mu.Lock()
		h := l.byName[name]
		l.mu.Unlock()
		if h == nil {
			http.Error(w, fmt.Sprintf("no host %q", name), http.StatusNotFound)
			return
		}
		if r.URL.Path == "/gpupass/reconnect" {
			l.mu.Lock()
			h.armed = map[string]bool{}
			l.mu.Unlock()
			l.setConnected(h, true)
			reply(map[string]interface{}{"host": name, "connected": true})
			return
		}
		if after := r.URL.Query().Get("after"); after != "" {
			l.mu.Lock()
			for _, m := range strings.Split(after, ",") {
				if m = strings.TrimSpace(m); m != "" {
					h.armed[m] = true
				}
			}
			l.mu.Unlock()
			reply(map[string]interface{}{"host": name, "armed": strings.Split(after, ",")})
			return
		}
		l.setConnected(h, false)
		reply(map[string]interface{}{"host": name, "connected": false})
	}
}
