#!/usr/bin/env python3
"""ember's console on its standard input and output: pipes, files, and a
terminal (raw mode, the Ctrl-A escape keys, the terminal restored on every
way out). Uses the serial-echo test guest, which echoes lines it takes from
the UART's receive interrupt. Prints TAP; exit status 0 when all pass."""

import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMBER = os.environ.get("EMBER", os.path.join(ROOT, "build", "ember"))
GUESTS = os.environ.get("GUEST_DIR", os.path.join(ROOT, "build", "guest"))
ECHO = os.path.join(GUESTS, "serial-echo.elf")
TRIPLE = os.path.join(GUESTS, "triple-fault.elf")

results = []
# How long a test waits for something that must happen. Waits end as soon as their condition
# holds, so a generous bound costs nothing on a fast machine and keeps a slow or loaded one green.
PATIENCE_S = 60


def report(ok, name, detail=""):
    results.append(ok)
    line = "%s %d - %s" % ("ok" if ok else "not ok", len(results), name)
    print(line + ("" if ok or not detail else "  # " + detail))
    sys.stdout.flush()


def run_piped(data, stdin_file=None):
    args = [EMBER, "run", "--kernel", ECHO, "--debug-exit"]
    try:
        if stdin_file is not None:
            with open(stdin_file, "rb") as f:
                p = subprocess.run(args, stdin=f, capture_output=True, timeout=PATIENCE_S)
        else:
            p = subprocess.run(args, input=data, capture_output=True, timeout=PATIENCE_S)
    except subprocess.TimeoutExpired as ex:
        return None, (ex.stdout or b"").decode(errors="replace")
    return p.returncode, p.stdout.decode(errors="replace")


# The guest's runtime resets the UART as it starts; a leading newline gives
# it something harmless to lose.
LINES = b"\nhello there\nsecond line\nquit\n"


def test_pipe():
    status, out = run_piped(LINES)
    report(status == 1 and "echo: hello there" in out and "echo: second line" in out,
           "input from a pipe reaches the guest", "status %r, output %r" % (status, out))


def test_file(tmp):
    path = os.path.join(tmp, "console-input.txt")
    with open(path, "wb") as f:
        f.write(LINES)
    status, out = run_piped(None, stdin_file=path)
    report(status == 1 and "echo: second line" in out,
           "input from a regular file (not pollable) reaches the guest",
           "status %r, output %r" % (status, out))


def test_large_input():
    # Far more than the UART's FIFO: back-pressure, nothing lost or reordered.
    words = [b"line-%04d" % i for i in range(300)]
    status, out = run_piped(b"\n" + b"\n".join(words) + b"\nquit\n")
    got = [l[len("echo: "):] for l in out.splitlines() if l.startswith("echo: line-")]
    want = [w.decode() for w in words]
    report(status == 1 and got == want, "300 lines through the 64-byte FIFO arrive whole, in order",
           "status %r, %d of %d lines" % (status, len(got), len(want)))


class Terminal:
    """ember on a pseudo-terminal, as a user at a terminal would run it."""

    def __init__(self, guest, extra=()):
        self.master, self.slave = pty.openpty()
        self.before = termios.tcgetattr(self.slave)
        self.proc = subprocess.Popen([EMBER, "run", "--kernel", guest, "--debug-exit", *extra],
                                     stdin=self.slave, stdout=self.slave, stderr=self.slave)
        self.out = b""

    def read_until(self, needle, timeout=PATIENCE_S):
        end = time.monotonic() + timeout
        while needle not in self.out and time.monotonic() < end:
            r, _, _ = select.select([self.master], [], [], 0.1)
            if r:
                try:
                    self.out += os.read(self.master, 4096)
                except OSError:
                    break
        return needle in self.out

    def send(self, data):
        os.write(self.master, data)

    def wait(self, timeout=PATIENCE_S):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None

    def restored(self):
        return termios.tcgetattr(self.slave) == self.before

    def raw_now(self):
        return not (termios.tcgetattr(self.slave)[3] & termios.ICANON)

    def close(self):
        os.close(self.master)
        os.close(self.slave)


def test_terminal_typing_and_escape():
    t = Terminal(ECHO)
    ready = t.read_until(b"serial-echo: ready")
    raw = t.raw_now()
    t.send(b"\rtyped on a terminal\r")
    echoed = t.read_until(b"echo: typed on a terminal")
    # Ctrl-C is the guest's in raw mode: ember must not die of it.
    t.send(b"\x03\rstill alive\r")
    alive = t.read_until(b"echo: still alive") and t.proc.poll() is None
    t.send(b"\x01h")
    helped = t.read_until(b"Ctrl-A x")
    t.send(b"\x01x")
    status = t.wait()
    report(ready and raw, "a terminal is put in raw mode")
    report(echoed, "keys typed on the terminal reach the guest")
    report(alive, "Ctrl-C goes to the guest, not to ember")
    report(helped, "Ctrl-A h shows the console keys")
    report(status == 0, "Ctrl-A x quits with status 0", "status %r" % status)
    report(t.restored(), "the terminal is restored after Ctrl-A x")
    t.close()


def test_terminal_restored_on_guest_exit():
    t = Terminal(ECHO)
    ready = t.read_until(b"serial-echo: ready")
    t.send(b"\rquit\r")
    status = t.wait()
    report(ready and status == 1 and t.restored(), "the terminal is restored when the guest ends the VM",
           "ready %r, status %r" % (ready, status))
    t.close()


def test_terminal_restored_on_signal():
    t = Terminal(ECHO)
    # Once the guest runs, ember has its signal handlers and the terminal in raw mode.
    ready = t.read_until(b"serial-echo: ready")
    t.proc.send_signal(signal.SIGTERM)
    status = t.wait()
    report(ready and status == 128 + signal.SIGTERM and t.restored(),
           "the terminal is restored when ember is stopped by SIGTERM",
           "ready %r, status %r" % (ready, status))
    t.close()


def test_terminal_restored_on_guest_crash():
    t = Terminal(TRIPLE)
    status = t.wait()
    report(status == 10 and t.restored(),
           "the terminal is restored when the guest triple-faults", "status %r" % status)
    t.close()


def main():
    import tempfile
    for path in (EMBER, ECHO, TRIPLE):
        if not os.path.exists(path):
            print("Bail out! missing %s (make all guests)" % path)
            return 1
    with tempfile.TemporaryDirectory() as tmp:
        test_pipe()
        test_file(tmp)
        test_large_input()
        test_terminal_typing_and_escape()
        test_terminal_restored_on_guest_exit()
        test_terminal_restored_on_signal()
        test_terminal_restored_on_guest_crash()
    print("1..%d" % len(results))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
