// Helpers the fcsdk_* programs share: TAP output, a buffer for the VMM's output, polling.
package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

type tap struct {
	n      int
	failed int
}

func (t *tap) check(ok bool, name string, detail string) bool {
	t.n++
	if ok {
		fmt.Printf("ok %d - %s\n", t.n, name)
	} else {
		t.failed++
		fmt.Printf("not ok %d - %s\n", t.n, name)
		for _, line := range strings.Split(strings.TrimRight(detail, "\n"), "\n") {
			fmt.Printf("#   %s\n", line)
		}
	}
	return ok
}

func (t *tap) skip(name, why string) {
	t.n++
	fmt.Printf("ok %d - %s # SKIP %s\n", t.n, name, why)
}

func (t *tap) bail(why string) {
	fmt.Printf("Bail out! %s\n", why)
	os.Exit(1)
}

// lockedBuffer collects the VMM's stdout (the guest's serial console) while tests read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func waitFor(what func() bool, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if what() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return what()
}
