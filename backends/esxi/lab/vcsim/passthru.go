package main

// PCI passthrough model layered on top of the stock govmomi simulator.
//
// The stock simulator (0.24) has no GPUs, no registered HostPciPassthruSystem,
// an empty QueryConfigTarget().pciPassthrough, no RebootHost_Task, and does not
// enforce power state on ReconfigVM_Task.  This file keeps the canonical
// passthrough state per host (lab.hosts) and mirrors it into
// host.config.pciPassthruInfo / host.hardware.pciDevice.
//
// Checks on VM and host tasks are done with a Registry handler (lab
// implements simulator.RegisterObject): when the simulator creates a task
// (reconfigure, power on/off, relocate, snapshot, enter maintenance mode...),
// PutObject wraps the task's Execute func so that our checks run first, on the
// same goroutine, while the entity is locked.  A reconfigure/relocate spec is
// not visible from the task, so the HTTP layer (http.go) stashes the request
// in lab.pending before the simulator dispatches the call.
//
// Rules enforced, each with its source (vSphere Web Services API reference as
// mirrored in govmomi vim25/types and pyvmomi _typeinfo_vim, VMware/Broadcom and
// Dell KBs, real published outputs in tests/fixtures/real/esxi/); "assumed" marks
// what is NOT verified on real ESXi:
//   - ReconfigVM_Task adding/removing a VirtualPCIPassthrough on a VM that is
//     not powered off: InvalidPowerState.  Source: vSphere 7.0 docs "Add a PCI
//     device to a virtual machine" (power off the VM first); the fault type is
//     assumed.  Changing firmware of a running VM likewise: assumed.
//   - DeviceBackingInfo names a passthrough-active device of the VM's host, with
//     that host's systemId and its deviceId/vendorId.  Source: API reference,
//     HostPciDevice.deviceId ("you must use the HostPciDevice.deviceId value as
//     retrieved"), VirtualMachinePciPassthroughInfo.systemId; the check at
//     reconfigure time and the fault (InvalidDeviceBacking) are assumed.
//     Dynamic backings need allowedDevice (API: "The list of allowed devices").
//   - PowerOnVM_Task of a VM with passthrough devices:
//       full memory reservation (GenericVmConfigFault "memory reservation
//       (sched.mem.min) should be equal to memsize(N)").  Source: Broadcom KB
//       309986 "the virtual machine must have a memory reservation for the full
//       configured memory size"; the message text is from field notes (assumed);
//       every device passthrough-active (Broadcom KB 309986: a changed device
//       "must be rebooted before the device can be used"; API
//       HostPciPassthruInfo.passthruActive "meaning enabled + rebooted");
//       not used by another powered-on VM (assumed: one function, one VM);
//       a free matching device for each dynamic backing, whose hardware label
//       equals the backing's customLabel when that is set (API reference,
//       VirtualPCIPassthroughDynamicBackingInfo.customLabel: "If set, the
//       device must also have the same customLabel attribute set"); assignedId
//       set ("The id of the device assigned when the VM is powered on");
//       enough MMIO for the BARs (checkMMIO: Dell KB 000199172's real vmware.log).
//   - RelocateVM_Task to another host with a DirectPath device:
//     DisallowedMigrationDeviceAttached; CreateSnapshot_Task of a running VM
//     with a passthrough device: SnapshotIncompatibleDeviceInVm.  Source:
//     vSphere docs list vMotion and snapshots as unavailable with DirectPath
//     I/O; both fault types exist in the API, which one ESXi raises is assumed.
//   - EnterMaintenanceMode_Task with powered-on VMs on the host: Timedout (real
//     ESXi waits for DRS or the admin; failing at once is assumed);
//     PowerOnVM_Task on a host in maintenance mode: InvalidHostState (assumed).
//   - UpdatePassthruConfig: HostConfigFault for an unknown id or an incapable
//     device (the method's documented fault; the conditions are assumed);
//     applyNow (see appliesNow) per the API reference of
//     HostPciPassthruConfig.applyNow and HostCapability.deviceRebindWithoutRebootSupported.
//   - RebootHost_Task: InvalidState unless in maintenance mode or force
//     (API reference: force reboots "regardless of whether it is in maintenance
//     mode ... even if there are virtual machines running"; the fault type is
//     assumed); afterwards passthruActive = passthruEnabled ("enabled +
//     rebooted").  vCenter notices a host going down only when its heartbeats
//     stop (Broadcom KB 435077: every 10 s, 60 s window), modelled by
//     reboot_lag_seconds.
//   - Anything on a disconnected ("vanished") host: HostNotConnected (assumed).
//   - ReconfigVM_Task extraConfig: a key set again replaces its value, an empty
//     value removes it.  Source: API reference, VirtualMachineConfigSpec.extraConfig
//     ("If the key is already present, it will be reset with the new value
//     provided ... Keys with empty values will be removed").

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

type pciDev struct {
	info      types.HostPciDevice
	capable   bool
	enabled   bool
	active    bool
	dependent string // pciPassthruInfo.dependentDevice (default: its own id)
	group     string // id of function 0 of the physical device (companion functions point to the GPU)
	bars      []bar  // BARs (simulator-only knowledge: the vSphere API has none)
	label     string // hardwareLabel (API 7.0.2): what a dynamic customLabel must equal
	// vmkernelInUse: the VMkernel still holds the device; an applyNow cannot rebind it
	vmkernelInUse bool
	// vGPU (vgpu.go): the device's own graphics type ("" = the host default), its
	// memory (HostGraphicsInfo.memorySizeInKB) and the profiles it offers
	gfxType  string
	// gfxActive: the graphics type the device runs now ("" = the host's active
	// default); a configured change becomes active at the next Xorg restart or
	// host reboot (vgpu.go, applyGraphics)
	gfxActive string
	memoryKB  int64
	vgpu     []vgpuType
}

type hostState struct {
	ref       types.ManagedObjectReference
	name      string
	systemID  string
	connected bool
	// notResponding: rebooting (RebootHost_Task with reboot_seconds > 0)
	notResponding bool
	rebootDelay   time.Duration
	rebootLag     time.Duration // still reported connected this long after the reboot task
	rebind        bool          // HostCapability.deviceRebindWithoutRebootSupported
	esx           bool          // a direct ESXi endpoint (esx mode): a reboot takes the API down with it
	down          bool          // esx mode, rebooting: the endpoint does not answer
	devices       []*pciDev     // all PCI devices of the host, in hardware.pciDevice order
	byID          map[string]*pciDev
	passthru      *PciPassthruSystem
	armed         map[string]bool  // SOAP method names that make this host vanish when called
	gfxDefault    string           // HostGraphicsConfig.hostDefaultGraphicsType (configured)
	gfxPolicy     string           // HostGraphicsConfig.sharedPassthruAssignmentPolicy (configured)
	gfxActiveDef  string           // the default graphics type in effect (vgpu.go, applyGraphics)
	gfxActivePol  string           // the assignment policy in effect
	graphics      *GraphicsManager // configManager.graphicsManager
	services      *ServiceSystem   // configManager.serviceSystem (RestartService "xorg")
}

type lab struct {
	mu     sync.Mutex
	hosts  map[types.ManagedObjectReference]*hostState
	byName map[string]*hostState
	// VM ref -> request body (ReconfigVM_Task / RelocateVM_Task) being dispatched
	pending map[types.ManagedObjectReference]interface{}
	// owner: host ref -> PCI id -> VM that holds it while powered on
	owner map[types.ManagedObjectReference]map[string]types.ManagedObjectReference
	// vgpus: host ref -> PCI id -> the running VMs' vGPUs placed on that GPU (vgpu.go)
	vgpus map[types.ManagedObjectReference]map[string][]vgpuPlacement
	// task ref -> human readable message, applied to task.info.error.localizedMessage
	faultMsg map[types.ManagedObjectReference]string
	// esx mode: session cookies seen so far, and those a reboot ended (hostd
	// restarts with the host, so no session survives it)
	seenCookies map[string]bool
	deadCookies map[string]bool
	// SOAP method name -> replies still to drop (POST /gpupass/drop-reply): the
	// call is carried out, then the connection is closed unanswered; dropSkip:
	// calls of that name still to answer before the drop (its skip=N)
	dropReply map[string]int
	dropSkip  map[string]int
	// SOAP method name -> the gate a call of it waits at (POST /gpupass/hold),
	// and the name of the call waiting there now, if any
	hold    map[string]*holdGate
	waiting *holdGate
	heldBy  string
	// SOAP method name -> how long the task of its next call stays queued before it is carried out
	// (POST /gpupass/slow-task, http.go serveLate)
	slow map[string]*slowArm
	// SOAP method name -> how slowly the answer to its next call is sent (POST /gpupass/drip, http.go dripTo)
	drip map[string]*dripArm
	// serialises reconfigures: check changeVersion, change, bump as one step
	cas sync.Mutex
	// serialises the hand-over of a request's spec to its task through pending
	stash sync.Mutex
}

var hookRef = types.ManagedObjectReference{Type: "GpupassHook", Value: "gpupass-hook"}

func newLab() *lab {
	return &lab{
		hosts:     map[types.ManagedObjectReference]*hostState{},
		byName:    map[string]*hostState{},
		pending:   map[types.ManagedObjectReference]interface{}{},
		owner:     map[types.ManagedObjectReference]map[string]types.ManagedObjectReference{},
		vgpus:     map[types.ManagedObjectReference]map[string][]vgpuPlacement{},
		faultMsg:  map[types.ManagedObjectReference]string{},
		dropReply: map[string]int{},
		dropSkip:  map[string]int{},
		hold:      map[string]*holdGate{},
		slow:      map[string]*slowArm{},
		drip:      map[string]*dripArm{},

		seenCookies: map[string]bool{},
		deadCookies: map[string]bool{},
	}
}

func (l *lab) Reference() types.ManagedObjectReference { return hookRef }

// ---------------------------------------------------------------------------
// host state mirroring

func (h *hostState) passthruInfo() []types.BaseHostPciPassthruInfo {
	out := make([]types.BaseHostPciPassthruInfo, 0, len(h.devices))
	for _, d := range h.devices {
		out = append(out, &types.HostPciPassthruInfo{
			Id:              d.info.Id,
			DependentDevice: d.dependent,
			PassthruEnabled: d.enabled,
			PassthruCapable: d.capable,
			PassthruActive:  d.active,
		})
	}
	return out
}

// mirror copies the canonical state into the host and passthru-system objects.
// Caller holds l.mu.
func (l *lab) mirror(h *hostState) {
	host, ok := simulator.Map.Get(h.ref).(*simulator.HostSystem)
	if !ok {
		return
	}
	info := h.passthruInfo()
	simulator.Map.WithLock(host, func() {
		host.Config.PciPassthruInfo = info
		devs := make([]types.HostPciDevice, 0, len(h.devices))
		for _, d := range h.devices {
			devs = append(devs, d.info)
		}
		host.Hardware.PciDevice = devs
		l.mirrorGraphics(h, host)
	})
	if h.passthru != nil {
		h.passthru.PciPassthruInfo = h.passthruInfo()
	}
}

func (l *lab) hostOfVM(vm *simulator.VirtualMachine) *hostState {
	if vm.Runtime.Host == nil {
		return nil
	}
	return l.hosts[*vm.Runtime.Host]
}

// hostNotConnected is the fault for a call that needs host h while it is
// not connected.  Caller holds l.mu.
func hostNotConnected(h *hostState) (types.BaseMethodFault, string) {
	if h.notResponding {
		return &types.HostNotReachable{}, fmt.Sprintf("Host %s is not responding (it is rebooting).", h.name)
	}
	return &types.HostNotConnected{}, fmt.Sprintf("Host %s is not connected (it disconnected or was removed).", h.name)
}

// setConnected marks a host (and its VMs) connected or disconnected.
// Caller must NOT hold l.mu.
func (l *lab) setConnected(h *hostState, connected bool) {
	if connected {
		l.setConnection(h, types.HostSystemConnectionStateConnected)
	} else {
		l.setConnection(h, types.HostSystemConnectionStateDisconnected)
	}
}

// setConnection sets host.runtime.connectionState and its VMs'.
// Caller must NOT hold l.mu.
func (l *lab) setConnection(h *hostState, state types.HostSystemConnectionState) {
	l.mu.Lock()
	h.connected = state == types.HostSystemConnectionStateConnected
	h.notResponding = state == types.HostSystemConnectionStateNotResponding
	l.mu.Unlock()
	vmState := types.VirtualMachineConnectionStateConnected
	switch state {
	case types.HostSystemConnectionStateDisconnected:
		vmState = types.VirtualMachineConnectionStateDisconnected
	case types.HostSystemConnectionStateNotResponding:
		vmState = types.VirtualMachineConnectionStateDisconnected // as vCenter shows them
	}
	host, ok := simulator.Map.Get(h.ref).(*simulator.HostSystem)
	if !ok {
		return
	}
	var vms []types.ManagedObjectReference
	simulator.Map.WithLock(host, func() {
		simulator.Map.Update(host, []types.PropertyChange{{Name: "runtime.connectionState", Val: state}})
		vms = append(vms, host.Vm...)
	})
	for _, ref := range vms {
		if vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok {
			simulator.Map.WithLock(vm, func() {
				simulator.Map.Update(vm, []types.PropertyChange{
					{Name: "runtime.connectionState", Val: vmState},
					{Name: "summary.runtime.connectionState", Val: vmState},
				})
			})
		}
	}
}

// ---------------------------------------------------------------------------
// HostPciPassthruSystem

// PciPassthruSystem is a working configManager.pciPassthruSystem.
// UpdatePassthruConfig sets passthruEnabled of exactly the listed devices
// (companion functions such as the HDMI audio .1 are NOT toggled with the GPU:
// a client must list every function it wants; assumed); passthruActive follows
// at once where appliesNow says so, otherwise after RebootHost_Task.  Unknown
// ids and enabling an incapable device raise HostConfigFault; the call is
// all-or-nothing (assumed).
type PciPassthruSystem struct {
	mo.HostPciPassthruSystem

	lab  *lab
	host *hostState
}

func (p *PciPassthruSystem) UpdatePassthruConfig(ctx *simulator.Context, req *types.UpdatePassthruConfig) soap.HasFault {
	body := &methods.UpdatePassthruConfigBody{}
	l := p.lab
	l.mu.Lock()
	defer l.mu.Unlock()
	h := p.host
	if !h.connected {
		f, msg := hostNotConnected(h)
		body.Fault_ = simulator.Fault(msg, f)
		return body
	}
	// validate everything first: the call is all-or-nothing
	for _, c := range req.Config {
		cfg := c.GetHostPciPassthruConfig()
		d := h.byID[cfg.Id]
		if d == nil {
			body.Fault_ = simulator.Fault(fmt.Sprintf("PCI device %s not found on host %s", cfg.Id, h.name),
				&types.HostConfigFault{})
			return body
		}
		if !d.capable && cfg.PassthruEnabled {
			body.Fault_ = simulator.Fault(fmt.Sprintf("PCI device %s on host %s is not passthrough capable", cfg.Id, h.name),
				&types.HostConfigFault{})
			return body
		}
		if cfg.PassthruEnabled && l.runsVgpus(h, cfg.Id) {
			// vgpu.go: a GPU running vGPUs cannot be taken for passthrough (assumed)
			body.Fault_ = simulator.Fault(fmt.Sprintf("PCI device %s on host %s runs vGPUs of powered-on virtual machines", cfg.Id, h.name),
				&types.HostConfigFault{})
			return body
		}
	}
	for _, c := range req.Config {
		cfg := c.GetHostPciPassthruConfig()
		d := h.byID[cfg.Id]
		d.enabled = cfg.PassthruEnabled
		if l.appliesNow(h, d, cfg.ApplyNow) {
			d.active = d.enabled && d.capable
		}
	}
	l.mirror(h)
	body.Res = &types.UpdatePassthruConfigResponse{}
	return body
}

// appliesNow: does a passthrough change take effect without a reboot?
// vSphere API reference, HostPciPassthruConfig.applyNow (API 7.0; pyvmomi
// _typeinfo_vim: vim.version.v7_0): "Whether the passThru config should take
// effect without rebooting ESX.  When unset, the behavior will be determined
// automatically based on HostCapability.deviceRebindWithoutRebootSupported.  If
// the configuration can be applied immediately, it will be, otherwise the
// changes will take effect after reboot."  Caller holds l.mu.
func (l *lab) appliesNow(h *hostState, d *pciDev, applyNow *bool) bool {
	if applyNow != nil && !*applyNow {
		return false // explicitly "not without rebooting"
	}
	if !h.rebind {
		// assumed (not verified on real ESXi): applyNow=true on a host without
		// the capability is deferred to the reboot rather than refused
		return false
	}
	if d.vmkernelInUse {
		// a real ESXi 8.0 U3 report (tests/fixtures/real/esxi/encs-esxi-8u3-pcipassthru-apply-now.md):
		// "If the device shows as pending rather than enabled, reboot the host -- a
		// device the VMkernel still owns cannot be assigned to a VM"
		return false
	}
	if _, busy := l.inUse(h, d.info.Id, types.ManagedObjectReference{}); busy {
		// assumed: a device a running VM holds "cannot be applied immediately"
		return false
	}
	return true
}

func (p *PciPassthruSystem) Refresh(req *types.Refresh) soap.HasFault {
	return &methods.RefreshBody{Res: &types.RefreshResponse{}}
}

// reboot simulates a host reboot: passthruActive := passthruEnabled for every
// device (API: passthruActive "meaning enabled + rebooted").  Powered-on VMs on
// the host are powered off (they die with the host).  ESXi requires maintenance
// mode unless force is set (API reference, RebootHost_Task force: "rebooted
// regardless of whether it is in maintenance mode"; InvalidState is assumed).
func (l *lab) reboot(h *hostState, force bool) (types.BaseMethodFault, string) {
	host, ok := simulator.Map.Get(h.ref).(*simulator.HostSystem)
	if !ok {
		return &types.ManagedObjectNotFound{Obj: h.ref}, "host not found"
	}
	l.mu.Lock()
	if !h.connected {
		defer l.mu.Unlock()
		return hostNotConnected(h)
	}
	l.mu.Unlock()
	inMM := false
	var vms []types.ManagedObjectReference
	simulator.Map.WithLock(host, func() {
		inMM = host.Runtime.InMaintenanceMode
		vms = append(vms, host.Vm...)
	})
	if !inMM && !force {
		return &types.InvalidState{}, fmt.Sprintf(
			"The operation is not allowed in the current state: host %s is not in maintenance mode (use force=True to reboot anyway).", h.name)
	}
	for _, ref := range vms {
		vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		simulator.Map.WithLock(vm, func() {
			if vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
				simulator.Map.Update(vm, []types.PropertyChange{
					{Name: "runtime.powerState", Val: types.VirtualMachinePowerStatePoweredOff},
					{Name: "summary.runtime.powerState", Val: types.VirtualMachinePowerStatePoweredOff},
				})
			}
		})
	}
	l.mu.Lock()
	delete(l.owner, h.ref)
	delete(l.vgpus, h.ref)
	delay, lag := h.rebootDelay, h.rebootLag
	l.mu.Unlock()
	finish := func() {
		l.mu.Lock()
		for _, d := range h.devices {
			d.active = d.enabled && d.capable
		}
		h.applyGraphics() // the host graphics configuration is in effect after a reboot
		l.mirror(h)
		l.mu.Unlock()
		simulator.Map.WithLock(host, func() {
			now := simulatorNow()
			simulator.Map.Update(host, []types.PropertyChange{{Name: "runtime.bootTime", Val: &now}})
		})
	}
	if delay <= 0 && lag <= 0 {
		finish()
		return nil, ""
	}
	// like vCenter: the task ends when the reboot starts; the host is
	// notResponding until it is back (and, with a lag, still connected for a
	// while before that: vCenter only notices missing heartbeats)
	if lag <= 0 {
		l.goDown(h)
	}
	go func() {
		if lag > 0 {
			time.Sleep(lag)
			l.goDown(h)
		}
		time.Sleep(delay)
		finish()
		l.comeBack(h)
	}()
	return nil, ""
}

// goDown: the host is rebooting.  Through vCenter it is notResponding; a direct
// ESXi endpoint stops answering altogether (http.go drops its connections).
func (l *lab) goDown(h *hostState) {
	l.mu.Lock()
	h.down = h.esx
	l.mu.Unlock()
	l.setConnection(h, types.HostSystemConnectionStateNotResponding)
}

// comeBack: the reboot is over.  On a direct ESXi endpoint every session opened
// before it is gone (hostd restarted), so clients must log in again.
func (l *lab) comeBack(h *hostState) {
	l.mu.Lock()
	if h.esx {
		h.down = false
		for c := range l.seenCookies {
			l.deadCookies[c] = true
		}
		l.seenCookies = map[string]bool{}
	}
	back := h.notResponding // not disconnected meanwhile by /gpupass/disconnect
	l.mu.Unlock()
	if back {
		l.setConnection(h, types.HostSystemConnectionStateConnected)
	}
}

// ---------------------------------------------------------------------------
// EnvironmentBrowser with pciPassthrough / dynamicPassthrough

type envBrowser struct {
	simulator.EnvironmentBrowser // by value: the property collector digs field 0

	lab *lab
}

func (b *envBrowser) hostsOf() []types.ManagedObjectReference {
	for _, kind := range []string{"ComputeResource", "ClusterComputeResource"} {
		for _, e := range simulator.Map.All(kind) {
			var cr *mo.ComputeResource
			switch x := e.(type) {
			case *mo.ComputeResource:
				cr = x
			case *simulator.ClusterComputeResource:
				cr = &x.ComputeResource
			}
			if cr != nil && cr.EnvironmentBrowser != nil && *cr.EnvironmentBrowser == b.Self {
				return cr.Host
			}
		}
	}
	return nil
}

// QueryConfigTarget lists passthrough-active devices only (assumed: the vSphere
// Client offers a device to VMs only once its host reports it active, Broadcom KB
// 309986's green icon) and, per vendor/device/label, the Dynamic DirectPath
// candidates with their customLabel (API: VirtualMachineDynamicPassthroughInfo).
func (b *envBrowser) QueryConfigTarget(ctx *simulator.Context, req *types.QueryConfigTarget) soap.HasFault {
	l := b.lab
	var hosts []types.ManagedObjectReference
	if req.Host != nil {
		hosts = []types.ManagedObjectReference{*req.Host}
	} else {
		hosts = b.hostsOf()
	}
	l.mu.Lock()
	for _, ref := range hosts {
		if h := l.hosts[ref]; h != nil && !h.connected && req.Host != nil {
			f, msg := hostNotConnected(h)
			l.mu.Unlock()
			return &methods.QueryConfigTargetBody{Fault_: simulator.Fault(msg, f)}
		}
	}
	l.mu.Unlock()

	res := b.EnvironmentBrowser.QueryConfigTarget(ctx, req)
	body, ok := res.(*methods.QueryConfigTargetBody)
	if !ok || body.Res == nil || body.Res.Returnval == nil {
		return res
	}
	target := body.Res.Returnval

	l.mu.Lock()
	defer l.mu.Unlock()
	type dynKey struct {
		v, d  int16
		label string
	}
	seen := map[dynKey]bool{}
	for _, ref := range hosts {
		h := l.hosts[ref]
		if h == nil || !h.connected {
			continue
		}
		for _, d := range h.devices {
			if !d.active {
				continue
			}
			target.PciPassthrough = append(target.PciPassthrough, &types.VirtualMachinePciPassthroughInfo{
				VirtualMachineTargetInfo: types.VirtualMachineTargetInfo{Name: d.info.DeviceName},
				PciDevice:                d.info,
				SystemId:                 h.systemID,
			})
			k := dynKey{d.info.VendorId, d.info.DeviceId, d.label}
			if !seen[k] {
				seen[k] = true
				target.DynamicPassthrough = append(target.DynamicPassthrough, types.VirtualMachineDynamicPassthroughInfo{
					VirtualMachineTargetInfo: types.VirtualMachineTargetInfo{Name: d.info.DeviceName},
					VendorName:               d.info.VendorName,
					DeviceName:               d.info.DeviceName,
					CustomLabel:              d.label, // "The custom label attached to this PCI device"
					VendorId:                 int32(d.info.VendorId),
					DeviceId:                 int32(d.info.DeviceId),
				})
			}
		}
	}
	return &queryConfigTargetBody{Res: &QueryConfigTargetResponse{Returnval: l.addSharedGpus(target, hosts)}}
}

// ---------------------------------------------------------------------------
// task hooks (simulator.RegisterObject)

func (l *lab) PutObject(obj mo.Reference) {
	t, ok := obj.(*simulator.Task)
	if !ok || t.Info.Entity == nil {
		return
	}
	entity := *t.Info.Entity
	switch {
	case entity.Type == "HostSystem":
		l.hookHostTask(t, entity)
	case entity.Type == "Folder" && strings.HasSuffix(t.Info.DescriptionId, ".createVm"):
		orig := t.Execute
		t.Execute = func(task *simulator.Task) (types.AnyType, types.BaseMethodFault) {
			res, err := orig(task)
			if ref, ok := res.(types.ManagedObjectReference); ok && err == nil {
				if vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok {
					simulator.Map.WithLock(vm, func() { normalizePassthroughDevices(vm); bumpChangeVersion(vm) })
				}
			}
			return res, err
		}
	case entity.Type == "VirtualMachine":
		op := t.Info.DescriptionId[strings.LastIndex(t.Info.DescriptionId, ".")+1:]
		l.mu.Lock()
		req := l.pending[entity]
		delete(l.pending, entity)
		l.mu.Unlock()
		var spec *types.VirtualMachineConfigSpec
		if r, ok := req.(*types.ReconfigVM_Task); ok && op == "reconfigVm" {
			spec = &r.Spec
		}
		var relocate *types.VirtualMachineRelocateSpec
		if r, ok := req.(*types.RelocateVM_Task); ok && op == "relocateVm" {
			relocate = &r.Spec
		}
		orig := t.Execute
		t.Execute = func(task *simulator.Task) (types.AnyType, types.BaseMethodFault) {
			vm, ok := simulator.Map.Get(entity).(*simulator.VirtualMachine)
			if !ok {
				return orig(task)
			}
			var fault types.BaseMethodFault
			var msg string
			if op == "reconfigVm" {
				// changeVersion makes a reconfigure a compare-and-swap ("the changes will only be applied if
				// the current changeVersion matches"): the check, the change and the new version are one step,
				// or two reconfigures read against one version could both pass the check.
				l.cas.Lock()
				defer l.cas.Unlock()
			}
			switch op {
			case "reconfigVm":
				fault, msg = checkChangeVersion(vm, spec)
				if fault == nil {
					fault, msg = l.checkReconfig(vm, spec)
				}
			case "powerOn":
				fault, msg = l.checkPowerOn(vm)
			case "relocateVm":
				fault, msg = l.checkRelocate(vm, relocate)
			case "createSnapshot":
				fault, msg = l.checkSnapshot(vm)
			case "powerOff", "suspend", "reset", "destroy", "cloneVm", "upgradeVm":
				fault, msg = l.checkConnected(vm)
			}
			if fault != nil {
				l.mu.Lock()
				l.faultMsg[task.Self] = msg
				l.mu.Unlock()
				return nil, fault
			}
			res, err := orig(task)
			if err == nil {
				switch op {
				case "reconfigVm":
					normalizeExtraConfig(vm)
					normalizePassthroughDevices(vm)
					bumpChangeVersion(vm)
				case "powerOn":
					l.claim(vm)
				case "powerOff", "suspend", "destroy":
					l.release(vm)
				}
			}
			return res, err
		}
	}
}

func (l *lab) hookHostTask(t *simulator.Task, entity types.ManagedObjectReference) {
	op := t.Info.DescriptionId[strings.LastIndex(t.Info.DescriptionId, ".")+1:]
	l.mu.Lock()
	h := l.hosts[entity]
	l.mu.Unlock()
	if h == nil {
		return
	}
	orig := t.Execute
	t.Execute = func(task *simulator.Task) (types.AnyType, types.BaseMethodFault) {
		var fault types.BaseMethodFault
		var msg string
		l.mu.Lock()
		connected := h.connected
		if !connected {
			fault, msg = hostNotConnected(h)
		}
		l.mu.Unlock()
		if connected && op == "enterMaintenanceMode" {
			// ESXi waits for the running VMs to be migrated or powered off;
			// without DRS that ends in a timeout.  The simulator fails at once
			// (assumed, not verified on real ESXi), whatever the cluster's DRS
			// (cluster_drs): it migrates nothing, as a DRS that finds no host
			// for them does (NoMaintenanceModeDrsRecommendationForVM lists the
			// reasons: pyVmomi docs/vim/event/).
			var running []string
			if host, ok := simulator.Map.Get(entity).(*simulator.HostSystem); ok {
				for _, ref := range host.Vm {
					if vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok &&
						vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
						running = append(running, vm.Name)
					}
				}
			}
			if len(running) > 0 {
				sort.Strings(running)
				fault = &types.Timedout{}
				msg = fmt.Sprintf("Operation timed out: host %s cannot enter maintenance mode while powered-on virtual machines run on it (%s).",
					h.name, strings.Join(running, ", "))
			}
		}
		if fault != nil {
			l.mu.Lock()
			l.faultMsg[task.Self] = msg
			l.mu.Unlock()
			return nil, fault
		}
		return orig(task)
	}
}

func (l *lab) UpdateObject(mo.Reference, []types.PropertyChange) {}
func (l *lab) RemoveObject(types.ManagedObjectReference)         {}

func (l *lab) checkConnected(vm *simulator.VirtualMachine) (types.BaseMethodFault, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if h := l.hostOfVM(vm); h != nil && !h.connected {
		return hostNotConnected(h)
	}
	return nil, ""
}

func isPassthrough(d types.BaseVirtualDevice) bool {
	_, ok := d.(*types.VirtualPCIPassthrough)
	return ok
}

// checkReconfig enforces what ESXi enforces for VMDirectPath I/O devices
// (sources in the header of this file; the check on a powered-on VM follows the
// vSphere docs' "power off the virtual machine" before adding a PCI device).
func (l *lab) checkReconfig(vm *simulator.VirtualMachine, spec *types.VirtualMachineConfigSpec) (types.BaseMethodFault, string) {
	if f, msg := l.checkConnected(vm); f != nil {
		return f, msg
	}
	if spec == nil {
		return nil, ""
	}
	if spec.Firmware != "" && spec.Firmware != vm.Config.Firmware &&
		vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
		return &types.InvalidPowerState{
				RequestedState: types.VirtualMachinePowerStatePoweredOff,
				ExistingState:  vm.Runtime.PowerState,
			}, fmt.Sprintf("The attempted operation cannot be performed in the current state (%s): the firmware can only be changed while the virtual machine is powered off.",
				powerStateText(vm.Runtime.PowerState))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.hostOfVM(vm)
	for i, c := range spec.DeviceChange {
		ds := c.GetVirtualDeviceConfigSpec()
		if ds.Device == nil || !isPassthrough(ds.Device) {
			continue
		}
		if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
			return &types.InvalidPowerState{
					InvalidState:   types.InvalidState{},
					RequestedState: types.VirtualMachinePowerStatePoweredOff,
					ExistingState:  vm.Runtime.PowerState,
				}, fmt.Sprintf("The attempted operation cannot be performed in the current state (%s): PCI passthrough devices can only be added to or removed from a powered-off virtual machine.",
					powerStateText(vm.Runtime.PowerState))
		}
		if ds.Operation == types.VirtualDeviceConfigSpecOperationRemove {
			continue
		}
		bad := func(why string) (types.BaseMethodFault, string) {
			return &types.InvalidDeviceBacking{InvalidDeviceSpec: types.InvalidDeviceSpec{
				InvalidVmConfig: types.InvalidVmConfig{Property: "virtualDeviceSpec.device.backing"},
				DeviceIndex:     int32(i),
			}}, fmt.Sprintf("Invalid configuration for device '%d': %s", i, why)
		}
		switch b := ds.Device.GetVirtualDevice().Backing.(type) {
		case *types.VirtualPCIPassthroughDeviceBackingInfo:
			if h == nil {
				return bad("the virtual machine has no host")
			}
			d := h.byID[b.Id]
			if d == nil {
				return bad(fmt.Sprintf("PCI device %s does not exist on host %s", b.Id, h.name))
			}
			if !d.active {
				return bad(fmt.Sprintf("PCI device %s on host %s is not an active passthrough device", b.Id, h.name))
			}
			if b.SystemId != h.systemID {
				return bad(fmt.Sprintf("systemId %q does not match host %s (%s)", b.SystemId, h.name, h.systemID))
			}
			if b.DeviceId != "" {
				v, err := strconv.ParseInt(strings.TrimPrefix(strings.ToLower(b.DeviceId), "0x"), 16, 32)
				if err != nil || uint16(v) != uint16(d.info.DeviceId) {
					return bad(fmt.Sprintf("deviceId %q does not match PCI device %s (%04x)", b.DeviceId, b.Id, uint16(d.info.DeviceId)))
				}
			}
			if b.VendorId != 0 && b.VendorId != d.info.VendorId {
				return bad(fmt.Sprintf("vendorId %d does not match PCI device %s (%d)", b.VendorId, b.Id, d.info.VendorId))
			}
		case *types.VirtualPCIPassthroughDynamicBackingInfo:
			if len(b.AllowedDevice) == 0 {
				return bad("dynamic passthrough backing needs at least one allowedDevice")
			}
		case *types.VirtualPCIPassthroughVmiopBackingInfo:
			if why := checkVmiop(h, b); why != "" {
				return bad(why)
			}
		case nil:
			return bad("missing backing")
		default:
			return bad(fmt.Sprintf("unsupported backing %T", b))
		}
	}
	return nil, ""
}

func powerStateText(s types.VirtualMachinePowerState) string {
	switch s {
	case types.VirtualMachinePowerStatePoweredOn:
		return "Powered on"
	case types.VirtualMachinePowerStateSuspended:
		return "Suspended"
	}
	return "Powered off"
}

func vmPassthroughDevices(vm *simulator.VirtualMachine) []*types.VirtualPCIPassthrough {
	var out []*types.VirtualPCIPassthrough
	if vm.Config == nil {
		return nil
	}
	for _, d := range vm.Config.Hardware.Device {
		if p, ok := d.(*types.VirtualPCIPassthrough); ok {
			out = append(out, p)
		}
	}
	return out
}

// inUse returns the VM that holds device id on host h while powered on.
// Caller holds l.mu.
func (l *lab) inUse(h *hostState, id string, self types.ManagedObjectReference) (types.ManagedObjectReference, bool) {
	owner, ok := l.owner[h.ref][id]
	if !ok || owner == self {
		return types.ManagedObjectReference{}, false
	}
	vm, ok := simulator.Map.Get(owner).(*simulator.VirtualMachine)
	if !ok || vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
		delete(l.owner[h.ref], id)
		return types.ManagedObjectReference{}, false
	}
	return owner, true
}

// checkPowerOn: full memory reservation (Broadcom KB 309986), devices active
// (API: passthruActive "meaning enabled + rebooted") and free (assumed).  Dynamic
// backings get a free matching device assigned (backing.assignedId).
func (l *lab) checkPowerOn(vm *simulator.VirtualMachine) (types.BaseMethodFault, string) {
	if f, msg := l.checkConnected(vm); f != nil {
		return f, msg
	}
	if vm.Runtime.Host != nil {
		if host, ok := simulator.Map.Get(*vm.Runtime.Host).(*simulator.HostSystem); ok && host.Runtime.InMaintenanceMode {
			return &types.InvalidHostState{Host: vm.Runtime.Host},
				fmt.Sprintf("The operation is not allowed in the current state of the host: %s is in maintenance mode.", host.Name)
		}
	}
	devs := vmPassthroughDevices(vm)
	if len(devs) == 0 {
		return nil, ""
	}
	memMB := int64(vm.Config.Hardware.MemoryMB)
	locked := vm.Config.MemoryReservationLockedToMax != nil && *vm.Config.MemoryReservationLockedToMax
	var resMB int64
	if vm.Config.MemoryAllocation != nil && vm.Config.MemoryAllocation.Reservation != nil {
		resMB = *vm.Config.MemoryAllocation.Reservation
	}
	if !locked && resMB < memMB {
		return &types.GenericVmConfigFault{Reason: fmt.Sprintf(
				"Invalid memory setting: memory reservation (sched.mem.min) should be equal to memsize(%d).", memMB)},
			fmt.Sprintf("Invalid memory setting: memory reservation (sched.mem.min) should be equal to memsize(%d).", memMB)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.hostOfVM(vm)
	if h == nil {
		return &types.GenericVmConfigFault{Reason: "no host"}, "The virtual machine has no host."
	}
	taken := map[string]bool{}
	for i, p := range devs {
		switch b := p.Backing.(type) {
		case *types.VirtualPCIPassthroughDeviceBackingInfo:
			d := h.byID[b.Id]
			if d == nil || !d.active {
				msg := fmt.Sprintf("Module 'DevicePowerOn' power on failed. PCI passthrough device %s is not available on host %s (not an active passthrough device).", b.Id, h.name)
				return &types.GenericVmConfigFault{Reason: msg}, msg
			}
			if other, busy := l.inUse(h, b.Id, vm.Self); busy {
				msg := fmt.Sprintf("Device %s is already in use by virtual machine %s.", b.Id, vmName(other))
				return &types.GenericVmConfigFault{Reason: msg}, msg
			}
			taken[b.Id] = true
		case *types.VirtualPCIPassthroughDynamicBackingInfo:
			found := ""
			for _, d := range h.devices {
				if !d.active || taken[d.info.Id] {
					continue
				}
				if _, busy := l.inUse(h, d.info.Id, vm.Self); busy {
					continue
				}
				// API reference, VirtualPCIPassthroughDynamicBackingInfo.customLabel:
				// "An optional label.  If set, the device must also have the same
				// customLabel attribute set."
				if b.CustomLabel != "" && b.CustomLabel != d.label {
					continue
				}
				for _, a := range b.AllowedDevice {
					if uint16(a.VendorId) == uint16(d.info.VendorId) && uint16(a.DeviceId) == uint16(d.info.DeviceId) {
						found = d.info.Id
						break
					}
				}
				if found != "" {
					break
				}
			}
			if found == "" {
				msg := fmt.Sprintf("No free passthrough device on host %s matches the allowed devices of dynamic DirectPath device %d", h.name, i)
				if b.CustomLabel != "" {
					msg += fmt.Sprintf(" with the label %q", b.CustomLabel)
				}
				msg += "."
				return &types.GenericVmConfigFault{Reason: msg}, msg
			}
			taken[found] = true
			b.AssignedId = found
		}
	}
	var ids []string
	for id := range taken {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	undoDynamic := func() {
		for _, p := range devs {
			if b, ok := p.Backing.(*types.VirtualPCIPassthroughDynamicBackingInfo); ok {
				b.AssignedId = ""
			}
		}
	}
	if f, msg := checkMMIO(vm, h, ids); f != nil {
		undoDynamic()
		return f, msg
	}
	if f, msg := l.placeVgpus(vm, h); f != nil {
		undoDynamic()
		return f, msg
	}
	return nil, ""
}

const (
	gib      = int64(1) << 30
	pageSize = int64(4096)
	// Without pciPassthru.use64bitMMIO a VM maps at most 917504 pages of 4 KiB
	// (3.5 GiB) of passthrough BARs.  Source: real vmware.log in Dell KB
	// 000199172 (tests/fixtures/real/esxi/dell-kb-000199172-vmware.log):
	// "PCIPassthru: total number of pages needed (4206594) exceeds limit
	// (917504), failing" for a GPU with 16 GiB + 48 MiB of BARs.
	pagesWithout64bitMMIO = int64(917504)
	// Above 16 GB of BARs the guest must boot EFI.  Source: Dell KB 000199172
	// ("only relevant if your PCI device maps memory regions whose sizes total
	// more than 16 GB ... Guest OS must boot with EFI").
	efiAbove = 16 * gib
	// The 64-bit window with use64bitMMIO=TRUE and no pciPassthru.64bitMMIOSizeGB:
	// assumed (not verified on real ESXi; no published value found).
	default64bitWindowGB = int64(32)
)

// bar is one BAR of a passthrough device: its size in bytes and whether it is
// a 64-bit BAR (lspci's "64-bit"; ESXi's vmware.log "type 3 ... flags 12").
type bar struct {
	size int64
	is64 bool
}

// checkMMIO models ESXi's power-on check of the passthrough BARs (only for
// devices whose BARs are known from the config; the vSphere API has none).
//   - Without extraConfig pciPassthru.use64bitMMIO=TRUE all BARs of the VM's
//     passthrough devices, 32- and 64-bit, count in 4 KiB pages against
//     917504 pages; the message is the real vmware.log line.  (Real ESXi
//     counted 2 pages more than the three BARs of the KB's GPU; which extra
//     pages it counts is not known, so this counts the BARs only.)
//   - With it: BIOS firmware cannot map more than 16 GB of BARs, and the
//     64-bit BARs only, packed largest first with each aligned to its size
//     (assumed: the placement is not published), must fit
//     pciPassthru.64bitMMIOSizeGB.  Source: a real power-on failure of a VM
//     with one NVIDIA L4 (BAR0 16 MiB 32-bit, BAR1 32 GiB and BAR3 32 MiB
//     64-bit) and 64bitMMIOSizeGB = 32 (tests/fixtures/real/esxi/
//     l4-esxi-firmware-could-not-allocate-pci-mmio.md): "Error message from
//     r760-l4.linkone.lab: The firmware could not allocate 33587200 KB of PCI
//     MMIO. Increase the size of PCI MMIO and try again." -- 33587200 KB is
//     32 GiB + 32 MiB, the 64-bit BARs without BAR0; 64 powered on.  32-bit
//     BARs go below 4 GiB, outside that window.
func checkMMIO(vm *simulator.VirtualMachine, h *hostState, ids []string) (types.BaseMethodFault, string) {
	var bars []bar
	for _, id := range ids {
		if d := h.byID[id]; d != nil {
			bars = append(bars, d.bars...)
		}
	}
	if len(bars) == 0 {
		return nil, ""
	}
	fail := func(why string) (types.BaseMethodFault, string) {
		msg := why + " Module 'DevicePowerOn' power on failed."
		return &types.GenericVmConfigFault{Reason: msg}, msg
	}
	use64, sizeGB := "", ""
	for _, o := range vm.Config.ExtraConfig {
		v := o.GetOptionValue()
		val := fmt.Sprint(v.Value)
		switch strings.ToLower(v.Key) {
		case "pcipassthru.use64bitmmio":
			use64 = val
		case "pcipassthru.64bitmmiosizegb":
			sizeGB = val
		}
	}
	var total int64
	for _, b := range bars {
		total += b.size
	}
	if !strings.EqualFold(strings.TrimSpace(use64), "TRUE") {
		var pages int64
		for _, b := range bars {
			pages += (b.size + pageSize - 1) / pageSize
		}
		if pages > pagesWithout64bitMMIO {
			return fail(fmt.Sprintf("PCIPassthru: total number of pages needed (%d) exceeds limit (%d), failing.",
				pages, pagesWithout64bitMMIO))
		}
		return nil, ""
	}
	// Dell KB 000199172: "sizes total more than 16 GB" -- all the BARs.
	if total > efiAbove && vm.Config.Firmware != string(types.GuestOsDescriptorFirmwareTypeEfi) {
		return fail(fmt.Sprintf("The passthrough devices of %s map %d GB of BARs: BIOS firmware cannot map BARs this large; use EFI firmware.",
			vm.Name, (total+gib-1)/gib))
	}
	var high []int64
	for _, b := range bars {
		if b.is64 {
			high = append(high, b.size)
		}
	}
	sort.Slice(high, func(i, j int) bool { return high[i] > high[j] })
	var need int64
	for _, b := range high {
		if b > 0 && need%b != 0 {
			need += b - need%b
		}
		need += b
	}
	window := default64bitWindowGB
	if sizeGB != "" {
		n, err := strconv.ParseInt(strings.TrimSpace(sizeGB), 10, 64)
		if err != nil || n <= 0 {
			return fail(fmt.Sprintf("pciPassthru.64bitMMIOSizeGB=%q is not a positive number.", sizeGB))
		}
		window = n
	}
	if need > window*gib {
		// ESXi's own words (l4-esxi-firmware-could-not-allocate-pci-mmio.md), without the
		// DevicePowerOn line, which that output does not show.
		msg := fmt.Sprintf("Error message from %s: The firmware could not allocate %d KB of PCI MMIO. Increase the size of PCI MMIO and try again.",
			h.name, need/1024)
		return &types.GenericVmConfigFault{Reason: msg}, msg
	}
	return nil, ""
}

// normalizeExtraConfig gives extraConfig the semantics of the API reference
// (VirtualMachineConfigSpec.extraConfig: "If the key is already present, it will
// be reset with the new value provided ... Keys with empty values will be removed"):
// a key set again replaces its value (the stock simulator appends a
// duplicate), and an empty value removes the key.  Caller holds the VM lock.
func normalizeExtraConfig(vm *simulator.VirtualMachine) {
	last := map[string]types.BaseOptionValue{}
	var order []string
	for _, o := range vm.Config.ExtraConfig {
		k := o.GetOptionValue().Key
		if _, ok := last[k]; !ok {
			order = append(order, k)
		}
		last[k] = o
	}
	out := make([]types.BaseOptionValue, 0, len(order))
	for _, k := range order {
		o := last[k]
		if v := o.GetOptionValue().Value; v == nil || fmt.Sprint(v) == "" {
			continue
		}
		out = append(out, o)
	}
	vm.Config.ExtraConfig = out
}

// normalizePassthroughDevices gives newly added VirtualPCIPassthrough devices
// what ESXi gives them: keys from 13000 (a real vCenter's passthrough device is
// "pcipassthrough-13000" to govc: vmware/govmomi issue #2773), label "PCI device
// N", the device name as summary, the PCI controller (key 100) -- label, summary
// and controller are assumed (not verified on real ESXi).  Caller holds the VM lock.
func normalizePassthroughDevices(vm *simulator.VirtualMachine) {
	used := map[int32]bool{}
	for _, d := range vm.Config.Hardware.Device {
		used[d.GetVirtualDevice().Key] = true
	}
	n := 0
	for _, d := range vm.Config.Hardware.Device {
		p, ok := d.(*types.VirtualPCIPassthrough)
		if !ok {
			continue
		}
		if p.Key < 13000 {
			delete(used, p.Key)
			k := int32(13000)
			for used[k] {
				k++
			}
			used[k] = true
			p.Key = k
		}
		summary := ""
		switch b := p.Backing.(type) {
		case *types.VirtualPCIPassthroughDeviceBackingInfo:
			summary = b.DeviceName
			if summary == "" {
				summary = b.Id
			}
		case *types.VirtualPCIPassthroughDynamicBackingInfo:
			summary = "Dynamic DirectPath IO: " + b.CustomLabel
		case *types.VirtualPCIPassthroughVmiopBackingInfo:
			summary = "NVIDIA GRID vGPU " + b.Vgpu // assumed wording
		}
		if p.DeviceInfo == nil {
			p.DeviceInfo = &types.Description{}
		}
		info := p.DeviceInfo.GetDescription()
		if info.Label == "" || strings.HasPrefix(info.Label, "pcipassthrough-") {
			info.Label = fmt.Sprintf("PCI device %d", n)
		}
		if info.Summary == "" || strings.HasPrefix(info.Summary, "pcipassthrough-") {
			info.Summary = summary
		}
		if p.ControllerKey == 0 {
			p.ControllerKey = 100
		}
		n++
	}
}

// checkRelocate: a VM with a (non-dynamic) DirectPath I/O device cannot move
// to another host (vMotion or cold migration): DisallowedMigrationDeviceAttached.
// vSphere docs list vMotion as unavailable with DirectPath I/O; refusing a cold
// migration too and the fault type are assumed (not verified on real ESXi).
func (l *lab) checkRelocate(vm *simulator.VirtualMachine, spec *types.VirtualMachineRelocateSpec) (types.BaseMethodFault, string) {
	if f, msg := l.checkConnected(vm); f != nil {
		return f, msg
	}
	if spec == nil || spec.Host == nil || vm.Runtime.Host == nil || *spec.Host == *vm.Runtime.Host {
		return nil, ""
	}
	for _, p := range vmPassthroughDevices(vm) {
		if _, ok := p.Backing.(*types.VirtualPCIPassthroughDeviceBackingInfo); ok {
			label := "PCI device"
			if p.DeviceInfo != nil {
				label = p.DeviceInfo.GetDescription().Label
			}
			msg := fmt.Sprintf("Migration of %s is not allowed: it has the PCI passthrough device '%s' attached.", vm.Name, label)
			return &types.DisallowedMigrationDeviceAttached{Fault: types.LocalizedMethodFault{
				Fault:            &types.DeviceNotSupported{Device: label},
				LocalizedMessage: "Device '" + label + "' is a PCI passthrough device; migration is not supported.",
			}}, msg
		}
	}
	return nil, ""
}

// checkSnapshot: a running VM with a passthrough device cannot be snapshotted
// (its memory and device state cannot be saved).  vSphere docs list snapshots as
// unavailable with DirectPath I/O; the fault type (SnapshotIncompatibleDeviceInVm,
// an API fault) is assumed.
func (l *lab) checkSnapshot(vm *simulator.VirtualMachine) (types.BaseMethodFault, string) {
	if f, msg := l.checkConnected(vm); f != nil {
		return f, msg
	}
	if vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOff || len(vmPassthroughDevices(vm)) == 0 {
		return nil, ""
	}
	msg := fmt.Sprintf("Cannot take a snapshot of %s while it runs with a PCI passthrough device.", vm.Name)
	return &types.SnapshotIncompatibleDeviceInVm{Fault: types.LocalizedMethodFault{
		Fault:            &types.DeviceNotSupported{Device: "PCI passthrough device"},
		LocalizedMessage: "PCI passthrough device",
	}}, msg
}

func vmName(ref types.ManagedObjectReference) string {
	if vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok {
		return vm.Name
	}
	return ref.Value
}

func (l *lab) claim(vm *simulator.VirtualMachine) {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.hostOfVM(vm)
	if h == nil {
		return
	}
	if l.owner[h.ref] == nil {
		l.owner[h.ref] = map[string]types.ManagedObjectReference{}
	}
	for _, p := range vmPassthroughDevices(vm) {
		switch b := p.Backing.(type) {
		case *types.VirtualPCIPassthroughDeviceBackingInfo:
			l.owner[h.ref][b.Id] = vm.Self
		case *types.VirtualPCIPassthroughDynamicBackingInfo:
			if b.AssignedId != "" {
				l.owner[h.ref][b.AssignedId] = vm.Self
			}
		}
	}
}

func (l *lab) release(vm *simulator.VirtualMachine) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.releaseVgpus(vm.Self)
	for _, m := range l.owner {
		for id, owner := range m {
			if owner == vm.Self {
				delete(m, id)
			}
		}
	}
	for _, p := range vmPassthroughDevices(vm) {
		if b, ok := p.Backing.(*types.VirtualPCIPassthroughDynamicBackingInfo); ok {
			b.AssignedId = ""
		}
	}
}

// state is what GET /gpupass/state returns.
func (l *lab) state() map[string]interface{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	names := make([]string, 0, len(l.byName))
	for n := range l.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	hosts := []map[string]interface{}{}
	for _, n := range names {
		h := l.byName[n]
		devs := []map[string]interface{}{}
		for _, d := range h.devices {
			if !d.capable {
				continue
			}
			e := map[string]interface{}{
				"id": d.info.Id, "enabled": d.enabled, "active": d.active, "function_of": d.group,
				"vendor_id": uint16(d.info.VendorId), "device_id": uint16(d.info.DeviceId),
			}
			if owner, ok := l.owner[h.ref][d.info.Id]; ok {
				e["owner"] = vmName(owner)
			}
			devs = append(devs, e)
		}
		hosts = append(hosts, map[string]interface{}{
			"name": h.name, "moref": h.ref.Value, "connected": h.connected, "not_responding": h.notResponding,
			"system_id": h.systemID, "devices": devs, "vgpus": l.vgpuState(h),
		})
	}
	return map[string]interface{}{"hosts": hosts}
}

// checkChangeVersion: vSphere API reference, VirtualMachineConfigSpec.changeVersion: "If specified when
// updating the configuration, the changes will only be applied if the current changeVersion matches the
// specified changeVersion. This field can be used to guard against updates that have happened between the
// configInfo was read and until it is applied." ReconfigVM_Task lists ConcurrentAccess among its faults
// ("thrown when an operation fails because another operation has modified the datastructure").  govmomi's
// simulator (0.24.2, simulator/virtual_machine.go ReconfigVMTask) neither checks nor updates it.  The
// task runs under the simulator's lock on the VM (simulator.go: ctx.Map.WithLock(handler, ...)), so the
// check and the update after a successful reconfigure are one atomic step, as on a host.
func checkChangeVersion(vm *simulator.VirtualMachine, spec *types.VirtualMachineConfigSpec) (types.BaseMethodFault, string) {
	if spec == nil || spec.ChangeVersion == "" || spec.ChangeVersion == vm.Config.ChangeVersion {
		return nil, ""
	}
	return &types.ConcurrentAccess{}, fmt.Sprintf(
		"Cannot complete operation due to concurrent modification by another operation (changeVersion %s is not the current %s).",
		spec.ChangeVersion, vm.Config.ChangeVersion)
}

var changeCounter uint64

// bumpChangeVersion: the API calls changeVersion "typically implemented as an ever increasing count or a
// time-stamp" and opaque to clients; a time-stamp with a counter keeps it unique.
func bumpChangeVersion(vm *simulator.VirtualMachine) {
	n := atomic.AddUint64(&changeCounter, 1)
	vm.Config.ChangeVersion = fmt.Sprintf("%s-%d", time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"), n)
}
