// Command gpupass-vcsim: a vSphere API simulator (govmomi's simulator library,
// Debian golang-github-vmware-govmomi-dev 0.24) with GPUs and a working PCI
// passthrough system, used by gpupass' ESXi backend tests and benchmarks.
//
// Build (offline):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o gpupass-vcsim ./backends/esxi/lab/vcsim
//
// Flags:
//
//	-l 127.0.0.1:0            listen address (port 0: pick a free port)
//	-api-version 7.0.3.0      About.apiVersion (four parts, so pyvmomi negotiates 7.0.3)
//	-tlscert FILE -tlskey FILE   serve HTTPS with this certificate (PEM); without
//	                          them govmomi's built-in localhost test certificate is used
//	-config FILE              inventory JSON (schema in config.go)
//	-scale-hosts N -scale-vms M -scale-gpus-per-host K
//	                          extra generated inventory (cluster "scale-cluster",
//	                          hosts scale-esx-NNN.lab.local with K T4s each, powered-off
//	                          VMs scale-vm-NNNN spread round-robin)
//	-username U -password P   login (override the config; default gpupass / $GPUPASS_VCSIM_PASSWORD)
//	-exit-on-stdin-eof        also stop when stdin closes (the launching process died)
//
// On startup it prints exactly one line "GPUPASS_VCSIM_URL=https://HOST:PORT/sdk"
// on stdout (logs go to stderr) and serves until SIGTERM/SIGINT.  Login:
// SessionManager.Login with the configured username/password only.
//
// What it adds to the stock simulator: GPUs in host.hardware.pciDevice and
// host.config.pciPassthruInfo (ids as signed 16-bit, like ESXi), a working
// HostPciPassthruSystem per host, RebootHost_Task (enabled -> active), PCI
// passthrough in EnvironmentBrowser.QueryConfigTarget (pciPassthrough and
// dynamicPassthrough) and ESXi's passthrough rules on VM tasks (list in
// passthru.go).  The inventory schema is in config.go; the /gpupass/...
// test-control endpoints (make a host vanish) are in http.go.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net/url"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"
	"github.com/vmware/govmomi/simulator/vpx"
)

func main() {
	listen := flag.String("l", "127.0.0.1:0", "listen address")
	apiFlag := flag.String("api-version", "7.0.3.0", "API version reported in About.apiVersion")
	tlsCert := flag.String("tlscert", "", "PEM certificate file for HTTPS")
	tlsKey := flag.String("tlskey", "", "PEM private key file for HTTPS")
	configFile := flag.String("config", "", "inventory JSON file")
	scaleHosts := flag.Int("scale-hosts", 0, "extra generated hosts")
	scaleVMs := flag.Int("scale-vms", 0, "extra generated VMs")
	scaleGPUs := flag.Int("scale-gpus-per-host", 0, "GPUs per generated host (default 1)")
	username := flag.String("username", "", "login user name (default: config, else gpupass)")
	password := flag.String("password", "", "login password (default: config, else $GPUPASS_VCSIM_PASSWORD)")
	cpuProfile := flag.String("cpuprofile", "", "write a Go CPU profile of startup + serving to FILE")
	stdinEOF := flag.Bool("exit-on-stdin-eof", false, "exit when stdin reaches EOF (the parent died)")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("gpupass-vcsim: ")

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}

	cfg, err := loadConfig(*configFile)
	if err != nil {
		log.Fatal(err)
	}
	if *scaleHosts > 0 {
		cfg.Scale.Hosts = *scaleHosts
	}
	if *scaleVMs > 0 {
		cfg.Scale.VMs = *scaleVMs
	}
	if *scaleGPUs > 0 {
		cfg.Scale.GPUsPerHost = *scaleGPUs
	}
	if *username != "" {
		cfg.Username = *username
	}
	if *password != "" {
		cfg.Password = *password
	}
	if cfg.Username == "" {
		cfg.Username = "gpupass"
	}
	if cfg.Password == "" {
		cfg.Password = os.Getenv("GPUPASS_VCSIM_PASSWORD")
	}
	if cfg.Password == "" {
		log.Fatal("no password: set it in the config, -password or GPUPASS_VCSIM_PASSWORD")
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		log.Fatal("-tlscert and -tlskey go together")
	}

	// The About data is copied from these templates when the service instance is created.
	for _, about := range []*struct{ a, v *string }{
		{&esx.ServiceContent.About.ApiVersion, &esx.ServiceContent.About.Version},
		{&vpx.ServiceContent.About.ApiVersion, &vpx.ServiceContent.About.Version},
	} {
		*about.a = *apiFlag
		*about.v = versionOf(*apiFlag)
	}
	apiVersion = *apiFlag
	esx.ServiceContent.About.FullName = "VMware ESXi " + versionOf(*apiFlag) + " build-0 (gpupass vcsim)"
	vpx.ServiceContent.About.FullName = "VMware vCenter Server " + versionOf(*apiFlag) + " build-0 (gpupass vcsim)"

	var model *simulator.Model
	if cfg.Mode == "esx" {
		model = simulator.ESX()
	} else {
		model = simulator.VPX()
		model.Datacenter = 0
	}
	model.Autostart = false
	model.Datastore = 0
	model.Machine = 0
	model.Portgroup = 0
	model.Host = 0
	model.Cluster = 0
	model.ClusterHost = 0
	if err := model.Create(); err != nil {
		log.Fatalf("create model: %v", err)
	}
	defer model.Remove()

	l := newLab()
	simulator.Map.AddHandler(l)
	if err := buildInventory(context.Background(), model, cfg, l); err != nil {
		model.Remove()
		cleanupTempDirs()
		log.Fatalf("build inventory: %v", err)
	}

	svc := model.Service
	svc.Listen = &url.URL{Host: *listen, User: url.UserPassword(cfg.Username, cfg.Password)}
	if *tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			model.Remove()
			log.Fatalf("load TLS key pair: %v", err)
		}
		svc.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	} else {
		svc.TLS = new(tls.Config)
	}
	svc.HandleFunc("/gpupass/", l.controlHandler(cfg.Username, cfg.Password))
	srv := svc.NewServer()
	// Put our interceptor in front of the simulator's mux (before anyone
	// knows the URL, so no request has been served yet).
	srv.Config.Handler = &sdkInterceptor{lab: l, next: srv.Config.Handler, user: cfg.Username, pass: cfg.Password}

	u := *srv.URL
	u.User = nil
	fmt.Printf("GPUPASS_VCSIM_URL=%s\n", u.String())
	_ = os.Stdout.Sync()

	done := make(chan struct{}, 2)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sig; done <- struct{}{} }()
	if *stdinEOF {
		go func() { _, _ = io.Copy(io.Discard, os.Stdin); done <- struct{}{} }()
	}
	<-done
	// Close waits for in-flight requests (a WaitForUpdates long poll can
	// take long): give it a moment, then exit anyway.
	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(2 * time.Second):
	}
	model.Remove()
	cleanupTempDirs()
}

// versionOf turns "7.0.3.0" into "7.0.3".
func versionOf(api string) string {
	dots := 0
	for i, c := range api {
		if c == '.' {
			dots++
			if dots == 3 {
				return api[:i]
			}
		}
	}
	return api
}
