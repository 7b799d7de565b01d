#!/usr/bin/env python3
"""Where the wall time of short ember runs goes, per thread, from a `perf sched record -g` of
them (bench/startup_waits.sh makes the inputs).

usage: startup_waits.py TIMEHIST FORKS WORKLOAD_PID

TIMEHIST: `perf sched timehist -g --state --max-stack 12` of the recording; FORKS: its
sched_process_fork events (`perf script -F comm,pid,tid,event,trace`); WORKLOAD_PID: the
recorded shell that ran the runs. Only the processes it started count (other embers on the host do not). Per run (means over the
runs): the time each thread spent on CPU (as the scheduler sees it: steal from the hypervisor
under the host counts as on CPU), in run queues (after a wakeup, or preempted) and asleep,
the sleeps named by the kernel function they waited in (an SRCU grace period of a memory slot
or an interrupt routing change, a kernel thread's creation, ...); then how long the teardown
helper outlives ember (the VM's destruction) and whether it overlaps the next run."""
import collections
import re
import sys

LINE = re.compile(r'^\s*(\d+\.\d+)\s+\[(\d+)\]\s+(.+?)\[(\d+)(?:/(\d+))?\]\s+([\d.]+)\s+([\d.]+)'
                  r'\s+([\d.]+)\s+(\S)\s*(.*)$')
FORK = re.compile(r'sched_process_fork: comm=(.*?) pid=(\d+) child_comm=(.*?) child_pid=(\d+)')


def why(stack, state):
    """A short name for where a thread left the CPU."""
    frames = [f.strip() for f in stack.split('<-')]
    if state in ('R', 'W'):
        return None  # preempted: the time off CPU is run-queue time
    if state == 'X':
        return 'exit'
    for i, f in enumerate(frames):
        if f in ('__synchronize_srcu', 'synchronize_srcu', 'synchronize_srcu_expedited'):
            callers = [g for g in frames[i + 1:] if 'synchronize_srcu' not in g]
            return 'SRCU grace period <- ' + ' <- '.join(callers[:2])
        if f.startswith('synchronize_rcu'):
            return f + ' <- ' + ' <- '.join(frames[i + 1:i + 3])
        if f == 'filemap_fault':
            return 'page-cache fault'
        if f == '__kthread_create_on_node':
            return 'kernel thread creation <- ' + ' <- '.join(frames[i + 1:i + 3])
        if 'epoll_wait' in f:
            return 'epoll_wait (the main loop, idle while the guest runs)'
        if 'recvmsg' in f:
            return 'recvmsg (the teardown helper, idle while ember lives)'
        if f == 'do_sys_poll':
            return 'ppoll (the teardown helper, for the rest of ember\'s threads)'
        if f == 'vhost_task_fn':
            return 'KVM worker idle'
    return ' <- '.join(frames[:4])


def main():
    children = collections.defaultdict(list)
    root = int(sys.argv[3])
    for line in open(sys.argv[2]):
        m = FORK.search(line)
        if not m:
            continue
        parent, child = int(m.group(2)), int(m.group(4))
        children[parent].append(child)
    ours = set()
    todo = [root]
    while todo:
        p = todo.pop()
        if p not in ours:
            ours.add(p)
            todo.extend(children[p])

    procs = collections.OrderedDict()  # (kind, pid) -> record
    left_for = {}  # tid -> why it last left the CPU
    for line in open(sys.argv[1]):
        m = LINE.match(line)
        if not m:
            continue
        t, _, comm, tid, pid, wait, delay, run, state, stack = m.groups()
        tid, pid = int(tid), int(pid or tid)
        if (tid not in ours and pid not in ours) or not (comm.startswith('ember') or
                                                         comm.startswith('vcpu')):
            continue
        t, wait, delay, run = float(t) * 1e3, float(wait), float(delay), float(run)
        kind = 'teardown helper' if comm.startswith('ember-teardown') else 'ember'
        p = procs.setdefault((kind, pid), {'first': t - run - wait, 'exit': None,
                                           'threads': collections.defaultdict(collections.Counter)})
        p['first'] = min(p['first'], t - run - wait)
        if state == 'X':  # the process's exit is reported once its last thread is gone
            p['exit'] = t if p['exit'] is None else max(p['exit'], t)
        if kind == 'ember' and 'kvm_destroy_vm' in stack:
            p['destroyed_vm'] = True
        role = 'main' if tid == pid else comm
        if 'vhost_task_fn' in stack or left_for.get(tid, '') == 'KVM worker idle':
            role = 'KVM worker (vhost task)'
        c = p['threads'][role]
        before = left_for.get(tid, 'start')
        # timehist: wait = the whole time off CPU before this slice; sch delay = its part from
        # the wakeup (or the preemption) to running again.
        if before is None:
            c['run queue (preempted)'] += wait
        else:
            if wait - delay > 0:
                c['asleep: ' + before] += wait - delay
            c['run queue (after a wakeup)'] += delay
        c['on CPU (steal included)'] += run
        if state == 'D' or state == 'S':
            c['blocked (times)'] += 1
        left_for[tid] = why(stack, state)

    embers = [(pid, p) for (kind, pid), p in procs.items() if kind == 'ember' and p['exit']]
    helpers = [(pid, p) for (kind, pid), p in procs.items() if kind == 'teardown helper']
    if not embers:
        sys.exit('no ember run found in the recording')
    for kind, runs in (('ember', embers), ('teardown helper', helpers)):
        if not runs:
            continue
        total = collections.defaultdict(collections.Counter)
        for _, p in runs:
            for role, c in p['threads'].items():
                total[role].update(c)
        print(f'{kind}: ms per run, mean of {len(runs)} runs')
        if kind == 'ember':
            span = sum(p['exit'] - p['first'] for _, p in runs) / len(runs)
            print(f'  {span:8.2f}  first event to the exit of its last thread (the recording adds '
                  f'to it)')
            own = [p['exit'] - p['first'] for _, p in runs if p.get('destroyed_vm')]
            if own:
                print(f'  in {len(own)} of {len(runs)} runs a thread of ember\'s own destroyed the '
                      f'VM (before its exit was reported): {sum(own) / len(own):.2f} ms in those')
        for role, c in total.items():
            print(f'  {role}:')
            for k, v in sorted(c.items(), key=lambda kv: -kv[1]):
                if v / len(runs) >= 0.01:
                    print(f'    {v / len(runs):8.2f}  {k}')
    # The helper's life after ember's exit is the VM's destruction; does it overlap the next run?
    starts = sorted(p['first'] for _, p in embers)
    after, overlap = [], 0
    for pid, p in embers:
        helper = [h for hpid, h in helpers if hpid in children[pid]]
        if not helper or helper[0]['exit'] is None:
            continue
        after.append(helper[0]['exit'] - p['exit'])
        nxt = [s for s in starts if s > p['first']]
        if nxt and helper[0]['exit'] > nxt[0]:
            overlap += 1
    if after:
        after.sort()
        print(f'teardown helper ends {after[len(after) // 2]:.2f} ms (median; {after[0]:.2f} to '
              f'{after[-1]:.2f}) after ember\'s exit; in {overlap} of {len(after)} runs the next '
              f'run had started by then')


if __name__ == '__main__':
    main()
