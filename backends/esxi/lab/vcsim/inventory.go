package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// tempDirs are removed on exit (datastore backing directories).
var tempDirs []string

func cleanupTempDirs() {
	for _, d := range tempDirs {
		_ = os.RemoveAll(d)
	}
}

// taskResult returns the result of an in-process task.  The simulator runs
// these tasks synchronously, so reading the Task object directly avoids a
// property-collector round trip per object (it matters for -scale-vms).
func taskResult(ctx context.Context, task *object.Task) (types.AnyType, error) {
	if t, ok := simulator.Map.Get(task.Reference()).(*simulator.Task); ok {
		switch t.Info.State {
		case types.TaskInfoStateSuccess:
			return t.Info.Result, nil
		case types.TaskInfoStateError:
			if t.Info.Error != nil {
				return nil, fmt.Errorf("%T: %s", t.Info.Error.Fault, t.Info.Error.LocalizedMessage)
			}
			return nil, fmt.Errorf("task %s failed", t.Self.Value)
		}
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return nil, err
	}
	return info.Result, nil
}

// datastoreParent: where the datastore directory goes.  The simulator writes
// a few small files per VM, so tmpfs (/dev/shm) makes -scale-vms much faster
// than an overlay /tmp.  $GPUPASS_VCSIM_DATASTORE_DIR overrides.
func datastoreParent() string {
	if d := os.Getenv("GPUPASS_VCSIM_DATASTORE_DIR"); d != "" {
		return d
	}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if f, err := os.CreateTemp("/dev/shm", ".gpupass-probe-"); err == nil {
			name := f.Name()
			_ = f.Close()
			_ = os.Remove(name)
			return "/dev/shm"
		}
	}
	return ""
}

func boolOr(p *bool, def bool) bool {
	if p == nil {
		return def
	}
	return *p
}

func makeDev(f pciFunc, group string) (*pciDev, error) {
	bus, slot, fn, err := parsePCIAddress(f.Address)
	if err != nil {
		return nil, err
	}
	capable := boolOr(f.PassthruCapable, true)
	dependent := f.DependentDevice
	if dependent == "" {
		dependent = f.Address
	}
	var bars []bar
	for _, b := range f.Bars {
		bars = append(bars, bar{size: b.Size, is64: b.Is64})
	}
	return &pciDev{
		group:         group,
		bars:          bars,
		label:         f.HardwareLabel,
		vmkernelInUse: f.VMkernelInUse,
		gfxType:       f.GraphicsType,
		gfxActive:     f.GraphicsType,
		memoryKB:      f.MemoryMB * 1024,
		vgpu:          f.VgpuTypes,
		info: types.HostPciDevice{
			Id:           f.Address,
			ClassId:      f.ClassID.int16(),
			Bus:          bus,
			Slot:         slot,
			Function:     fn,
			VendorId:     f.VendorID.int16(),
			SubVendorId:  f.SubVendorID.int16(),
			VendorName:   f.VendorName,
			DeviceId:     f.DeviceID.int16(),
			SubDeviceId:  f.SubDeviceID.int16(),
			ParentBridge: f.ParentBridge,
			DeviceName:   f.DeviceName,
		},
		capable:   capable,
		enabled:   capable && f.PassthruEnabled,
		active:    capable && f.PassthruActive,
		dependent: dependent,
	}, nil
}

// registerHost adds the configured GPUs to a simulator host and registers its
// HostPciPassthruSystem.
func (l *lab) registerHost(ref types.ManagedObjectReference, hc *hostConfig, esxMode bool) error {
	hs, ok := simulator.Map.Get(ref).(*simulator.HostSystem)
	if !ok {
		return fmt.Errorf("host %s not found", ref)
	}
	gfx := graphicsSettings{DefaultType: gfxShared, AssignmentPolicy: policyPerf} // what a host has before it is configured (assumed)
	if hc.Graphics != nil {
		if hc.Graphics.DefaultType != "" {
			gfx.DefaultType = hc.Graphics.DefaultType
		}
		if hc.Graphics.AssignmentPolicy != "" {
			gfx.AssignmentPolicy = hc.Graphics.AssignmentPolicy
		}
	}
	if !validGraphicsType(gfx.DefaultType) || (gfx.AssignmentPolicy != policyPerf && gfx.AssignmentPolicy != policyConsol) {
		return fmt.Errorf("host %s: graphics default_type must be shared or sharedDirect and assignment_policy performance or consolidation", hc.Name)
	}
	st := &hostState{
		gfxDefault:   gfx.DefaultType,
		gfxPolicy:    gfx.AssignmentPolicy,
		gfxActiveDef: gfx.DefaultType,
		gfxActivePol: gfx.AssignmentPolicy,
		ref:         ref,
		name:        hs.Name,
		systemID:    hs.Hardware.SystemInfo.Uuid,
		connected:   true,
		rebootDelay: time.Duration(hc.RebootSeconds * float64(time.Second)),
		rebootLag:   time.Duration(hc.RebootLag * float64(time.Second)),
		rebind:      hc.Rebind,
		esx:         esxMode,
		byID:        map[string]*pciDev{},
		armed:       map[string]bool{},
	}
	add := func(d *pciDev) error {
		if st.byID[d.info.Id] != nil {
			return fmt.Errorf("host %s: duplicate PCI address %s", st.name, d.info.Id)
		}
		st.byID[d.info.Id] = d
		st.devices = append(st.devices, d)
		return nil
	}
	// the template's chipset/NIC/storage devices: present, not passthrough capable;
	// a configured device at the same address replaces the template's (the config
	// describes the real host)
	configured := map[string]bool{}
	for _, g := range hc.GPUs {
		configured[g.Address] = true
		for _, f := range g.Functions {
			configured[f.Address] = true
		}
	}
	for _, d := range hs.Hardware.PciDevice {
		if configured[d.Id] {
			continue
		}
		if err := add(&pciDev{info: d, dependent: d.Id, group: d.Id}); err != nil {
			return err
		}
	}
	for _, g := range hc.GPUs {
		d, err := makeDev(g.pciFunc, g.Address)
		if err != nil {
			return fmt.Errorf("host %s: %v", st.name, err)
		}
		if err := add(d); err != nil {
			return err
		}
		for _, f := range g.Functions {
			fd, err := makeDev(f, g.Address)
			if err != nil {
				return fmt.Errorf("host %s: %v", st.name, err)
			}
			if err := add(fd); err != nil {
				return err
			}
		}
	}

	pref := types.ManagedObjectReference{Type: "HostPciPassthruSystem", Value: "pciPassthruSystem-" + ref.Value}
	if esxMode && hs.ConfigManager.PciPassthruSystem != nil {
		pref = *hs.ConfigManager.PciPassthruSystem // "ha-pcipassthrusystem"
	}
	p := &PciPassthruSystem{lab: l, host: st}
	p.Self = pref
	simulator.Map.Put(p)
	st.passthru = p

	gref := types.ManagedObjectReference{Type: "HostGraphicsManager", Value: "graphicsManager-" + ref.Value}
	if esxMode && hs.ConfigManager.GraphicsManager != nil {
		gref = *hs.ConfigManager.GraphicsManager // "ha-graphics-manager"
	}
	g := &GraphicsManager{lab: l, host: st}
	g.Self = gref
	simulator.Map.Put(g)
	st.graphics = g

	sref := types.ManagedObjectReference{Type: "HostServiceSystem", Value: "serviceSystem-" + ref.Value}
	if esxMode && hs.ConfigManager.ServiceSystem != nil {
		sref = *hs.ConfigManager.ServiceSystem
	}
	svc := &ServiceSystem{lab: l, host: st}
	svc.Self = sref
	if hs.Config != nil && hs.Config.Service != nil {
		svc.ServiceInfo = *hs.Config.Service
	}
	simulator.Map.Put(svc)
	st.services = svc

	// The stock template has no capability at all.  deviceRebindWithoutRebootSupported
	// (vSphere API 7.0; pyvmomi: vim.version.v7_0) "enables PCI passthrough and SR-IOV
	// configuration without reboot" (govmomi vim25/types HostCapability): per host here.
	rebind := hc.Rebind
	capability := &types.HostCapability{RebootSupported: true, ShutdownSupported: true,
		MaintenanceModeSupported: true, DeviceRebindWithoutRebootSupported: &rebind}
	simulator.Map.WithLock(hs, func() {
		hs.ConfigManager.PciPassthruSystem = &pref
		hs.ConfigManager.GraphicsManager = &gref
		hs.ConfigManager.ServiceSystem = &sref
		hs.Capability = capability
		hs.Runtime.InMaintenanceMode = hc.MaintenanceMode
		if hc.MemoryMB > 0 {
			hs.Hardware.MemorySize = hc.MemoryMB * 1024 * 1024
			hs.Summary.Hardware.MemorySize = hs.Hardware.MemorySize
		}
	})

	l.mu.Lock()
	l.hosts[ref] = st
	l.byName[st.name] = st
	l.mirror(st)
	l.mu.Unlock()
	return nil
}

func scaleHosts(cfg *labConfig) []hostConfig {
	var out []hostConfig
	gpus := cfg.Scale.GPUsPerHost
	if gpus <= 0 {
		gpus = 1
	}
	t := true
	for i := 0; i < cfg.Scale.Hosts; i++ {
		hc := hostConfig{Name: fmt.Sprintf("scale-esx-%03d.lab.local", i), Cluster: "scale-cluster"}
		for g := 0; g < gpus; g++ {
			hc.GPUs = append(hc.GPUs, gpuConfig{pciFunc: pciFunc{
				Address:  fmt.Sprintf("0000:%02x:00.0", 0x20+g*8),
				VendorID: 0x10de, DeviceID: 0x1eb8, SubVendorID: 0x10de, SubDeviceID: 0x12a2,
				VendorName: "NVIDIA Corporation", DeviceName: "TU104GL [Tesla T4]",
				ClassID: 0x0302, PassthruCapable: &t, PassthruEnabled: g%2 == 0, PassthruActive: g%2 == 0,
			}})
		}
		out = append(out, hc)
	}
	return out
}

func buildInventory(ctx context.Context, m *simulator.Model, cfg *labConfig, l *lab) error {
	c, err := vim25.NewClient(ctx, m.Service)
	if err != nil {
		return err
	}
	t0 := time.Now()
	hosts := append([]hostConfig{}, cfg.Hosts...)
	esxMode := cfg.Mode == "esx"
	if !esxMode {
		hosts = append(hosts, scaleHosts(cfg)...)
	}

	hostObjs := map[string]*object.HostSystem{}
	var folders *object.DatacenterFolders

	if esxMode {
		if len(hosts) > 1 {
			return fmt.Errorf("esx mode has exactly one host, config has %d", len(hosts))
		}
		dc := object.NewDatacenter(c, esx.Datacenter.Reference())
		if folders, err = dc.Folders(ctx); err != nil {
			return err
		}
		href := esx.HostSystem.Reference()
		hc := hostConfig{Name: "localhost.localdomain"}
		if len(hosts) == 1 {
			hc = hosts[0]
		}
		hs := simulator.Map.Get(href).(*simulator.HostSystem)
		if hc.Name != "" {
			hs.Name = hc.Name
			hs.Summary.Config.Name = hc.Name
		}
		if err := l.registerHost(href, &hc, true); err != nil {
			return err
		}
		hostObjs[hs.Name] = object.NewHostSystem(c, href)
		hosts = []hostConfig{hc}
	} else {
		root := object.NewRootFolder(c)
		dc, err := root.CreateDatacenter(ctx, cfg.Datacenter)
		if err != nil {
			return err
		}
		if folders, err = dc.Folders(ctx); err != nil {
			return err
		}
		clusters := map[string]*object.ClusterComputeResource{}
		ensure := func(name string) (*object.ClusterComputeResource, error) {
			if cl := clusters[name]; cl != nil {
				return cl, nil
			}
			cl, err := folders.HostFolder.CreateCluster(ctx, name, types.ClusterConfigSpecEx{})
			if err != nil {
				return nil, fmt.Errorf("cluster %s: %v", name, err)
			}
			if behavior, ok := cfg.ClusterDrs[name]; ok {
				// the stock simulator's ReconfigureComputeResource_Task leaves drsConfig as it is: set here
				switch types.DrsBehavior(behavior) {
				case types.DrsBehaviorManual, types.DrsBehaviorPartiallyAutomated, types.DrsBehaviorFullyAutomated:
				default:
					return nil, fmt.Errorf("cluster %s: cluster_drs %q is no DrsBehavior", name, behavior)
				}
				if sc, ok := simulator.Map.Get(cl.Reference()).(*simulator.ClusterComputeResource); ok {
					simulator.Map.WithLock(sc, func() {
						sc.ConfigurationEx.(*types.ClusterConfigInfoEx).DrsConfig.DefaultVmBehavior = types.DrsBehavior(behavior)
					})
				}
			}
			clusters[name] = cl
			return cl, nil
		}
		for _, name := range cfg.Clusters {
			if _, err := ensure(name); err != nil {
				return err
			}
		}
		for i := range hosts {
			hc := &hosts[i]
			if hc.Name == "" {
				return fmt.Errorf("host %d has no name", i)
			}
			if hostObjs[hc.Name] != nil {
				return fmt.Errorf("duplicate host %s", hc.Name)
			}
			spec := types.HostConnectSpec{HostName: hc.Name}
			var task *object.Task
			if hc.Cluster != "" {
				cl, err := ensure(hc.Cluster)
				if err != nil {
					return err
				}
				task, err = cl.AddHost(ctx, spec, true, nil, nil)
				if err != nil {
					return err
				}
			} else {
				task, err = folders.HostFolder.AddStandaloneHost(ctx, spec, true, nil, nil)
				if err != nil {
					return err
				}
			}
			res, err := taskResult(ctx, task)
			if err != nil {
				return fmt.Errorf("add host %s: %v", hc.Name, err)
			}
			ref := res.(types.ManagedObjectReference)
			if err := l.registerHost(ref, hc, false); err != nil {
				return err
			}
			hostObjs[hc.Name] = object.NewHostSystem(c, ref)
		}
	}

	tHosts := time.Since(t0)
	// one local datastore, shared by name, backed by a temp directory
	dir, err := os.MkdirTemp(datastoreParent(), "gpupass-vcsim-ds-")
	if err != nil {
		return err
	}
	tempDirs = append(tempDirs, dir)
	for _, h := range hostObjs {
		dss, err := h.ConfigManager().DatastoreSystem(ctx)
		if err != nil {
			return err
		}
		if _, err := dss.CreateLocalDatastore(ctx, cfg.Datastore, dir); err != nil {
			return fmt.Errorf("datastore on %s: %v", h.Reference().Value, err)
		}
	}

	vms := append([]vmConfig{}, cfg.VMs...)
	if !esxMode && cfg.Scale.Hosts > 0 {
		for i := 0; i < cfg.Scale.VMs; i++ {
			vms = append(vms, vmConfig{
				Name: fmt.Sprintf("scale-vm-%04d", i), Host: fmt.Sprintf("scale-esx-%03d.lab.local", i%cfg.Scale.Hosts),
				Firmware: "efi", MemoryMB: 4096, NumCPUs: 2,
			})
		}
	}
	tDatastores := time.Since(t0) - tHosts
	seen := map[string]bool{}
	for i := range vms {
		if err := createVM(ctx, c, cfg, l, folders, hostObjs, &vms[i], seen); err != nil {
			return err
		}
	}
	log.Printf("inventory: %d hosts in %v, datastores in %v, %d VMs in %v",
		len(hostObjs), tHosts.Round(time.Millisecond), tDatastores.Round(time.Millisecond),
		len(vms), (time.Since(t0) - tHosts - tDatastores).Round(time.Millisecond))

	// QueryConfigTarget with passthrough devices: replace every compute
	// resource's EnvironmentBrowser (same moref) by our wrapper.
	for _, kind := range []string{"ComputeResource", "ClusterComputeResource"} {
		for _, e := range simulator.Map.All(kind) {
			var ref *types.ManagedObjectReference
			switch x := e.(type) {
			case *mo.ComputeResource:
				ref = x.EnvironmentBrowser
			case *simulator.ClusterComputeResource:
				ref = x.EnvironmentBrowser
			}
			if ref == nil {
				continue
			}
			if old, ok := simulator.Map.Get(*ref).(*simulator.EnvironmentBrowser); ok {
				simulator.Map.Put(&envBrowser{EnvironmentBrowser: *old, lab: l})
			}
		}
	}

	for _, hc := range hosts {
		if !boolOr(hc.Connected, true) {
			l.mu.Lock()
			h := l.byName[hc.Name]
			l.mu.Unlock()
			if h != nil {
				l.setConnected(h, false)
			}
		}
	}
	return nil
}

func createVM(ctx context.Context, c *vim25.Client, cfg *labConfig, l *lab, folders *object.DatacenterFolders,
	hostObjs map[string]*object.HostSystem, vc *vmConfig, seen map[string]bool) error {
	if vc.Name == "" {
		return fmt.Errorf("a VM has no name")
	}
	if seen[vc.Name] {
		return fmt.Errorf("duplicate VM %s", vc.Name)
	}
	seen[vc.Name] = true
	host := hostObjs[vc.Host]
	if host == nil {
		if len(hostObjs) == 1 && vc.Host == "" {
			for _, h := range hostObjs {
				host = h
			}
		} else {
			return fmt.Errorf("VM %s: unknown host %q", vc.Name, vc.Host)
		}
	}
	pool, err := host.ResourcePool(ctx)
	if err != nil {
		return err
	}
	mem := vc.MemoryMB
	if mem == 0 {
		mem = 4096
	}
	cpus := vc.NumCPUs
	if cpus == 0 {
		cpus = 2
	}
	guest := vc.GuestID
	if guest == "" {
		guest = string(types.VirtualMachineGuestOsIdentifierOtherGuest64)
	}
	firmware := vc.Firmware
	if firmware == "" {
		firmware = string(types.GuestOsDescriptorFirmwareTypeBios)
	}
	res := vc.MemoryReservationMB
	locked := vc.MemoryReservationLockedToMax
	if locked {
		res = mem
	}
	spec := types.VirtualMachineConfigSpec{
		Name:                         vc.Name,
		GuestId:                      guest,
		NumCPUs:                      cpus,
		MemoryMB:                     mem,
		Firmware:                     firmware,
		Files:                        &types.VirtualMachineFileInfo{VmPathName: "[" + cfg.Datastore + "]"},
		MemoryAllocation:             &types.ResourceAllocationInfo{Reservation: types.NewInt64(res)},
		MemoryReservationLockedToMax: types.NewBool(locked),
	}
	for k, v := range vc.ExtraConfig {
		spec.ExtraConfig = append(spec.ExtraConfig, &types.OptionValue{Key: k, Value: v})
	}
	if len(vc.Passthrough) > 0 {
		l.mu.Lock()
		h := l.hosts[host.Reference()]
		for i, id := range vc.Passthrough {
			d := h.byID[id]
			if d == nil || !d.active {
				l.mu.Unlock()
				return fmt.Errorf("VM %s: %s is not an active passthrough device on %s", vc.Name, id, h.name)
			}
			spec.DeviceChange = append(spec.DeviceChange, &types.VirtualDeviceConfigSpec{
				Operation: types.VirtualDeviceConfigSpecOperationAdd,
				Device: &types.VirtualPCIPassthrough{VirtualDevice: types.VirtualDevice{
					Key: int32(-100 - i),
					Backing: &types.VirtualPCIPassthroughDeviceBackingInfo{
						VirtualDeviceDeviceBackingInfo: types.VirtualDeviceDeviceBackingInfo{DeviceName: d.info.DeviceName},
						Id:                             id,
						DeviceId:                       fmt.Sprintf("%x", uint16(d.info.DeviceId)),
						SystemId:                       h.systemID,
						VendorId:                       d.info.VendorId,
					},
				}},
			})
		}
		l.mu.Unlock()
	}
	for i, profile := range vc.Vgpus {
		spec.DeviceChange = append(spec.DeviceChange, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationAdd,
			Device: &types.VirtualPCIPassthrough{VirtualDevice: types.VirtualDevice{
				Key:     int32(-200 - i),
				Backing: &types.VirtualPCIPassthroughVmiopBackingInfo{Vgpu: profile},
			}},
		})
	}
	task, err := folders.VmFolder.CreateVM(ctx, spec, pool, host)
	if err != nil {
		return err
	}
	created, err := taskResult(ctx, task)
	if err != nil {
		return fmt.Errorf("create VM %s: %v", vc.Name, err)
	}
	vm := object.NewVirtualMachine(c, created.(types.ManagedObjectReference))
	if vc.Snapshot != "" {
		t, err := vm.CreateSnapshot(ctx, vc.Snapshot, "created by gpupass vcsim", false, false)
		if err != nil {
			return err
		}
		if _, err := taskResult(ctx, t); err != nil {
			return fmt.Errorf("snapshot of %s: %v", vc.Name, err)
		}
	}
	switch vc.PowerState {
	case "", string(types.VirtualMachinePowerStatePoweredOff):
	case string(types.VirtualMachinePowerStatePoweredOn):
		t, err := vm.PowerOn(ctx)
		if err != nil {
			return err
		}
		if _, err := taskResult(ctx, t); err != nil {
			return fmt.Errorf("power on %s: %v", vc.Name, err)
		}
	default:
		return fmt.Errorf("VM %s: power_state must be poweredOn or poweredOff", vc.Name)
	}
	return nil
}
