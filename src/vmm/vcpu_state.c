#include "vmm/vcpu_state.h"

#include "util/error.h"
#include "util/log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

/* KVM's own tolerance (tsc_tolerance_ppm): a rate this close to the host's
 * needs no scaling, so KVM_SET_TSC_KHZ takes it. */
#define TSC_TOLERANCE_PPM 250

/* What a save cannot do without, with the name a user can search for. */
static const struct {
    int cap;
    const char *name;
} required_caps[] = {
    {KVM_CAP_VCPU_EVENTS, "KVM_CAP_VCPU_EVENTS"},
    {KVM_CAP_DEBUGREGS, "KVM_CAP_DEBUGREGS"},
    {KVM_CAP_XSAVE, "KVM_CAP_XSAVE"},
    {KVM_CAP_XCRS, "KVM_CAP_XCRS"},
    {KVM_CAP_GET_TSC_KHZ, "KVM_CAP_GET_TSC_KHZ"},
};

static int ioctl_retry(int fd, unsigned long request, void *arg)
{
    int r;
    do {
        r = ioctl(fd, request, arg);
    } while (r < 0 && errno == EINTR);
    return r;
}

/* A KVM_GET/SET_MSRS buffer for n entries (zeroed), or NULL. */
static struct kvm_msrs *msrs_alloc(uint32_t n)
{
    struct kvm_msrs *m = calloc(1, sizeof(*m) + n * sizeof(m->entries[0]));
    if (m)
        m->nmsrs = n;
    return m;
}

static bool msr_readable(int vcpu_fd, struct kvm_msrs *one, uint32_t index)
{
    one->nmsrs = 1;
    one->entries[0] = (struct kvm_msr_entry){.index = index};
    return ioctl_retry(vcpu_fd, KVM_GET_MSRS, one) == 1;
}

/* IA32_TSC first, TSC_DEADLINE last, the rest in KVM's order. */
static void order_msrs(struct vcpu_state_layout *layout)
{
    uint32_t *m = layout->msr_indices;
    uint32_t n = layout->nmsrs;
    for (uint32_t i = 0; i < n; i++) {
        if (m[i] == VCPU_STATE_MSR_IA32_TSC) {
            memmove(&m[1], &m[0], i * sizeof(m[0]));
            m[0] = VCPU_STATE_MSR_IA32_TSC;
            break;
        }
    }
    for (uint32_t i = 0; i < n; i++) {
        if (m[i] == VCPU_STATE_MSR_IA32_TSC_DEADLINE) {
            memmove(&m[i], &m[i + 1], (n - 1 - i) * sizeof(m[0]));
            m[n - 1] = VCPU_STATE_MSR_IA32_TSC_DEADLINE;
            break;
        }
    }
}

static int probe_msrs(struct vcpu_state_layout *layout, int kvm_fd, int vcpu_fd)
{
    struct kvm_msr_list *list =
        calloc(1, sizeof(*list) + VCPU_STATE_MAX_MSRS * sizeof(list->indices[0]));
    if (!list)
        return error_set("out of memory for the MSR list");
    list->nmsrs = VCPU_STATE_MAX_MSRS;
    if (ioctl_retry(kvm_fd, KVM_GET_MSR_INDEX_LIST, list) < 0) {
        int r = errno == E2BIG
                    ? error_set("KVM_GET_MSR_INDEX_LIST: KVM offers more than %d MSRs to save",
                                VCPU_STATE_MAX_MSRS)
                    : error_errno("KVM_GET_MSR_INDEX_LIST");
        free(list);
        return r;
    }
    struct kvm_msrs *one = msrs_alloc(1);
    if (!one) {
        free(list);
        return error_set("out of memory for the MSR list");
    }
    layout->nmsrs = 0;
    for (uint32_t i = 0; i < list->nmsrs && i < VCPU_STATE_MAX_MSRS; i++) {
        /* Listed is not always readable: what this CPU or KVM's
         * configuration lacks fails KVM_GET_MSRS, and is not state. */
        if (msr_readable(vcpu_fd, one, list->indices[i]))
            layout->msr_indices[layout->nmsrs++] = list->indices[i];
    }
    free(one);
    free(list);
    order_msrs(layout);
    return 0;
}

int vcpu_state_layout_probe(struct vcpu_state_layout *layout, int kvm_fd, int vm_fd, int vcpu_fd)
{
    if (vcpu_state_layout_caps(layout, kvm_fd, vm_fd) < 0)
        return -1;
    return probe_msrs(layout, kvm_fd, vcpu_fd);
}

int vcpu_state_layout_caps(struct vcpu_state_layout *layout, int kvm_fd, int vm_fd)
{
    memset(layout, 0, sizeof(*layout));
    for (size_t i = 0; i < sizeof(required_caps) / sizeof(required_caps[0]); i++) {
        if (ioctl(kvm_fd, KVM_CHECK_EXTENSION, required_caps[i].cap) <= 0)
            return error_set("this host's KVM lacks %s, which saving a vCPU needs",
                             required_caps[i].name);
    }
    layout->sregs2 = ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_SREGS2) > 0;
    layout->kvmclock_ctrl = ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_KVMCLOCK_CTRL) > 0;
    /* XSAVE2's size depends on the features the VM may use: ask the VM. */
    int xsave2 = ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
    layout->xsave_size = sizeof(struct kvm_xsave);
    if (xsave2 > (int)sizeof(struct kvm_xsave))
        layout->xsave_size = (uint32_t)xsave2;
    return 0;
}

int vcpu_state_init(struct vcpu_state *state, const struct vcpu_state_layout *layout)
{
    memset(state, 0, sizeof(*state));
    state->xsave = calloc(1, layout->xsave_size);
    if (!state->xsave)
        return error_set("out of memory for %u bytes of XSAVE state", layout->xsave_size);
    return 0;
}

void vcpu_state_free(struct vcpu_state *state)
{
    free(state->xsave);
    state->xsave = NULL;
}

int vcpu_state_complete_pending(int vcpu_fd, struct kvm_run *run)
{
    __atomic_store_n(&run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    int r = ioctl(vcpu_fd, KVM_RUN, 0);
    int e = errno;
    __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_SEQ_CST);
    /* With immediate_exit KVM finishes the pending instruction and returns
     * EINTR without entering the guest again. */
    if (r < 0 && e != EINTR) {
        errno = e;
        return error_errno("KVM_RUN (immediate_exit, before saving)");
    }
    return 0;
}

static int save_msrs(int vcpu_fd, const struct vcpu_state_layout *layout, struct vcpu_state *state)
{
    struct kvm_msrs *buf = msrs_alloc(layout->nmsrs);
    if (!buf)
        return error_set("out of memory for the MSRs");
    for (uint32_t i = 0; i < layout->nmsrs; i++)
        buf->entries[i].index = layout->msr_indices[i];
    int r = ioctl_retry(vcpu_fd, KVM_GET_MSRS, buf);
    if (r < 0) {
        r = error_errno("KVM_GET_MSRS");
    } else if ((uint32_t)r != layout->nmsrs) {
        r = error_set("KVM_GET_MSRS read %d of %u MSRs: MSR 0x%x failed", r, layout->nmsrs,
                      buf->entries[r].index);
    } else {
        state->nmsrs = layout->nmsrs;
        memcpy(state->msrs, buf->entries, layout->nmsrs * sizeof(buf->entries[0]));
        r = 0;
    }
    free(buf);
    return r;
}

int vcpu_state_save(int vcpu_fd, const struct vcpu_state_layout *layout, struct vcpu_state *state)
{
    if (ioctl_retry(vcpu_fd, KVM_GET_MP_STATE, &state->mp_state) < 0)
        return error_errno("KVM_GET_MP_STATE");
    if (ioctl_retry(vcpu_fd, KVM_GET_REGS, &state->regs) < 0)
        return error_errno("KVM_GET_REGS");
    if (layout->sregs2) {
        if (ioctl_retry(vcpu_fd, KVM_GET_SREGS2, &state->sregs2) < 0)
            return error_errno("KVM_GET_SREGS2");
    } else if (ioctl_retry(vcpu_fd, KVM_GET_SREGS, &state->sregs) < 0) {
        return error_errno("KVM_GET_SREGS");
    }
    if (layout->xsave_size > sizeof(struct kvm_xsave)) {
        if (ioctl_retry(vcpu_fd, KVM_GET_XSAVE2, state->xsave) < 0)
            return error_errno("KVM_GET_XSAVE2");
    } else if (ioctl_retry(vcpu_fd, KVM_GET_XSAVE, state->xsave) < 0) {
        return error_errno("KVM_GET_XSAVE");
    }
    if (ioctl_retry(vcpu_fd, KVM_GET_XCRS, &state->xcrs) < 0)
        return error_errno("KVM_GET_XCRS");
    if (ioctl_retry(vcpu_fd, KVM_GET_LAPIC, &state->lapic) < 0)
        return error_errno("KVM_GET_LAPIC");
    if (ioctl_retry(vcpu_fd, KVM_GET_DEBUGREGS, &state->debugregs) < 0)
        return error_errno("KVM_GET_DEBUGREGS");
    if (save_msrs(vcpu_fd, layout, state) < 0)
        return -1;
    if (ioctl_retry(vcpu_fd, KVM_GET_VCPU_EVENTS, &state->events) < 0)
        return error_errno("KVM_GET_VCPU_EVENTS");
    int khz = ioctl(vcpu_fd, KVM_GET_TSC_KHZ, 0);
    if (khz <= 0)
        return error_errno("KVM_GET_TSC_KHZ");
    state->tsc_khz = (uint32_t)khz;
    return 0;
}

/* The guest's TSC must tick at the saved rate: within KVM's tolerance the
 * rate is set as saved, beyond it this host cannot reproduce it. */
static int restore_tsc_khz(int vcpu_fd, uint32_t saved_khz)
{
    if (saved_khz == 0)
        return error_set("the saved vCPU state has no TSC rate");
    int host = ioctl(vcpu_fd, KVM_GET_TSC_KHZ, 0);
    if (host <= 0)
        return error_errno("KVM_GET_TSC_KHZ");
    uint64_t diff =
        saved_khz > (uint32_t)host ? saved_khz - (uint32_t)host : (uint32_t)host - saved_khz;
    if (diff * 1000000 > (uint64_t)host * TSC_TOLERANCE_PPM)
        return error_set("cannot restore a guest whose TSC ran at %u kHz on a vCPU whose TSC "
                         "runs at %d kHz: this host's KVM has no TSC scaling",
                         saved_khz, host);
    if (saved_khz != (uint32_t)host && ioctl(vcpu_fd, KVM_SET_TSC_KHZ, saved_khz) < 0)
        return error_errno("KVM_SET_TSC_KHZ %u", saved_khz);
    return 0;
}

static int restore_msrs(int vcpu_fd, const struct vcpu_state *state)
{
    struct kvm_msrs *buf = msrs_alloc(state->nmsrs);
    if (!buf)
        return error_set("out of memory for the MSRs");
    memcpy(buf->entries, state->msrs, state->nmsrs * sizeof(buf->entries[0]));
    int r = ioctl_retry(vcpu_fd, KVM_SET_MSRS, buf);
    if (r < 0)
        r = error_errno("KVM_SET_MSRS");
    else if ((uint32_t)r != state->nmsrs)
        r = error_set("KVM_SET_MSRS wrote %d of %u MSRs: MSR 0x%x was refused", r, state->nmsrs,
                      buf->entries[r].index);
    else
        r = 0;
    free(buf);
    return r;
}

/* Some hosts' KVM (this project's nested test machines among them) accept a
 * write of IA32_TSC and ignore it: the guest keeps reading the host's TSC,
 * so a restored guest without kvmclock sees all the time since its snapshot
 * pass at once. Nothing ember can change; said once so that a guest's
 * reaction to the jump (an RCU stall report, a watchdog) can be explained. */
static void check_tsc_held(int vcpu_fd, const struct vcpu_state *state)
{
    static atomic_bool said;
    if (state->nmsrs == 0 || state->msrs[0].index != VCPU_STATE_MSR_IA32_TSC ||
        state->tsc_khz == 0 || atomic_load(&said))
        return;
    struct kvm_msrs *one = msrs_alloc(1);
    if (!one)
        return;
    if (msr_readable(vcpu_fd, one, VCPU_STATE_MSR_IA32_TSC)) {
        uint64_t saved = state->msrs[0].data, now = one->entries[0].data;
        uint64_t apart = now > saved ? now - saved : saved - now;
        /* Read microseconds after the write: a second apart is no rounding. */
        if (apart > (uint64_t)state->tsc_khz * 1000 && !atomic_exchange(&said, true))
            log_warn("this host's KVM ignored the restored guest TSC (KVM_SET_MSRS IA32_TSC): "
                     "the guest's TSC is %s by %llu s, and a guest that keeps time with it "
                     "sees that much time pass at once",
                     now > saved ? "ahead" : "behind",
                     (unsigned long long)(apart / ((uint64_t)state->tsc_khz * 1000)));
    }
    free(one);
}

int vcpu_state_restore(int vcpu_fd, const struct vcpu_state_layout *layout,
                       const struct vcpu_state *state)
{
    /* What can be refused is refused before the vCPU changes. */
    if (state->nmsrs != layout->nmsrs)
        return error_set("the saved vCPU state has %u MSRs, this host saves %u", state->nmsrs,
                         layout->nmsrs);
    if (restore_tsc_khz(vcpu_fd, state->tsc_khz) < 0)
        return -1;
    struct kvm_mp_state mp_state = state->mp_state;
    if (ioctl_retry(vcpu_fd, KVM_SET_MP_STATE, &mp_state) < 0)
        return error_errno("KVM_SET_MP_STATE");
    struct kvm_regs regs = state->regs;
    if (ioctl_retry(vcpu_fd, KVM_SET_REGS, &regs) < 0)
        return error_errno("KVM_SET_REGS");
    if (layout->sregs2) {
        struct kvm_sregs2 sregs2 = state->sregs2;
        if (ioctl_retry(vcpu_fd, KVM_SET_SREGS2, &sregs2) < 0)
            return error_errno("KVM_SET_SREGS2");
    } else {
        struct kvm_sregs sregs = state->sregs;
        if (ioctl_retry(vcpu_fd, KVM_SET_SREGS, &sregs) < 0)
            return error_errno("KVM_SET_SREGS");
    }
    if (ioctl_retry(vcpu_fd, KVM_SET_XSAVE, state->xsave) < 0)
        return error_errno("KVM_SET_XSAVE");
    struct kvm_xcrs xcrs = state->xcrs;
    if (ioctl_retry(vcpu_fd, KVM_SET_XCRS, &xcrs) < 0)
        return error_errno("KVM_SET_XCRS");
    struct kvm_lapic_state lapic = state->lapic;
    if (ioctl_retry(vcpu_fd, KVM_SET_LAPIC, &lapic) < 0)
        return error_errno("KVM_SET_LAPIC");
    struct kvm_debugregs debugregs = state->debugregs;
    if (ioctl_retry(vcpu_fd, KVM_SET_DEBUGREGS, &debugregs) < 0)
        return error_errno("KVM_SET_DEBUGREGS");
    if (restore_msrs(vcpu_fd, state) < 0)
        return -1;
    check_tsc_held(vcpu_fd, state);
    struct kvm_vcpu_events events = state->events;
    /* GET leaves these flags clear, yet SET applies the pending NMI and the
     * SIPI vector only when they are set. */
    events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    if (ioctl_retry(vcpu_fd, KVM_SET_VCPU_EVENTS, &events) < 0)
        return error_errno("KVM_SET_VCPU_EVENTS");
    /* Tells a kvmclock guest it was paused, so its soft-lockup watchdog
     * does not fire; EINVAL means the guest has not enabled kvmclock. */
    if (layout->kvmclock_ctrl && ioctl(vcpu_fd, KVM_KVMCLOCK_CTRL, 0) < 0 && errno != EINVAL)
        return error_errno("KVM_KVMCLOCK_CTRL");
    return 0;
}
