// fcsdk_jailer drives ember through the real firecracker-go-sdk's jailer mode: a Config with
// JailerCfg (the naive chroot strategy, which hard-links the kernel, the drives and the log
// and metrics FIFOs into the jail), so that the SDK starts ember-jailer, under the name
// `jailer`, with Firecracker's jailer flags (--id --uid --gid --exec-file, the NUMA node's
// cpuset cgroups, --cgroup-version, --parent-cgroup, --chroot-base-dir, -- --api-sock) and
// talks to ember inside the jail. Seccomp is on (the SDK passes --no-seccomp unless asked).
// The guest is ember's `keyboard` test guest, ended with Shutdown (SendCtrlAltDel).
//
// It prints TAP on stdout; the SDK's own log goes to sdk-jailer.log in the work directory.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	firecracker "github.com/firecracker-microvm/firecracker-go-sdk"
	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
	"github.com/sirupsen/logrus"
)

func main() {
	jailerBin := flag.String("jailer", "", "the jailer binary (ember-jailer)")
	execFile := flag.String("exec-file", "", "ember's binary, a regular file named firecracker")
	kernel := flag.String("kernel", "", "the keyboard test guest, on the file system of -dir")
	workDir := flag.String("dir", "", "an empty directory: the FIFOs, the drive and the jails")
	id := flag.String("id", "", "the jail's id")
	parentCgroup := flag.String("parent-cgroup", "", "the jail's cgroup is PATH/ID")
	uid := flag.Int("uid", 0, "the user ember runs as in the jail")
	flag.Parse()
	if *jailerBin == "" || *execFile == "" || *kernel == "" || *workDir == "" || *id == "" || *uid == 0 {
		fmt.Fprintln(os.Stderr, "usage: fcsdk_jailer -jailer BIN -exec-file BIN -kernel ELF -dir DIR -id ID -uid UID [-parent-cgroup PATH]")
		os.Exit(2)
	}
	t := &tap{}
	if err := os.Chdir(*workDir); err != nil {
		t.bail(err.Error())
	}
	sdkLog, err := os.Create("sdk-jailer.log")
	if err != nil {
		t.bail(err.Error())
	}
	defer sdkLog.Close()
	logger := logrus.New()
	logger.SetOutput(sdkLog)
	logger.SetLevel(logrus.DebugLevel)
	entry := logrus.NewEntry(logger)

	// The drive must be the jailed user's to open read-write; the SDK only links it.
	rootfs, _ := filepath.Abs("jailed-rootfs.img")
	if err := os.WriteFile(rootfs, nil, 0600); err != nil {
		t.bail(err.Error())
	}
	if err := os.Truncate(rootfs, 1<<20); err != nil {
		t.bail(err.Error())
	}
	if err := os.Chown(rootfs, *uid, *uid); err != nil {
		t.bail(err.Error())
	}
	base, _ := filepath.Abs("jails")
	if err := os.Mkdir(base, 0755); err != nil {
		t.bail(err.Error())
	}
	logPath, _ := filepath.Abs("jailed-log.fifo")
	metricsPath, _ := filepath.Abs("jailed-metrics.fifo")

	vmmOut := &lockedBuffer{}
	var logLines lockedBuffer
	gid, node := *uid, 0
	cfg := firecracker.Config{
		SocketPath:      "api.socket",
		KernelImagePath: *kernel,
		KernelArgs:      "console=ttyS0 reboot=k panic=1 pci=off",
		LogFifo:         logPath,
		MetricsFifo:     metricsPath,
		FifoLogWriter:   &logLines,
		LogLevel:        "Info",
		Drives:          firecracker.NewDrivesBuilder(rootfs).Build(),
		MachineCfg: models.MachineConfiguration{
			VcpuCount:  firecracker.Int64(1),
			MemSizeMib: firecracker.Int64(128),
		},
		Seccomp: firecracker.SeccompConfig{Enabled: true},
		VMID:    *id,
		JailerCfg: &firecracker.JailerConfig{
			GID:            &gid,
			UID:            uid,
			NumaNode:       &node,
			ID:             *id,
			ExecFile:       *execFile,
			JailerBinary:   *jailerBin,
			ChrootBaseDir:  base,
			ChrootStrategy: firecracker.NewNaiveChrootStrategy(*kernel),
			CgroupVersion:  "1",
			ParentCgroup:   *parentCgroup,
			Stdout:         vmmOut,
			Stderr:         vmmOut,
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m, err := firecracker.NewMachine(ctx, cfg, firecracker.WithLogger(entry))
	if !t.check(err == nil, "NewMachine takes a jailer configuration", fmt.Sprint(err)) {
		t.bail("no machine")
	}
	err = m.Start(ctx)
	if !t.check(err == nil, "Machine.Start through the jailer: the handler chain with the files linked into the jail",
		fmt.Sprintf("%v\nVMM output:\n%s", err, vmmOut.String())) {
		m.StopVMM()
		t.bail("the machine did not start")
	}
	jailRoot := filepath.Join(base, filepath.Base(*execFile), *id, "root")
	info, err := m.DescribeInstanceInfo(ctx)
	t.check(err == nil && firecracker.StringValue(info.State) == models.InstanceInfoStateRunning &&
		firecracker.StringValue(info.ID) == *id,
		"DescribeInstanceInfo over the socket in the jail: Running, with the jail's id",
		fmt.Sprintf("%+v %v", info, err))
	linked := true
	for _, name := range []string{filepath.Base(*kernel), filepath.Base(rootfs), filepath.Base(logPath)} {
		if _, err := os.Stat(filepath.Join(jailRoot, name)); err != nil {
			linked = false
		}
	}
	t.check(linked, "the kernel, the drive and the log FIFO are in the jail's root", jailRoot)

	ready := waitFor(func() bool {
		return strings.Contains(vmmOut.String(), "# keyboard: waiting for Ctrl+Alt+Del")
	}, 30*time.Second)
	t.check(ready, "the guest runs in the jail", vmmOut.String())
	t.check(waitFor(func() bool { return strings.Contains(logLines.String(), "machine started") }, 5*time.Second),
		"the SDK copies ember's log from the FIFO it made (FifoLogWriter)", logLines.String())

	err = m.Shutdown(ctx)
	t.check(err == nil, "Shutdown (SendCtrlAltDel)", fmt.Sprint(err))
	waitCtx, waitCancel := context.WithTimeout(ctx, 30*time.Second)
	err = m.Wait(waitCtx)
	waitCancel()
	if !t.check(err == nil, "Wait: ember exits with status 0 after the guest powers off",
		fmt.Sprintf("%v\n%s", err, vmmOut.String())) {
		m.StopVMM()
	}
	t.check(regexp.MustCompile(`(?m)^ok 1`).MatchString(vmmOut.String()), "the guest saw Ctrl+Alt+Del",
		vmmOut.String())

	fmt.Printf("1..%d\n", t.n)
	if t.failed > 0 {
		fmt.Fprintf(os.Stderr, "%d of %d failed; the SDK's log: %s/sdk-jailer.log\n", t.failed, t.n, *workDir)
		os.Exit(1)
	}
}
