#!/usr/bin/env python3
"""ember against Firecracker's API: every path and method of Firecracker's OpenAPI description,
before and after InstanceStart, with valid and invalid bodies (tests/api/firecracker_api.py,
which says what Firecracker answers and where ember differs on purpose). Each answer's status
is checked, and so is its shape: an error is a JSON object with a non-empty fault_message, and
the Deprecation header comes where Firecracker sends it.
Then README's "Firecracker's API" table is checked against the statuses ember gave: every
route of the description has its row, and a row lists exactly the statuses its route gave.

Standard library only; reuses test_api.py's client and process helpers.
Usage: tests/api/test_conformance.py [-v]   Environment: EMBER, GUEST_DIR (as test_api.py).
Prints one TAP line per case and ends with "conformance: N passed, N failed, N skipped".
"""

import json
import os
import re
import shutil
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ left in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import firecracker_api as fc  # noqa: E402
import test_api  # noqa: E402
from test_api import Conn, Ember, Failure  # noqa: E402

README = os.path.join(test_api.ROOT, "README.md")
NEEDS = {"tap": "a tap (root and /dev/net/tun)",
         "pmem": "a pmem device (ember refused the valid PUT /pmem)"}
HTTP_METHODS = ("GET", "PUT", "PATCH", "POST", "DELETE")


class Run:
    def __init__(self, tmp, tap_ok):
        self.tmp = tmp
        self.n = 0
        self.passed = self.failed = self.skipped = 0
        self.deliberate = []
        self.observed = {}  # (method, route template) -> statuses ember gave
        self.skipped_statuses = {}  # (method, route template) -> statuses of cases not run
        self.had = {"tap": tap_ok}  # what the cases' `needs` name, had here or not

    def line(self, ok, text, directive=""):
        self.n += 1
        print("%s %d - %s%s" % ("ok" if ok else "not ok", self.n, text, directive))
        sys.stdout.flush()
        if directive.startswith(" # SKIP"):
            self.skipped += 1
        elif ok:
            self.passed += 1
        else:
            self.failed += 1


def route_methods(template):
    """The methods of a path: the description's, and those of later releases ember serves."""
    return fc.ROUTES.get(template, ()) + fc.LATER_ROUTES.get(template, ())


def route_of(path):
    """The description's path template a concrete path falls under, or None."""
    for template in fc.ROUTES:
        pattern = "^" + re.sub(r"\{[^}]*\}", "[^/]+", template) + "$"
        if re.match(pattern, path):
            return template
    return None


def fill(value, names):
    """The body with its "@NAME" placeholders replaced ("@TMP/x": a file in the test's folder)."""
    if isinstance(value, dict):
        return {k: fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, names) for v in value]
    if isinstance(value, str) and value.startswith("@"):
        key, _, rest = value[1:].partition("/")
        return names[key] + ("/" + rest if rest else "")
    return value


def send(ember, method, path, body=None, raw=None, names=None):
    """One request on a connection of its own."""
    conn = Conn(ember.sock)
    try:
        raw_body = raw if raw is not None else (
            json.dumps(fill(body, names)).encode() if body is not None else None)
        return conn.request(method, path, raw_body=raw_body)
    finally:
        conn.close()


def shape_problem(resp):
    """What is wrong with an answer's body for its status, or None."""
    if resp.status >= 400:
        try:
            doc = json.loads(resp.body)
        except ValueError:
            return "error body is not JSON: %r" % resp.body[:200]
        if not isinstance(doc, dict) or not isinstance(doc.get("fault_message"), str) \
                or not doc["fault_message"] or len(doc) != 1:
            return "error body is not {\"fault_message\": \"...\"}: %r" % resp.body[:200]
    elif resp.status == 204:
        if resp.body:
            return "204 with a body: %r" % resp.body[:200]
    elif resp.status == 200:
        try:
            json.loads(resp.body)
        except ValueError:
            return "200 body is not JSON: %r" % resp.body[:200]
    return None


def run_case(run, ember, case, names):
    key = (case.method, route_of(case.path))
    missing = [n for n in case.needs if not run.had.get(n)]
    if missing:
        if not case.request_rule:
            run.skipped_statuses.setdefault(key, set()).add(case.ember)
        run.line(True, case.name(), " # SKIP needs %s" % ", ".join(NEEDS[n] for n in missing))
        return
    fresh = None
    try:
        if case.fresh:
            fresh = Ember(run.tmp, ["--mmds-size-limit", str(fc.MMDS_SIZE_LIMIT)], name="fresh%d" % run.n)
        target = fresh or ember
        resp = send(target, case.method, case.path, case.body, case.raw, names)
        problems = []
        if resp.status != case.ember:
            problems.append("expected %d%s, got %r" % (
                case.ember, "" if case.ember == case.firecracker else
                " (Firecracker %d, a deliberate difference)" % case.firecracker, resp))
        shape = shape_problem(resp)
        if shape:
            problems.append(shape)
        marked = resp.headers.get("deprecation") == "true"
        if case.deprecated and not marked:
            problems.append("no Deprecation header (Firecracker sends one): %r" % resp.headers)
        elif marked and not case.deprecated:
            problems.append("a Deprecation header Firecracker does not send")
        if not target.alive():
            problems.append("ember ended (status %r): %s" % (target.proc.returncode, target.stderr()[-500:]))
    except (Failure, OSError, EOFError, ValueError) as ex:
        problems = ["%s: %s" % (type(ex).__name__, ex)]
        resp = None
    finally:
        if fresh:
            fresh.kill()
    if resp is not None and key[1] is not None and not case.request_rule:
        run.observed.setdefault(key, set()).add(resp.status)
    if resp is not None and (case.method, case.path, case.variant) == ("PUT", "/pmem/pmem0", "valid"):
        run.had["pmem"] = resp.status == 204
    text = "%s: %s" % (case.name(), resp.status if resp else "no answer")
    if problems:
        run.line(False, text + ": " + "; ".join(problems))
        return
    directive = ""
    if case.deliberate:
        run.deliberate.append(case)
        directive = " # deliberate difference: Firecracker %d, ember %d: %s" % (
            case.firecracker, case.ember, case.why)
    elif key[1] in fc.UNSUPPORTED:
        directive = " # Firecracker %d too; ember: %s" % (case.firecracker, fc.UNSUPPORTED[key[1]])
    run.line(True, text, directive)


def make_file(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def tap_available(name):
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        return False
    try:
        os.close(test_api.hold_tap(name))
        return True
    except OSError:
        return False


def walk_pre(run, names):
    e = Ember(run.tmp, ["--mmds-size-limit", str(fc.MMDS_SIZE_LIMIT)], name="pre")
    try:
        for case in fc.PRE:
            run_case(run, e, case, names)
    finally:
        e.kill()


def walk_post(run, names):
    e = Ember(run.tmp, ["--mmds-size-limit", str(fc.MMDS_SIZE_LIMIT)], name="post")
    try:
        for method, path, body, needs in fc.SETUP:
            missing = [n for n in needs if not run.had.get(n)]
            if missing:
                run.line(True, "setup for the post cases: %s %s" % (method, path),
                         " # SKIP needs %s" % ", ".join(NEEDS[n] for n in missing))
                continue
            resp = send(e, method, path, body, names=names)
            if resp.status != 204:
                run.line(False, "setup for the post cases: %s %s: %r" % (method, path, resp))
                return
        run_case(run, e, fc.START, names)
        if not e.wait_output("waiting for Ctrl+Alt+Del"):
            run.line(False, "the guest did not start: %r %s" % (e.stdout()[-300:], e.stderr()[-500:]))
            return
        for case in fc.POST:
            run_case(run, e, case, names)
        status = e.wait()
        run.line(status == 0, "ember ends with the guest after SendCtrlAltDel: status %d" % status)
    finally:
        e.kill()


def check_coverage(run):
    """Every path and method of the description is walked in both states."""
    walked = {(c.state, c.method, route_of(c.path)) for c in fc.PRE + fc.POST + [fc.START]}
    templates = list(fc.ROUTES) + [p for p in fc.LATER_ROUTES if p not in fc.ROUTES]
    missing = ["%s %s %s" % (s, m, p) for p in templates for m in route_methods(p) for s in ("pre", "post")
               if (s, m, p) not in walked]
    run.line(not missing, "every path and method of Firecracker %s's description walked in both states%s"
             % (fc.FIRECRACKER_RELEASE, ": missing " + ", ".join(missing) if missing else ""))


def readme_table():
    """{(method, route template): {statuses}} from README's "Firecracker's API" table, and
    the rows it could not place."""
    with open(README) as f:
        text = f.read()
    start = text.index("### Firecracker's API")
    section = text[start:text.index("\n### ", start + 1)]
    rows, strays = {}, []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) < 2 or not re.match(r"^[\d, ]+$", cells[1]):
            continue
        statuses = {int(s) for s in cells[1].split(",")}
        tokens = re.findall(r"`([^`]*)`", cells[0])
        methods = [t.split()[0] for t in tokens if t.split() and t.split()[0] in HTTP_METHODS]
        paths = [t.split()[-1] for t in tokens if t.split() and t.split()[-1].startswith("/")]
        if not paths:
            continue  # "anything else"
        for path in paths:
            template = route_of(path)
            if template is None:
                strays.append("%s (not a path of Firecracker's description)" % path)
                continue
            for method in methods or route_methods(template):
                if (method, template) in rows:
                    strays.append("%s %s (twice)" % (method, path))
                rows[(method, template)] = statuses
    return rows, strays


def check_readme(run):
    rows, strays = readme_table()
    problems = list(strays)
    templates = list(fc.ROUTES) + [p for p in fc.LATER_ROUTES if p not in fc.ROUTES]
    for template in templates:
        for method in route_methods(template):
            key = (method, template)
            if key not in rows:
                problems.append("%s %s has no row" % key)
                continue
            seen = run.observed.get(key, set())
            unseen = rows[key] - seen - run.skipped_statuses.get(key, set())
            unlisted = seen - rows[key]
            if unseen:
                problems.append("%s %s lists %s, never answered" % (method, template, sorted(unseen)))
            if unlisted:
                problems.append("%s %s answered %s, not listed" % (method, template, sorted(unlisted)))
    for key in rows:
        if key[0] not in route_methods(key[1]):
            problems.append("%s %s is not a route of Firecracker's description" % key)
    run.line(not problems, "README's \"Firecracker's API\" table has every route and the statuses ember "
             "gave%s" % (": " + "; ".join(problems) if problems else ""))


def main():
    if "-v" in sys.argv[1:]:
        test_api.VERBOSE = True
    for path in (test_api.EMBER, test_api.KEYBOARD):
        if not os.path.exists(path):
            print("conformance: missing %s (build with make all guests)" % path)
            return 1
    tmp = tempfile.mkdtemp(prefix="ember-conformance-")
    print("# Firecracker %s (%s): %d cases before InstanceStart, %d after" % (
        fc.FIRECRACKER_RELEASE, fc.FIRECRACKER_COMMIT[:12], len(fc.PRE) + 1, len(fc.POST)))
    try:
        tap = "embercf%d" % (os.getpid() % 100000)
        run = Run(tmp, tap_available(tap + "a"))
        names = {"TMP": tmp, "KERNEL": test_api.KEYBOARD,
                 "IMAGE": make_file(os.path.join(tmp, "image1.img"), 1 << 20),
                 "IMAGE2": make_file(os.path.join(tmp, "image2.img"), 2 << 20),
                 "PMEM": make_file(os.path.join(tmp, "pmem.img"), 2 << 20)}
        for walk, suffix in ((walk_pre, "a"), (walk_post, "b")):
            names["TAP"] = tap + suffix
            try:
                walk(run, names)
            except (Failure, OSError, EOFError) as ex:
                run.line(False, "%s: %s: %s" % (walk.__name__, type(ex).__name__, ex))
        check_coverage(run)
        check_readme(run)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("1..%d" % run.n)
    print("# %d deliberate differences from Firecracker:" % len(run.deliberate))
    for case in run.deliberate:
        print("#   %s: Firecracker %d, ember %d: %s" % (case.name(), case.firecracker, case.ember, case.why))
    print("conformance: %d passed, %d failed, %d skipped" % (run.passed, run.failed, run.skipped))
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
