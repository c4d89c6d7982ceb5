package main

// NVIDIA vGPU ("shared direct" graphics) on top of the passthrough model.
//
// What a host reports and what the simulator enforces, each with its source
// (vSphere Web Services API reference as carried by govmomi vim25/types and
// enum.go doc comments, pyvmomi _typeinfo_vim for the API versions; VMware and
// NVIDIA documentation; real outputs in tests/fixtures/real/sharing/); "assumed"
// marks what is NOT verified on a real ESXi:
//
//   - host.config.graphicsInfo (HostGraphicsInfo, API 5.5): one entry per
//     graphics device: deviceName, vendorName, pciId ("PCI ID of this device
//     composed of bus:slot.function"; the simulator writes the host's PCI id,
//     0000:3b:00.0 -- which form a real host writes is assumed), graphicsType
//     (HostGraphicsInfoGraphicsType: "basic" when no host driver is available,
//     "shared" (vSGA), "direct" (passthrough), "sharedDirect" (vGPU shared
//     passthrough)), memorySizeInKB, vm ("Virtual machines using this graphics
//     device").  A device that is passthrough-active is "direct": the VMkernel
//     gives it whole to a VM, so the vGPU manager cannot share it (assumed from
//     the enum's meaning; NVML likewise reports one virtualization mode per GPU,
//     passthrough or host vGPU).
//   - host.config.graphicsConfig (HostGraphicsConfig, API 6.5):
//     hostDefaultGraphicsType shared | sharedDirect ("This default value can be
//     overridden by specifying graphics type for an individual device"),
//     sharedPassthruAssignmentPolicy performance ("assign VM to GPU with fewest
//     VMs") | consolidation ("group like VMs on GPU until fully loaded"),
//     deviceType[] (deviceId, graphicsType).  Changed with
//     HostGraphicsManager.UpdateGraphicsConfig.  vSphere Resource Management 6.5
//     "Configuring Host Graphics" lists "Virtual machines should be powered off"
//     as its prerequisite and "Configuring Graphics Devices" "Virtual machines
//     must be powered off": a change of a device that runs vGPU VMs is refused
//     (HostConfigFault and its message: assumed).  Both say "After clicking OK,
//     you must restart Xorg on the host" (vSphere Resource Management 6.5/6.7),
//     and F. Denneman's real session switches with `esxcli graphics host set
//     --default-type SharedPassthru` then `/etc/init.d/xorg restart`
//     (tests/fixtures/real/sharing/esxcli-graphics-denneman-a100.txt); the vSphere
//     Client shows a device's "active" and "configured" type apart.  So the
//     simulator keeps two states: graphicsConfig is the configured one and
//     changes at once; graphicsInfo.graphicsType, the profiles offered and the
//     placement policy follow the active one, which takes the configured one at
//     HostServiceSystem.RestartService("xorg") (the host's "xorg" service, "X.Org
//     Server" of the esx-xserver VIB, is in the real host configuration govmomi's
//     simulator/esx carries) or at a host reboot.  A restart that would take a
//     device running vGPUs out of shared direct is refused like the update
//     (assumed).  That the policy, too, waits for the restart is assumed (the
//     doc's "restart Xorg" follows the dialog that sets both).
//   - host.config.sharedPassthruGpuTypes (API 6.0): the vGPU profiles the host
//     offers, from the devices in sharedDirect mode; QueryConfigTarget lists
//     them as sharedGpuPassthroughTypes (VirtualMachinePciSharedGpuPassthroughInfo
//     "vgpu") and, from API 7.0.3 (pyvmomi: vim.version.v7_0_3_0), as
//     vgpuProfileInfo (VirtualMachineVgpuProfileInfo: profileName, deviceVendorId
//     "concatenates the 16-bit PCI vendor id in lower bits followed by 16-bit PCI
//     device id", fbSizeInGib, profileSharing timeSliced, profileClass
//     compute | quadro; a profile with no class in that enum, such as NVIDIA's
//     B series, is not listed there: assumed).
//   - Profile names: "grid_" + the board + "-" + the type, lower case
//     (grid_p40-2q: VMware's vHPC toolkit and T. Foster's vGPUCapacity PowerCLI
//     README "The format is grid_ followed by the physical GPU type p40 followed
//     by a dash followed by the vGPU profile 2q"); the lab's P40 types and
//     their framebuffer and max instances are the real `mdevctl types` of a
//     Tesla P40 (tests/fixtures/real/sharing/mdevctl-types-tesla-p40.txt).
//   - ReconfigVM_Task with a VirtualPCIPassthrough whose backing is
//     VirtualPCIPassthroughVmiopBackingInfo ("the vGPU configuration type
//     exposed by a VMIOP plugin"): the VM must be off (as every PCI device, see
//     passthru.go) and the profile must be one the VM's host offers
//     (InvalidDeviceBacking at reconfigure time: assumed; the vSphere Client
//     offers only the host's profiles).
//   - PowerOnVM_Task of a VM with vGPUs: all guest memory reserved (vSphere
//     Resource Management 6.5 "Add an NVIDIA GRID vGPU to a Virtual Machine":
//     "Click Reserve all memory"; VMware Horizon "Configuring 3D graphics": "Be
//     sure to click Reserve all memory when adding the device"), enforced by the
//     reservation check of passthru.go; then each vGPU is placed on a physical
//     GPU in sharedDirect mode that offers its profile, holds no vGPU of another
//     profile (time-sliced vGPUs on one GPU are of one type: NVIDIA's vGPU user
//     guide, "By default, a GPU supports only vGPUs with the same amount of frame
//     buffer ... equal-size mode"; the real nvidia-vgpud log of a P40 in
//     vgpu_unlock issue #70 says "Homogeneous vGPUs: 1"; API 8.0.3 adds
//     HostGraphicsConfigVgpuMode sameSize | mixedSize -- the simulator models
//     same size, one profile per GPU) and has fewer than the profile's maximum
//     instances, chosen by the assignment policy (VMware Horizon docs: "By
//     default, the ESXi host assigns virtual machines to the physical GPU with
//     the fewest virtual machines already assigned. This is called performance
//     mode"; consolidation fills one GPU "until the maximum number of virtual
//     machines is reached").  Two vGPUs of one VM go to two GPUs (assumed).  No
//     room: GenericVmConfigFault (the message is assumed).
//   - UpdatePassthruConfig enabling passthrough of a GPU that runs vGPUs:
//     HostConfigFault (assumed: the device cannot be taken from running VMs).

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// apiVersion is About.apiVersion (main.go sets it from -api-version).
var apiVersion = "7.0.3.0"

const (
	gfxBasic        = "basic"
	gfxShared       = "shared"
	gfxDirect       = "direct"
	gfxSharedDirect = "sharedDirect"
	policyPerf      = "performance"
	policyConsol    = "consolidation"
)

// vgpuPlacement: a running VM's vGPU on a physical GPU.
type vgpuPlacement struct {
	vm      types.ManagedObjectReference
	profile string
}

// isGraphics: display controllers (class 0x03xx) are what graphicsInfo lists.
func (d *pciDev) isGraphics() bool {
	return uint16(d.info.ClassId)>>8 == 0x03 && d.info.Function == 0
}

// graphicsType is the device's type as graphicsInfo reports it.  Caller holds l.mu.
func (h *hostState) graphicsType(d *pciDev) string {
	if d.active {
		return gfxDirect
	}
	if len(d.vgpu) == 0 {
		return gfxBasic // "Basic graphics when no host driver is available"
	}
	t := d.gfxActive
	if t == "" {
		t = h.gfxActiveDef
	}
	return t
}

// configuredType is the device's type once the configuration is applied.  Caller holds l.mu.
func (h *hostState) configuredType(d *pciDev) string {
	if d.active {
		return gfxDirect
	}
	if len(d.vgpu) == 0 {
		return gfxBasic
	}
	if d.gfxType != "" {
		return d.gfxType
	}
	return h.gfxDefault
}

// applyGraphics puts the configured graphics configuration in effect (Xorg
// restart or host reboot; see the header).  Caller holds l.mu.
func (h *hostState) applyGraphics() {
	h.gfxActiveDef, h.gfxActivePol = h.gfxDefault, h.gfxPolicy
	for _, d := range h.devices {
		d.gfxActive = d.gfxType
	}
}

// offered: the profiles device d offers now (sharedDirect only).  Caller holds l.mu.
func (h *hostState) offered(d *pciDev) []vgpuType {
	if h.graphicsType(d) != gfxSharedDirect {
		return nil
	}
	return d.vgpu
}

// profiles: every profile the host offers, in device order.  Caller holds l.mu.
func (h *hostState) profiles() []vgpuType {
	var out []vgpuType
	seen := map[string]bool{}
	for _, d := range h.devices {
		for _, t := range h.offered(d) {
			if !seen[t.Name] {
				seen[t.Name] = true
				out = append(out, t)
			}
		}
	}
	return out
}

func (h *hostState) offers(profile string) bool {
	for _, t := range h.profiles() {
		if t.Name == profile {
			return true
		}
	}
	return false
}

// graphicsInfo / graphicsConfig as the host reports them.  Caller holds l.mu.
func (l *lab) graphicsInfo(h *hostState) []types.HostGraphicsInfo {
	var out []types.HostGraphicsInfo
	for _, d := range h.devices {
		if !d.isGraphics() {
			continue
		}
		info := types.HostGraphicsInfo{
			DeviceName: d.info.DeviceName, VendorName: d.info.VendorName, PciId: d.info.Id,
			GraphicsType: h.graphicsType(d), MemorySizeInKB: d.memoryKB,
		}
		for _, p := range l.vgpus[h.ref][d.info.Id] {
			info.Vm = append(info.Vm, p.vm)
		}
		if owner, ok := l.owner[h.ref][d.info.Id]; ok && info.GraphicsType == gfxDirect {
			info.Vm = append(info.Vm, owner)
		}
		out = append(out, info)
	}
	return out
}

func (h *hostState) graphicsConfig() *types.HostGraphicsConfig {
	cfg := &types.HostGraphicsConfig{HostDefaultGraphicsType: h.gfxDefault, SharedPassthruAssignmentPolicy: h.gfxPolicy}
	for _, d := range h.devices {
		if d.gfxType != "" {
			cfg.DeviceType = append(cfg.DeviceType, types.HostGraphicsConfigDeviceType{DeviceId: d.info.Id, GraphicsType: d.gfxType})
		}
	}
	return cfg
}

// mirrorGraphics copies the graphics state into the host and its graphics
// manager.  Caller holds l.mu and the host's lock.
func (l *lab) mirrorGraphics(h *hostState, host *simulator.HostSystem) {
	info := l.graphicsInfo(h)
	cfg := h.graphicsConfig()
	var names []string
	for _, t := range h.profiles() {
		names = append(names, t.Name)
	}
	host.Config.GraphicsInfo = info
	host.Config.GraphicsConfig = cfg
	host.Config.SharedPassthruGpuTypes = names
	if g := h.graphics; g != nil {
		g.GraphicsInfo, g.GraphicsConfig, g.SharedPassthruGpuTypes = info, cfg, names
	}
}

// ---------------------------------------------------------------------------
// HostGraphicsManager

// GraphicsManager is a working configManager.graphicsManager.
type GraphicsManager struct {
	mo.HostGraphicsManager

	lab  *lab
	host *hostState
}

func validGraphicsType(t string) bool { return t == gfxShared || t == gfxSharedDirect }

func (g *GraphicsManager) UpdateGraphicsConfig(ctx *simulator.Context, req *types.UpdateGraphicsConfig) soap.HasFault {
	body := &methods.UpdateGraphicsConfigBody{}
	l, h := g.lab, g.host
	l.mu.Lock()
	if !h.connected {
		f, msg := hostNotConnected(h)
		l.mu.Unlock()
		body.Fault_ = simulator.Fault(msg, f)
		return body
	}
	fail := func(f types.BaseMethodFault, msg string) soap.HasFault {
		l.mu.Unlock()
		body.Fault_ = simulator.Fault(msg, f)
		return body
	}
	c := req.Config
	// HostGraphicsConfigGraphicsType_enum: shared | sharedDirect;
	// HostGraphicsConfigSharedPassthruAssignmentPolicy_enum: performance | consolidation.
	if !validGraphicsType(c.HostDefaultGraphicsType) {
		return fail(&types.InvalidArgument{InvalidProperty: "config.hostDefaultGraphicsType"},
			fmt.Sprintf("hostDefaultGraphicsType %q is not shared or sharedDirect", c.HostDefaultGraphicsType))
	}
	if c.SharedPassthruAssignmentPolicy != policyPerf && c.SharedPassthruAssignmentPolicy != policyConsol {
		return fail(&types.InvalidArgument{InvalidProperty: "config.sharedPassthruAssignmentPolicy"},
			fmt.Sprintf("sharedPassthruAssignmentPolicy %q is not performance or consolidation", c.SharedPassthruAssignmentPolicy))
	}
	types_ := map[string]string{}
	for _, dt := range c.DeviceType {
		d := h.byID[dt.DeviceId]
		if d == nil || !d.isGraphics() {
			return fail(&types.InvalidArgument{InvalidProperty: "config.deviceType.deviceId"},
				fmt.Sprintf("%s is not a graphics device of host %s", dt.DeviceId, h.name))
		}
		if !validGraphicsType(dt.GraphicsType) {
			return fail(&types.InvalidArgument{InvalidProperty: "config.deviceType.graphicsType"},
				fmt.Sprintf("graphicsType %q is not shared or sharedDirect", dt.GraphicsType))
		}
		types_[dt.DeviceId] = dt.GraphicsType
	}
	// "Virtual machines should be powered off" (vSphere Resource Management,
	// Configuring Host Graphics): refuse a change under running vGPU VMs.
	for _, d := range h.devices {
		want := types_[d.info.Id]
		if want == "" {
			want = c.HostDefaultGraphicsType
		}
		before := h.graphicsType(d)
		if len(l.vgpus[h.ref][d.info.Id]) > 0 && before == gfxSharedDirect && want != gfxSharedDirect {
			return fail(&types.HostConfigFault{}, fmt.Sprintf(
				"Cannot change the graphics type of %s on host %s while virtual machines use its vGPUs.", d.info.Id, h.name))
		}
	}
	h.gfxDefault, h.gfxPolicy = c.HostDefaultGraphicsType, c.SharedPassthruAssignmentPolicy
	for _, d := range h.devices {
		d.gfxType = types_[d.info.Id]
	}
	l.mirror(h)
	l.mu.Unlock()
	body.Res = &types.UpdateGraphicsConfigResponse{}
	return body
}

func (g *GraphicsManager) RefreshGraphicsManager(req *types.RefreshGraphicsManager) soap.HasFault {
	return &methods.RefreshGraphicsManagerBody{Res: &types.RefreshGraphicsManagerResponse{}}
}

// IsSharedGraphicsActive: "true if shared graphics (vSGA) is active" (API
// reference); vGPU is shared *direct*, so this stays false unless a device is in
// "shared" mode.
func (g *GraphicsManager) IsSharedGraphicsActive(req *types.IsSharedGraphicsActive) soap.HasFault {
	l, h := g.lab, g.host
	l.mu.Lock()
	defer l.mu.Unlock()
	active := false
	for _, d := range h.devices {
		if h.graphicsType(d) == gfxShared {
			active = true
		}
	}
	return &methods.IsSharedGraphicsActiveBody{Res: &types.IsSharedGraphicsActiveResponse{Returnval: active}}
}

// ---------------------------------------------------------------------------
// HostServiceSystem: RestartService("xorg") puts the graphics configuration in
// effect (see the header); other services restart with no effect here.

// ServiceSystem is a working configManager.serviceSystem.
type ServiceSystem struct {
	mo.HostServiceSystem

	lab  *lab
	host *hostState
}

func (s *ServiceSystem) RestartService(req *types.RestartService) soap.HasFault {
	body := &methods.RestartServiceBody{}
	l, h := s.lab, s.host
	l.mu.Lock()
	defer l.mu.Unlock()
	if !h.connected {
		f, msg := hostNotConnected(h)
		body.Fault_ = simulator.Fault(msg, f)
		return body
	}
	known := false
	for _, svc := range s.ServiceInfo.Service {
		known = known || svc.Key == req.Id
	}
	if !known {
		// RestartService faults: NotFound "if the specified service ID is unknown" (API reference)
		body.Fault_ = simulator.Fault(fmt.Sprintf("The service %q is not known on host %s.", req.Id, h.name), &types.NotFound{})
		return body
	}
	if req.Id == "xorg" {
		for _, d := range h.devices {
			if l.runsVgpus(h, d.info.Id) && h.graphicsType(d) == gfxSharedDirect && h.configuredType(d) != gfxSharedDirect {
				body.Fault_ = simulator.Fault(fmt.Sprintf(
					"Cannot change the graphics type of %s on host %s while virtual machines use its vGPUs.", d.info.Id, h.name),
					&types.HostConfigFault{})
				return body
			}
		}
		h.applyGraphics()
		l.mirror(h)
	}
	body.Res = &types.RestartServiceResponse{}
	return body
}

// ---------------------------------------------------------------------------
// placement at power-on

func vmVgpus(vm *simulator.VirtualMachine) []string {
	var out []string
	for _, p := range vmPassthroughDevices(vm) {
		if b, ok := p.Backing.(*types.VirtualPCIPassthroughVmiopBackingInfo); ok {
			out = append(out, b.Vgpu)
		}
	}
	return out
}

func profileOf(d *pciDev, name string) *vgpuType {
	for i := range d.vgpu {
		if d.vgpu[i].Name == name {
			return &d.vgpu[i]
		}
	}
	return nil
}

// placeVgpus places every vGPU of vm on a GPU of host h (see the header) and
// records the placements; nothing is recorded when one does not fit.  Caller
// holds l.mu.
func (l *lab) placeVgpus(vm *simulator.VirtualMachine, h *hostState) (types.BaseMethodFault, string) {
	profiles := vmVgpus(vm)
	if len(profiles) == 0 {
		return nil, ""
	}
	if l.vgpus[h.ref] == nil {
		l.vgpus[h.ref] = map[string][]vgpuPlacement{}
	}
	load := map[string][]vgpuPlacement{}
	for id, ps := range l.vgpus[h.ref] {
		for _, p := range ps {
			if p.vm != vm.Self {
				load[id] = append(load[id], p)
			}
		}
	}
	mine := map[string]bool{}
	var chosen []string
	for _, profile := range profiles {
		best := ""
		for _, d := range h.devices {
			t := profileOf(d, profile)
			if t == nil || h.graphicsType(d) != gfxSharedDirect || mine[d.info.Id] {
				continue
			}
			resident := load[d.info.Id]
			if len(resident) >= t.MaxInstances {
				continue
			}
			if len(resident) > 0 && resident[0].profile != profile {
				continue // one profile per physical GPU (equal-size mode)
			}
			if best == "" {
				best = d.info.Id
				continue
			}
			n, m := len(resident), len(load[best])
			if (h.gfxActivePol == policyConsol && n > m) || (h.gfxActivePol != policyConsol && n < m) {
				best = d.info.Id
			}
		}
		if best == "" {
			msg := fmt.Sprintf("Could not power on %s: no graphics device of host %s has room for vGPU '%s' "+
				"(each GPU takes vGPUs of one profile, up to the profile's maximum).", vm.Name, h.name, profile)
			return &types.GenericVmConfigFault{Reason: msg}, msg
		}
		mine[best] = true
		chosen = append(chosen, best)
		load[best] = append(load[best], vgpuPlacement{vm.Self, profile})
	}
	for i, id := range chosen {
		l.vgpus[h.ref][id] = append(l.vgpus[h.ref][id], vgpuPlacement{vm.Self, profiles[i]})
	}
	l.mirror(h)
	return nil, ""
}

// releaseVgpus drops the VM's placements.  Caller holds l.mu.
func (l *lab) releaseVgpus(vm types.ManagedObjectReference) {
	for ref, byDev := range l.vgpus {
		changed := false
		for id, ps := range byDev {
			kept := ps[:0]
			for _, p := range ps {
				if p.vm != vm {
					kept = append(kept, p)
				} else {
					changed = true
				}
			}
			byDev[id] = kept
		}
		if changed {
			if h := l.hosts[ref]; h != nil {
				l.mirror(h)
			}
		}
	}
}

// runsVgpus: does device id of host h hold running vGPUs?  Caller holds l.mu.
func (l *lab) runsVgpus(h *hostState, id string) bool {
	return len(l.vgpus[h.ref][id]) > 0
}

// checkVmiop: a vmiop backing must name a profile the VM's host offers (see the header).  Caller holds l.mu.
func checkVmiop(h *hostState, b *types.VirtualPCIPassthroughVmiopBackingInfo) string {
	if b.Vgpu == "" {
		return "a vGPU device needs a profile (vgpu)"
	}
	if h == nil {
		return "the virtual machine has no host"
	}
	if !h.offers(b.Vgpu) {
		return fmt.Sprintf("vGPU profile '%s' is not offered by host %s", b.Vgpu, h.name)
	}
	return ""
}

// ---------------------------------------------------------------------------
// QueryConfigTarget with vgpuProfileInfo (API 7.0.3), which govmomi 0.24's
// ConfigTarget does not have: the answer is re-encoded with the field added.

type vgpuProfileInfo struct {
	types.VirtualMachineTargetInfo

	ProfileName    string `xml:"profileName"`
	DeviceVendorId int64  `xml:"deviceVendorId"`
	FbSizeInGib    int64  `xml:"fbSizeInGib"`
	ProfileSharing string `xml:"profileSharing"`
	ProfileClass   string `xml:"profileClass"`
}

type configTargetEx struct {
	types.ConfigTarget

	VgpuProfileInfo []vgpuProfileInfo `xml:"vgpuProfileInfo,omitempty"`
}

// QueryConfigTargetResponse: the element name comes from this type's name.
type QueryConfigTargetResponse struct {
	Returnval *configTargetEx `xml:"returnval,omitempty"`
}

type queryConfigTargetBody struct {
	Res    *QueryConfigTargetResponse `xml:"QueryConfigTargetResponse,omitempty"`
	Fault_ *soap.Fault                `xml:"http://schemas.xmlsoap.org/soap/envelope/ Fault,omitempty"`
}

func (b *queryConfigTargetBody) Fault() *soap.Fault { return b.Fault_ }

// apiAtLeast compares dotted API versions ("7.0.3.0" >= "7.0.3").
func apiAtLeast(have, want string) bool {
	h, w := strings.Split(have, "."), strings.Split(want, ".")
	for i := 0; i < len(w); i++ {
		a, b := 0, 0
		if i < len(h) {
			a, _ = strconv.Atoi(h[i])
		}
		b, _ = strconv.Atoi(w[i])
		if a != b {
			return a > b
		}
	}
	return true
}

// addSharedGpus adds the hosts' profiles to a ConfigTarget.  Caller holds l.mu.
func (l *lab) addSharedGpus(target *types.ConfigTarget, hosts []types.ManagedObjectReference) *configTargetEx {
	out := &configTargetEx{ConfigTarget: *target}
	seen := map[string]bool{}
	for _, ref := range hosts {
		h := l.hosts[ref]
		if h == nil || !h.connected {
			continue
		}
		for _, d := range h.devices {
			for _, t := range h.offered(d) {
				if seen[t.Name] {
					continue
				}
				seen[t.Name] = true
				out.SharedGpuPassthroughTypes = append(out.SharedGpuPassthroughTypes, types.VirtualMachinePciSharedGpuPassthroughInfo{
					VirtualMachineTargetInfo: types.VirtualMachineTargetInfo{Name: t.Name}, Vgpu: t.Name})
				if t.Class != "" && apiAtLeast(apiVersion, "7.0.3") {
					out.VgpuProfileInfo = append(out.VgpuProfileInfo, vgpuProfileInfo{
						VirtualMachineTargetInfo: types.VirtualMachineTargetInfo{Name: t.Name},
						ProfileName:              t.Name,
						DeviceVendorId:           int64(uint16(d.info.VendorId)) | int64(uint16(d.info.DeviceId))<<16,
						FbSizeInGib:              t.FramebufferMB / 1024,
						ProfileSharing:           "timeSliced",
						ProfileClass:             t.Class,
					})
				}
			}
		}
	}
	return out
}

// vgpuState is the vGPU part of GET /gpupass/state.  Caller holds l.mu.
func (l *lab) vgpuState(h *hostState) []map[string]interface{} {
	var out []map[string]interface{}
	ids := make([]string, 0, len(l.vgpus[h.ref]))
	for id := range l.vgpus[h.ref] {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		for _, p := range l.vgpus[h.ref][id] {
			out = append(out, map[string]interface{}{"gpu": id, "vm": vmName(p.vm), "profile": p.profile})
		}
	}
	return out
}
