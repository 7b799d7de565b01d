// fcsdk_start drives ember with the real firecracker-go-sdk, configured the way
// firecracker-containerd's runtime configures it (runtime/service.go, runtime/noop_jailer.go,
// runtime/drive_handler.go): relative socket paths in the VM's directory, log and metrics
// FIFOs made by the caller, a read-only root drive and stub drives swapped later with
// PATCH /drives, a vsock device named agent_api, the T2 template on Intel hosts, a static
// tap allowed to reach MMDS V2 (when a network namespace is given), the VMM started through
// VMCommandBuilder and WithProcessRunner with `--api-sock firecracker.sock --id ID`. It then
// does what the runtime does over a VM's life: metadata, drive swaps, pause and resume, a
// metrics flush, Shutdown (SendCtrlAltDel) and Wait; and it dials the agent through the
// SDK's vsock package (CONNECT 10789, OK) as the runtime does after Start. The guest is ember's
// `vsock-agent` test guest: it answers "ping N" with "pong N" on vsock port 10789 and idles
// until Ctrl+Alt+Del, then powers off.
//
// It prints TAP on stdout; the SDK's own log goes to sdk.log in the work directory.
package main

import (
	"bufio"
	"context"
	"encoding/base32"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/fifo"
	firecracker "github.com/firecracker-microvm/firecracker-go-sdk"
	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
	"github.com/firecracker-microvm/firecracker-go-sdk/vsock"
	"github.com/sirupsen/logrus"
)

// firecracker-containerd's names inside a VM's directory (internal/common.go).
const (
	sockName        = "firecracker.sock"
	vsockName       = "firecracker.vsock"
	logFifoName     = "fc-logs.fifo"
	metricsFifoName = "fc-metrics.fifo"
	// Its default kernel command line (config/config.go).
	containerdKernelArgs = "console=ttyS0 noapic reboot=k panic=1 pci=off nomodules rw"
)

// The bytes firecracker-containerd writes at the start of a stub drive (internal/common.go):
// magic, the drive id's length, the drive id; the file is then rounded up to 512 bytes.
var magicStubBytes = []byte{214, 244, 216, 245, 215, 177, 177, 177}

// fifoLines reads whole lines from a FIFO the VMM writes, as a user of the runtime's
// GetVMInfo paths would.
type fifoLines struct {
	mu    sync.Mutex
	lines []string
}

func readFifo(ctx context.Context, path string) (*fifoLines, error) {
	f, err := fifo.OpenFifo(ctx, path, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	out := &fifoLines{}
	go func() {
		defer f.Close()
		s := bufio.NewScanner(f)
		s.Buffer(make([]byte, 64*1024), 4*1024*1024)
		for s.Scan() {
			out.mu.Lock()
			out.lines = append(out.lines, s.Text())
			out.mu.Unlock()
		}
	}()
	return out, nil
}

func (l *fifoLines) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// newStubDrive makes a stub drive file as firecracker-containerd's newStubDrive does and
// returns its drive id (the base32 of the file name, without padding).
func newStubDrive(path string) (string, error) {
	id := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString([]byte(filepath.Base(path)))
	content := append(append(append([]byte{}, magicStubBytes...), byte(len(id))), id...)
	if err := os.WriteFile(path, content, 0600); err != nil {
		return "", err
	}
	size := (int64(len(content)) + 511) / 512 * 512
	return id, os.Truncate(path, size)
}

func isIntel() bool {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return false
	}
	m := regexp.MustCompile(`(?m)^vendor_id\s*:\s*(.+)$`).FindSubmatch(data)
	return m != nil && string(m[1]) == "GenuineIntel"
}

// pingAgent dials the guest's agent as the runtime does (the SDK's vsock.DialContext over the
// vsock's unix socket), sends "ping N" for each n and expects "pong N" back.
func pingAgent(ctx context.Context, logger *logrus.Entry, ns ...int) error {
	dialCtx, cancel := context.WithTimeout(ctx, 40*time.Second)
	defer cancel()
	conn, err := vsock.DialContext(dialCtx, vsockName, 10789, vsock.WithLogger(logger),
		vsock.WithRetryTimeout(30*time.Second), vsock.WithRetryInterval(100*time.Millisecond))
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	for _, n := range ns {
		if _, err := fmt.Fprintf(conn, "ping %d\n", n); err != nil {
			return err
		}
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("after ping %d: %v (read %q)", n, err, line)
		}
		if want := fmt.Sprintf("pong %d\n", n); line != want {
			return fmt.Errorf("after ping %d: %q, not %q", n, line, want)
		}
	}
	return nil
}

func instanceState(ctx context.Context, m *firecracker.Machine) string {
	info, err := m.DescribeInstanceInfo(ctx)
	if err != nil || info.State == nil {
		return fmt.Sprintf("(error: %v)", err)
	}
	return *info.State
}

func main() {
	vmmBin := flag.String("vmm", "", "the VMM binary (ember, under the name firecracker)")
	kernel := flag.String("kernel", "", "the vsock-agent test guest (build/guest/vsock-agent.elf)")
	workDir := flag.String("dir", "", "an empty directory for the VM (the runtime's VM directory)")
	netNS := flag.String("netns", "", "a network namespace path: adds a tap allowed to reach MMDS")
	flag.Parse()
	if *vmmBin == "" || *kernel == "" || *workDir == "" {
		fmt.Fprintln(os.Stderr, "usage: fcsdk_start -vmm BIN -kernel ELF -dir DIR [-netns PATH]")
		os.Exit(2)
	}
	t := &tap{}

	// The runtime works with paths relative to its VM directory, and so does the VMM it starts.
	if err := os.Chdir(*workDir); err != nil {
		t.bail(err.Error())
	}
	sdkLog, err := os.Create("sdk.log")
	if err != nil {
		t.bail(err.Error())
	}
	defer sdkLog.Close()
	logger := logrus.New()
	logger.SetOutput(sdkLog)
	logger.SetLevel(logrus.DebugLevel)
	entry := logrus.NewEntry(logger)

	for _, name := range []string{logFifoName, metricsFifoName} {
		if err := syscall.Mkfifo(name, 0700); err != nil {
			t.bail(fmt.Sprintf("mkfifo %s: %v", name, err))
		}
	}
	rootfs, _ := filepath.Abs("rootfs.img")
	image, _ := filepath.Abs("container.img")
	for path, size := range map[string]int64{rootfs: 1 << 20, image: 2 << 20} {
		if err := os.WriteFile(path, nil, 0600); err != nil {
			t.bail(err.Error())
		}
		if err := os.Truncate(path, size); err != nil {
			t.bail(err.Error())
		}
	}
	ctrStub, _ := filepath.Abs("ctrstub0")
	ctrStubID, err := newStubDrive(ctrStub)
	if err != nil {
		t.bail(err.Error())
	}
	mountStub, _ := filepath.Abs("drivemntstub0")
	mountStubID, err := newStubDrive(mountStub)
	if err != nil {
		t.bail(err.Error())
	}

	vmID := "fcsdk-ember-" + strconv.Itoa(os.Getpid())
	template := models.CPUTemplate("")
	if isIntel() {
		template = models.CPUTemplateT2 // firecracker-containerd's default on Intel
	}
	cfg := firecracker.Config{
		SocketPath:   sockName,
		VsockDevices: []firecracker.VsockDevice{{Path: vsockName, ID: "agent_api"}},
		MachineCfg: models.MachineConfiguration{
			CPUTemplate: template,
			VcpuCount:   firecracker.Int64(1),
			MemSizeMib:  firecracker.Int64(128),
			Smt:         firecracker.Bool(false),
		},
		LogLevel:        "Debug",
		VMID:            vmID,
		LogPath:         logFifoName,
		MetricsPath:     metricsFifoName,
		KernelArgs:      containerdKernelArgs,
		KernelImagePath: *kernel,
		MmdsAddress:     net.ParseIP("169.254.169.254"),
		MmdsVersion:     firecracker.MMDSv2,
	}
	// buildRootDrive: a read-only root drive, then the stubs (CreateContainerStubs,
	// CreateDriveMountStubs).
	cfg.Drives = firecracker.DrivesBuilder{}.WithRootDrive(rootfs, firecracker.WithReadOnly(true)).Build()
	for _, stub := range []struct{ id, path string }{{ctrStubID, ctrStub}, {mountStubID, mountStub}} {
		cfg.Drives = append(cfg.Drives, models.Drive{
			DriveID:      firecracker.String(stub.id),
			PathOnHost:   firecracker.String(stub.path),
			IsReadOnly:   firecracker.Bool(false),
			IsRootDevice: firecracker.Bool(false),
		})
	}
	withNet := *netNS != ""
	if withNet {
		_, ipNet, _ := net.ParseCIDR("172.16.0.2/24")
		ipNet.IP = net.ParseIP("172.16.0.2")
		cfg.NetNS = *netNS
		cfg.NetworkInterfaces = firecracker.NetworkInterfaces{{
			StaticConfiguration: &firecracker.StaticNetworkConfiguration{
				MacAddress:  "AA:FC:00:00:00:01",
				HostDevName: "fcsdk0",
				IPConfiguration: &firecracker.IPConfiguration{
					IPAddr:  *ipNet,
					Gateway: net.ParseIP("172.16.0.1"),
				},
			},
			AllowMMDS: true,
		}}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	serial, stderr := &lockedBuffer{}, &lockedBuffer{}
	// As the runtime's noop jailer builds the VMM's command line.
	cmd := firecracker.VMCommandBuilder{}.
		WithBin(*vmmBin).
		WithSocketPath(sockName).
		WithArgs([]string{"--id", vmID}).
		WithStdout(serial).
		WithStderr(stderr).
		Build(ctx)
	pidSeen := 0
	pidHandler := firecracker.Handler{
		Name: "firecracker-containerd-jail-pid-handler",
		Fn: func(_ context.Context, m *firecracker.Machine) error {
			pid, err := m.PID()
			if err != nil {
				return err
			}
			pidSeen = pid
			return nil
		},
	}
	m, err := firecracker.NewMachine(ctx, cfg,
		firecracker.WithLogger(entry),
		firecracker.WithProcessRunner(cmd),
		func(m *firecracker.Machine) { m.Handlers.FcInit = m.Handlers.FcInit.Append(pidHandler) })
	if !t.check(err == nil, "NewMachine takes firecracker-containerd's configuration", fmt.Sprint(err)) {
		t.bail("no machine")
	}
	vmmDetail := func() string {
		return fmt.Sprintf("VMM stderr:\n%s\nserial:\n%s", stderr.String(), serial.String())
	}

	// The SDK stops the VMM when Start's context ends: the runtime passes its shim's context.
	err = m.Start(ctx)
	if !t.check(err == nil, "Machine.Start: the whole handler chain and InstanceStart",
		fmt.Sprintf("%v\n%s", err, vmmDetail())) {
		m.StopVMM()
		t.bail("the machine did not start")
	}
	t.check(pidSeen > 0 && cmd.Process != nil && pidSeen == cmd.Process.Pid,
		"the FcInit handler appended after the chain sees the VMM's pid",
		fmt.Sprintf("handler saw %d", pidSeen))

	// The runtime reads these FIFOs' paths from GetVMInfo; a reader comes after the VMM.
	logLines, err := readFifo(ctx, logFifoName)
	if err != nil {
		t.bail(err.Error())
	}
	metricLines, err := readFifo(ctx, metricsFifoName)
	if err != nil {
		t.bail(err.Error())
	}

	version, err := m.GetFirecrackerVersion(ctx)
	semver := regexp.MustCompile(`^(\d+)\.(\d+)\.(\d+)([-+].*)?$`).FindStringSubmatch(version)
	t.check(err == nil && semver != nil && semver[1] != "0",
		"GetFirecrackerVersion answers a Firecracker 1.x semantic version",
		fmt.Sprintf("%q %v", version, err))

	info, err := m.DescribeInstanceInfo(ctx)
	t.check(err == nil && info.State != nil && *info.State == models.InstanceInfoStateRunning &&
		info.ID != nil && *info.ID == vmID,
		"DescribeInstanceInfo: Running, with the --id given", fmt.Sprintf("%+v %v", info, err))

	api := firecracker.NewClient(sockName, entry, false)
	mc, err := api.GetMachineConfiguration()
	ok := err == nil && mc.Payload != nil && firecracker.Int64Value(mc.Payload.VcpuCount) == 1 &&
		firecracker.Int64Value(mc.Payload.MemSizeMib) == 128 && mc.Payload.CPUTemplate == template
	t.check(ok, fmt.Sprintf("GetMachineConfiguration shows 1 vCPU, 128 MiB, template %q", template),
		fmt.Sprintf("%+v %v", mc, err))

	// SetVMMetadata and UpdateVMMetadata pass the caller's JSON through unchanged. Without an
	// interface allowed to reach MMDS the SDK configures none, and a VMM that had no MMDS
	// before start has no data store to put into (Firecracker's answer too).
	if withNet {
		err = m.SetMetadata(ctx, json.RawMessage(`{"latest":{"meta-data":{"instance-id":"i-ember","tags":["a"]}}}`))
		t.check(err == nil, "SetMetadata (PUT /mmds)", fmt.Sprint(err))
		err = m.UpdateMetadata(ctx, json.RawMessage(`{"latest":{"meta-data":{"tags":null,"zone":"z1"}}}`))
		t.check(err == nil, "UpdateMetadata (PATCH /mmds)", fmt.Sprint(err))
		var got interface{}
		err = m.GetMetadata(ctx, &got)
		var want interface{}
		_ = json.Unmarshal([]byte(`{"latest":{"meta-data":{"instance-id":"i-ember","zone":"z1"}}}`), &want)
		t.check(err == nil && reflect.DeepEqual(got, want), "GetMetadata gives the merge-patched document",
			fmt.Sprintf("got %v, %v", got, err))
	} else {
		err = m.SetMetadata(ctx, json.RawMessage(`{"latest":{}}`))
		t.check(err != nil && strings.Contains(err.Error(), "The MMDS data store is not initialized"),
			"SetMetadata without MMDS configured before start: Firecracker's refusal", fmt.Sprint(err))
		t.skip("UpdateMetadata (PATCH /mmds)", "no network namespace given (-netns), so no MMDS")
		t.skip("GetMetadata gives the merge-patched document", "no network namespace given (-netns), so no MMDS")
	}

	// The stub drive swap: PatchAndMount patches in the container's image by absolute path,
	// Release patches the stub back by its base name, relative to the VMM's directory.
	drivePath := func(id string) string {
		resp, err := api.GetExportVMConfig()
		if err != nil {
			return fmt.Sprintf("(error: %v)", err)
		}
		for _, d := range resp.Payload.Drives {
			if firecracker.StringValue(d.DriveID) == id {
				return firecracker.StringValue(d.PathOnHost)
			}
		}
		return "(no such drive)"
	}
	err = m.UpdateGuestDrive(ctx, ctrStubID, image)
	t.check(err == nil && drivePath(ctrStubID) == image,
		"UpdateGuestDrive swaps a stub drive for the container image", fmt.Sprintf("%v; now %s", err, drivePath(ctrStubID)))
	err = m.UpdateGuestDrive(ctx, ctrStubID, filepath.Base(ctrStub))
	t.check(err == nil && filepath.Base(drivePath(ctrStubID)) == filepath.Base(ctrStub),
		"UpdateGuestDrive back to the stub by its relative name (Release)",
		fmt.Sprintf("%v; now %s", err, drivePath(ctrStubID)))
	// The image is free again once its drive let go of it: another stub takes it.
	err = m.UpdateGuestDrive(ctx, mountStubID, image)
	t.check(err == nil && drivePath(mountStubID) == image, "UpdateGuestDrive on the drive-mount stub, with the released image",
		fmt.Sprintf("%v; now %s", err, drivePath(mountStubID)))

	vmConfig := &models.FullVMConfiguration{}
	export, err := api.GetExportVMConfig()
	if err == nil {
		vmConfig = export.Payload
	}
	vs := vmConfig.Vsock
	ok = err == nil && vs != nil && firecracker.StringValue(vs.UdsPath) == vsockName && vs.VsockID == "agent_api" &&
		firecracker.Int64Value(vs.GuestCid) == 0 && len(vmConfig.Drives) == 3
	t.check(ok, "GET /vm/config: three drives and the agent_api vsock with guest CID 0 (the SDK's default)",
		fmt.Sprintf("%+v %v", vmConfig, err))
	st, err := os.Stat(vsockName)
	t.check(err == nil && st.Mode()&os.ModeSocket != 0, "the vsock's unix socket listens in the VM's directory",
		fmt.Sprint(err))

	// Right after Start the runtime dials its agent through the vsock socket (CONNECT 10789,
	// then OK), retrying until the agent listens; the guest's CID (0 here) plays no part.
	err = pingAgent(ctx, entry, 1, 2)
	t.check(err == nil, "the SDK's vsock dial reaches the guest's agent on port 10789; two pings answered",
		fmt.Sprintf("%v\n%s", err, vmmDetail()))

	if withNet {
		mmds := vmConfig.MmdsConfig
		ok = len(vmConfig.NetworkInterfaces) == 1 &&
			firecracker.StringValue(vmConfig.NetworkInterfaces[0].HostDevName) == "fcsdk0" && mmds != nil &&
			firecracker.StringValue(mmds.Version) == "V2" &&
			reflect.DeepEqual(mmds.NetworkInterfaces, []string{"1"}) &&
			firecracker.StringValue(mmds.IPV4Address) == "169.254.169.254"
		t.check(ok, "the tap and MMDS V2 on it, as the handler chain set them", fmt.Sprintf("%+v", vmConfig))
		bootArgs := ""
		if vmConfig.BootSource != nil {
			bootArgs = vmConfig.BootSource.BootArgs
		}
		t.check(strings.Contains(bootArgs, "ip=172.16.0.2::172.16.0.1:255.255.255.0:"),
			"the static IP went into the kernel command line", bootArgs)
	} else {
		t.skip("the tap and MMDS V2 on it", "no network namespace given (-netns)")
		t.skip("the static IP went into the kernel command line", "no network namespace given (-netns)")
	}

	err = m.PauseVM(ctx)
	t.check(err == nil && instanceState(ctx, m) == models.InstanceInfoStatePaused, "PauseVM",
		fmt.Sprintf("%v; state %s", err, instanceState(ctx, m)))
	err = m.ResumeVM(ctx)
	t.check(err == nil && instanceState(ctx, m) == models.InstanceInfoStateRunning, "ResumeVM",
		fmt.Sprintf("%v; state %s", err, instanceState(ctx, m)))
	err = pingAgent(ctx, entry, 3)
	t.check(err == nil, "after pause and resume the agent answers a new vsock connection",
		fmt.Sprintf("%v\n%s", err, vmmDetail()))

	flush := models.InstanceActionInfoActionTypeFlushMetrics
	_, err = api.CreateSyncAction(ctx, &models.InstanceActionInfo{ActionType: &flush})
	var metrics map[string]interface{}
	waitFor(func() bool { return len(metricLines.snapshot()) > 0 }, 5*time.Second)
	lines := metricLines.snapshot()
	jsonErr := fmt.Errorf("no line")
	if len(lines) > 0 {
		jsonErr = json.Unmarshal([]byte(lines[len(lines)-1]), &metrics)
	}
	_, hasAPI := metrics["api_server"]
	t.check(err == nil && jsonErr == nil && hasAPI,
		"FlushMetrics: a JSON line with api_server arrives on the metrics FIFO",
		fmt.Sprintf("%v; %v; %d lines", err, jsonErr, len(lines)))
	t.check(waitFor(func() bool { return len(logLines.snapshot()) > 0 }, 5*time.Second),
		"the log FIFO carries the VMM's log at the level asked", "no line arrived")

	ready := waitFor(func() bool {
		return strings.Contains(serial.String(), "# vsock-agent: waiting for Ctrl+Alt+Del")
	}, 30*time.Second)
	t.check(ready, "the guest runs and waits for Ctrl+Alt+Del", vmmDetail())

	err = m.Shutdown(ctx)
	t.check(err == nil, "Shutdown (SendCtrlAltDel)", fmt.Sprint(err))
	waitCtx, waitCancel := context.WithTimeout(ctx, 30*time.Second)
	err = m.Wait(waitCtx)
	waitCancel()
	if !t.check(err == nil, "Wait: the VMM exits with status 0 after the guest powers off",
		fmt.Sprintf("%v\n%s", err, vmmDetail())) {
		m.StopVMM()
	}
	t.check(strings.Contains(serial.String(), "ok 1 - vsock device live, guest CID 0,"),
		"the guest's vsock device gave it CID 0, as configured", vmmDetail())
	t.check(regexp.MustCompile(`(?m)^ok 2 - answered 3 ping\(s\)`).MatchString(serial.String()),
		"the guest answered the three pings", vmmDetail())
	t.check(regexp.MustCompile(`(?m)^ok 3 - received Ctrl\+Alt\+Del`).MatchString(serial.String()),
		"the guest saw Ctrl+Alt+Del", vmmDetail())
	_, err = os.Stat(sockName)
	t.check(os.IsNotExist(err), "the SDK's clean-up removed the API socket", fmt.Sprint(err))

	fmt.Printf("1..%d\n", t.n)
	if t.failed > 0 {
		io.WriteString(os.Stderr, fmt.Sprintf("%d of %d failed; the SDK's log: %s/sdk.log\n", t.failed, t.n, *workDir))
		os.Exit(1)
	}
}
