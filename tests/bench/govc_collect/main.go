// The anchor of tests/bench/bench_esxi.py: what `govc object.collect` does for gpupass's inventory, written
// against the same govmomi sources the simulator is built from (Debian packages govmomi's library but not
// the govc command). One login, then per run: CreateContainerView on the datacenter, RetrievePropertiesEx
// (maxObjects 1000) plus ContinueRetrievePropertiesEx for the rest, DestroyView, with the same property
// paths as gpupass (given as -spec, a JSON object of type -> paths). With -keep-view the view is made once
// and each run is the RetrievePropertiesEx calls only: what a gpupass session makes for each inventory
// after its first. Prints one JSON line: the median milliseconds of -n runs, the SOAP calls and the objects
// of one run, and every SOAP call of the process (process_calls: RetrieveServiceContent, Login, the
// datacenter, the runs, and Logout with -logout).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"sort"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// counter counts the SOAP requests that go through it.
type counter struct {
	soap.RoundTripper
	n int
}

func (c *counter) RoundTrip(ctx context.Context, req, res soap.HasFault) error {
	c.n++
	return c.RoundTripper.RoundTrip(ctx, req, res)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func main() {
	endpoint := flag.String("u", "", "https://USER@HOST:PORT/sdk (the password in $ANCHOR_PASSWORD)")
	caFile := flag.String("ca", "", "CA bundle to verify the endpoint with")
	datacenter := flag.String("dc", "", "datacenter inventory path")
	specJSON := flag.String("spec", "{}", "JSON object: managed object type -> property paths")
	runs := flag.Int("n", 3, "runs (the median is printed)")
	keepView := flag.Bool("keep-view", false, "make the view once and read through it in every run, as a "+
		"gpupass session does (each run is then RetrievePropertiesEx and its continuations only)")
	logout := flag.Bool("logout", false, "log out before exiting, as a gpupass command does")
	flag.Parse()

	ctx := context.Background()
	u, err := url.Parse(*endpoint)
	if err != nil {
		fail(err)
	}
	if password, ok := os.LookupEnv("ANCHOR_PASSWORD"); ok { // not on the command line
		u.User = url.UserPassword(u.User.Username(), password)
	}
	sc := soap.NewClient(u, false)
	if err := sc.SetRootCAs(*caFile); err != nil {
		fail(err)
	}
	vc, err := vim25.NewClient(ctx, sc) // RetrieveServiceContent
	if err != nil {
		fail(err)
	}
	counted := &counter{RoundTripper: vc.RoundTripper} // every later request of the process
	vc.RoundTripper = counted
	if err := session.NewManager(vc).Login(ctx, u.User); err != nil {
		fail(err)
	}
	// govc asks for the server's API version after login unless -vim-version is given (govc/flags/client.go,
	// ClientFlag.Client: c.UseServiceVersion()): an HTTP GET of /sdk/vimServiceVersions.xml, no SOAP call.
	// gpupass makes the same GET before its login (pyVim's SmartConnect does too).
	if err := vc.UseServiceVersion(); err != nil {
		fail(err)
	}
	spec := map[string][]string{}
	if err := json.Unmarshal([]byte(*specJSON), &spec); err != nil {
		fail(err)
	}
	root, err := object.NewSearchIndex(vc).FindByInventoryPath(ctx, *datacenter)
	if err != nil || root == nil {
		fail(fmt.Errorf("datacenter %q: %v", *datacenter, err))
	}
	var types_ []string
	for kind := range spec {
		types_ = append(types_, kind)
	}
	sort.Strings(types_)
	var propSet []types.PropertySpec
	for _, kind := range types_ {
		propSet = append(propSet, types.PropertySpec{Type: kind, PathSet: spec[kind]})
	}
	kinds := []string{"HostSystem", "ComputeResource", "VirtualMachine"}

	var times []float64
	calls, objects := 0, 0
	var kept *view.ContainerView
	if *keepView {
		if kept, err = view.NewManager(vc).CreateContainerView(ctx, root.Reference(), kinds, true); err != nil {
			fail(err)
		}
	}
	for i := 0; i < *runs; i++ {
		calls, objects = 0, 0
		began := time.Now()
		v := kept
		if v == nil {
			if v, err = view.NewManager(vc).CreateContainerView(ctx, root.Reference(), kinds, true); err != nil {
				fail(err)
			}
			calls++
		}
		filter := types.PropertyFilterSpec{
			ObjectSet: []types.ObjectSpec{{Obj: v.Reference(), Skip: types.NewBool(true),
				SelectSet: []types.BaseSelectionSpec{&types.TraversalSpec{Type: "ContainerView", Path: "view",
					Skip: types.NewBool(false)}}}},
			PropSet: propSet,
		}
		collector := vc.ServiceContent.PropertyCollector
		res, err := methods.RetrievePropertiesEx(ctx, vc, &types.RetrievePropertiesEx{This: collector,
			SpecSet: []types.PropertyFilterSpec{filter}, Options: types.RetrieveOptions{MaxObjects: 1000}})
		if err != nil {
			fail(err)
		}
		calls++
		for res.Returnval != nil {
			objects += len(res.Returnval.Objects)
			if res.Returnval.Token == "" {
				break
			}
			more, err := methods.ContinueRetrievePropertiesEx(ctx, vc, &types.ContinueRetrievePropertiesEx{
				This: collector, Token: res.Returnval.Token})
			if err != nil {
				fail(err)
			}
			calls++
			res = &types.RetrievePropertiesExResponse{Returnval: &more.Returnval}
		}
		if kept == nil {
			if err := v.Destroy(ctx); err != nil {
				fail(err)
			}
			calls++
		}
		times = append(times, float64(time.Since(began).Microseconds())/1000)
	}
	if kept != nil {
		if err := kept.Destroy(ctx); err != nil {
			fail(err)
		}
	}
	if *logout {
		if err := session.NewManager(vc).Logout(ctx); err != nil {
			fail(err)
		}
	}
	sort.Float64s(times)
	out, _ := json.Marshal(map[string]interface{}{"median_ms": times[len(times)/2], "calls": calls,
		"objects": objects, "process_calls": 1 + counted.n})
	fmt.Println(string(out))
}
