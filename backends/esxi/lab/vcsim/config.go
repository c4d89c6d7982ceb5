package main

// Inventory description read from the -config JSON file.
//
// Schema (all keys optional unless noted; numbers for PCI ids may be JSON
// numbers or strings such as "0x10de"):
//
//	{
//	  "mode": "vcenter" | "esx",            // default "vcenter"
//	  "username": "gpupass", "password": "...", // login accepted by SessionManager.Login
//	  "datacenter": "DC0",                  // vcenter only; esx mode is always "ha-datacenter"
//	  "datastore": "datastore1",            // one local datastore mounted on every host
//	  "clusters": ["gpu-cluster"],          // clusters to create (hosts may also name new ones)
//	  "cluster_drs": {"gpu-cluster": "fullyAutomated"}, // ClusterDrsConfigInfo.defaultVmBehavior per cluster
//	                                        // (manual | partiallyAutomated | fullyAutomated); unset: DRS on, no
//	                                        // behavior set (as the stock simulator makes a cluster)
//	  "hosts": [{
//	    "name": "esx01.lab.local",          // required
//	    "cluster": "gpu-cluster",           // "" = standalone host (vcenter mode)
//	    "memory_mb": 1048576,
//	    "maintenance_mode": false,
//	    "connected": true,                   // false: host starts disconnected
//	    "reboot_seconds": 0,                 // >0: after RebootHost_Task the host is
//	                                         // notResponding this long, then connected with
//	                                         // the new passthruActive state and a new
//	                                         // runtime.bootTime (esx mode: the endpoint does
//	                                         // not answer at all meanwhile, and sessions
//	                                         // opened before the reboot are gone after it)
//	    "reboot_lag_seconds": 0,             // >0: the host still reports connected this long
//	                                         // after the reboot task ended, before it goes down
//	    "rebind_without_reboot": false,      // HostCapability.deviceRebindWithoutRebootSupported:
//	                                         // passthrough changes can apply at once (applyNow)
//	    "graphics": {"default_type": "sharedDirect", // HostGraphicsConfig.hostDefaultGraphicsType
//	                 "assignment_policy": "performance"}, // shared passthrough assignment policy (vgpu.go)
//	    "gpus": [{
//	      "address": "0000:3b:00.0",        // required; also the passthrough id
//	      "vendor_id": "0x10de", "device_id": "0x2330",
//	      "sub_vendor_id": "0x10de", "sub_device_id": "0x16c1",
//	      "vendor_name": "NVIDIA Corporation",
//	      "device_name": "GH100 [H100 SXM5 80GB]",
//	      "class_id": "0x0302",             // 16-bit class<<8|subclass, as ESXi reports it
//	      "passthru_capable": true, "passthru_enabled": false, "passthru_active": false,
//	      "dependent_device": "0000:3b:00.0", // default: its own id
//	      "bars": [{"size": 16777216, "bits": 32}, {"size": "0x2000000000", "bits": 64},
//	               {"size": 33554432, "bits": 64}], // hidden from the API, drive the MMIO check:
//	                                        // size in bytes, bits the BAR's width (lspci's
//	                                        // "32-bit"/"64-bit"); a bare size (older configs)
//	                                        // is a BAR of unknown width, counted as 64-bit
//	      "vmkernel_in_use": false,         // the VMkernel holds it: applyNow leaves it pending until a reboot
//	      "hardware_label": "",             // the device's label (vSphere 7.0.2 hardwareLabel), which a
//	                                        // dynamic backing's customLabel must equal; shown as
//	                                        // customLabel in QueryConfigTarget().dynamicPassthrough
//	      "graphics_type": "",              // HostGraphicsConfig.deviceType for this GPU ("" = the host default)
//	      "memory_mb": 24576,               // HostGraphicsInfo.memorySizeInKB / 1024
//	      "vgpu_types": [{"name": "grid_p40-4c", "framebuffer_mb": 4096, "max_instances": 6,
//	                      "class": "compute"}], // vGPU profiles the vGPU manager offers on this GPU (vgpu.go)
//	      "functions": [ {same keys as a gpu, without "functions"} ] // companion functions (HDMI audio ...)
//	    }]
//	  }],
//	  "vms": [{
//	    "name": "ml-train",                 // required
//	    "host": "esx01.lab.local",          // required
//	    "power_state": "poweredOff" | "poweredOn",
//	    "firmware": "efi" | "bios",
//	    "guest_id": "ubuntu64Guest",
//	    "num_cpus": 8,
//	    "memory_mb": 65536,
//	    "memory_reservation_mb": 0,
//	    "memory_reservation_locked_to_max": false,
//	    "extra_config": {"key": "value"},
//	    "snapshot": "before-upgrade",       // non-empty: the VM is created with this snapshot
//	    "passthrough": ["0000:3b:00.0"],    // host PCI ids attached as VirtualPCIPassthrough
//	    "vgpus": ["grid_p40-2b"]            // vGPU profiles attached as VirtualPCIPassthrough (vmiop backing)
//	  }],
//	  "scale": {"hosts": 50, "vms": 500, "gpus_per_host": 1} // extra generated inventory
//	}
import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// hexInt accepts 4318, "4318", "0x10de" or "10de" is NOT accepted (ambiguous).
type hexInt int64

func (h *hexInt) UnmarshalJSON(b []byte) error {
	s := strings.TrimSpace(string(b))
	if strings.HasPrefix(s, "\"") {
		var str string
		if err := json.Unmarshal(b, &str); err != nil {
			return err
		}
		v, err := strconv.ParseInt(strings.TrimSpace(str), 0, 64)
		if err != nil {
			return fmt.Errorf("bad number %q: %v", str, err)
		}
		*h = hexInt(v)
		return nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return err
	}
	*h = hexInt(v)
	return nil
}

// barConfig is one BAR: {"size": bytes, "bits": 32|64}, or a bare size (the
// form of older configs).  A bare size does not say the BAR's width; it
// counts against the 64-bit window, as every BAR did before widths were known
// (the larger need, never an unearned power-on).
type barConfig struct {
	Size int64
	Is64 bool
}

func (b *barConfig) UnmarshalJSON(data []byte) error {
	if !strings.HasPrefix(strings.TrimSpace(string(data)), "{") {
		var size hexInt
		if err := size.UnmarshalJSON(data); err != nil {
			return fmt.Errorf("bar: %v", err)
		}
		*b = barConfig{Size: int64(size), Is64: true}
		return b.check()
	}
	var obj struct {
		Size hexInt `json:"size"`
		Bits int    `json:"bits"`
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&obj); err != nil {
		return fmt.Errorf("bar %s: %v", data, err)
	}
	if obj.Bits != 32 && obj.Bits != 64 {
		return fmt.Errorf("bar %s: bits must be 32 or 64", data)
	}
	*b = barConfig{Size: int64(obj.Size), Is64: obj.Bits == 64}
	return b.check()
}

func (b barConfig) check() error {
	if b.Size <= 0 {
		return fmt.Errorf("bar size %d is not positive", b.Size)
	}
	// A 32-bit memory BAR lies below 4 GiB and is aligned to its power-of-two
	// size, so it is at most 2 GiB (PCI Local Bus Specification, Base Address
	// Registers).
	if !b.Is64 && b.Size > 2<<30 {
		return fmt.Errorf("bar size %d is too large for a 32-bit BAR (at most 2 GiB)", b.Size)
	}
	return nil
}

// int16 returns the value the way the vSphere API carries PCI ids: a signed
// 16-bit integer (0x8086 -> -32634).
func (h hexInt) int16() int16 { return int16(uint16(h)) }

type pciFunc struct {
	Address         string `json:"address"`
	VendorID        hexInt `json:"vendor_id"`
	DeviceID        hexInt `json:"device_id"`
	SubVendorID     hexInt `json:"sub_vendor_id"`
	SubDeviceID     hexInt `json:"sub_device_id"`
	VendorName      string `json:"vendor_name"`
	DeviceName      string `json:"device_name"`
	ClassID         hexInt `json:"class_id"`
	PassthruCapable *bool  `json:"passthru_capable"`
	PassthruEnabled bool   `json:"passthru_enabled"`
	PassthruActive  bool   `json:"passthru_active"`
	ParentBridge    string `json:"parent_bridge"`
	DependentDevice string `json:"dependent_device"` // default: the device's own id
	// BARs: size and width.  Not part of the vSphere API (never sent to
	// clients); used only by the power-on MMIO check (see checkMMIO).
	Bars []barConfig `json:"bars"`
	// HardwareLabel: HostPciPassthruInfo.hardwareLabel (vSphere API 7.0.2), the label a
	// Dynamic DirectPath customLabel is matched against (see checkPowerOn).
	HardwareLabel string `json:"hardware_label"`
	// VMkernelInUse: the VMkernel still holds the device, so an applyNow cannot
	// rebind it and the change waits for a reboot (see appliesNow).
	VMkernelInUse bool `json:"vmkernel_in_use"`
	// vGPU (vgpu.go): the device's graphics type, its memory, the profiles it offers.
	GraphicsType string     `json:"graphics_type"`
	MemoryMB     int64      `json:"memory_mb"`
	VgpuTypes    []vgpuType `json:"vgpu_types"`
}

type vgpuType struct {
	Name          string `json:"name"`
	FramebufferMB int64  `json:"framebuffer_mb"`
	MaxInstances  int    `json:"max_instances"`
	Class         string `json:"class"` // VirtualMachineVgpuProfileInfo.profileClass: compute | quadro | "" (not listed)
}

type graphicsSettings struct {
	DefaultType      string `json:"default_type"`
	AssignmentPolicy string `json:"assignment_policy"`
}

type gpuConfig struct {
	pciFunc
	Functions []pciFunc `json:"functions"`
}

type hostConfig struct {
	Name            string            `json:"name"`
	Cluster         string            `json:"cluster"`
	MemoryMB        int64             `json:"memory_mb"`
	MaintenanceMode bool              `json:"maintenance_mode"`
	Connected       *bool             `json:"connected"`
	RebootSeconds   float64           `json:"reboot_seconds"`
	RebootLag       float64           `json:"reboot_lag_seconds"`
	Rebind          bool              `json:"rebind_without_reboot"`
	Graphics        *graphicsSettings `json:"graphics"`
	GPUs            []gpuConfig       `json:"gpus"`
}

type vmConfig struct {
	Name                         string            `json:"name"`
	Host                         string            `json:"host"`
	PowerState                   string            `json:"power_state"`
	Firmware                     string            `json:"firmware"`
	GuestID                      string            `json:"guest_id"`
	NumCPUs                      int32             `json:"num_cpus"`
	MemoryMB                     int64             `json:"memory_mb"`
	MemoryReservationMB          int64             `json:"memory_reservation_mb"`
	MemoryReservationLockedToMax bool              `json:"memory_reservation_locked_to_max"`
	ExtraConfig                  map[string]string `json:"extra_config"`
	Snapshot                     string            `json:"snapshot"`
	Passthrough                  []string          `json:"passthrough"`
	Vgpus                        []string          `json:"vgpus"`
}

type scaleConfig struct {
	Hosts       int `json:"hosts"`
	VMs         int `json:"vms"`
	GPUsPerHost int `json:"gpus_per_host"`
}

type labConfig struct {
	Mode       string            `json:"mode"`
	Username   string            `json:"username"`
	Password   string            `json:"password"`
	Datacenter string            `json:"datacenter"`
	Datastore  string            `json:"datastore"`
	Clusters   []string          `json:"clusters"`
	ClusterDrs map[string]string `json:"cluster_drs"`
	Hosts      []hostConfig      `json:"hosts"`
	VMs        []vmConfig        `json:"vms"`
	Scale      scaleConfig       `json:"scale"`
}

func loadConfig(path string) (*labConfig, error) {
	cfg := &labConfig{}
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		dec := json.NewDecoder(strings.NewReader(string(data)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(cfg); err != nil {
			return nil, fmt.Errorf("%s: %v", path, err)
		}
	}
	if cfg.Mode == "" {
		cfg.Mode = "vcenter"
	}
	if cfg.Mode != "vcenter" && cfg.Mode != "esx" {
		return nil, fmt.Errorf("mode must be vcenter or esx, not %q", cfg.Mode)
	}
	if cfg.Datacenter == "" {
		cfg.Datacenter = "DC0"
	}
	if cfg.Datastore == "" {
		cfg.Datastore = "datastore1"
	}
	return cfg, nil
}

// parsePCIAddress splits "0000:3b:00.0" into bus, slot and function.
func parsePCIAddress(addr string) (bus, slot, fn uint8, err error) {
	var dom, b, s, f uint64
	parts := strings.Split(addr, ":")
	if len(parts) != 3 {
		return 0, 0, 0, fmt.Errorf("bad PCI address %q (want DDDD:BB:SS.F)", addr)
	}
	sf := strings.Split(parts[2], ".")
	if len(sf) != 2 {
		return 0, 0, 0, fmt.Errorf("bad PCI address %q (want DDDD:BB:SS.F)", addr)
	}
	if dom, err = strconv.ParseUint(parts[0], 16, 16); err != nil {
		return
	}
	_ = dom
	if b, err = strconv.ParseUint(parts[1], 16, 8); err != nil {
		return
	}
	if s, err = strconv.ParseUint(sf[0], 16, 5); err != nil {
		return
	}
	if f, err = strconv.ParseUint(sf[1], 16, 3); err != nil {
		return
	}
	return uint8(b), uint8(s), uint8(f), nil
}
