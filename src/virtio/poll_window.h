/* How long a device's I/O thread keeps polling its rings after work before it asks the driver
 * for kicks again and sleeps. While it polls, the driver is told not to kick (NO_NOTIFY or the
 * event index left behind), so a busy guest submits without exits.
 *
 * Fixed (a drive's `poll=US`): the window is that long. Adaptive (the machine-wide polling of
 * `--cpu-placement ...,poll=US`): the window starts at POLL_WINDOW_MIN_NS and doubles whenever
 * a kick comes within the bound after polling stopped (a longer window would have caught it),
 * and halves whenever a window closes without work, between POLL_WINDOW_MIN_NS and the bound.
 * Either way an idle guest costs nothing: each burst of work is followed by at most one window
 * of polling, and the thread then sleeps until a kick. */
#ifndef EMBER_VIRTIO_POLL_WINDOW_H
#define EMBER_VIRTIO_POLL_WINDOW_H

#include <stdbool.h>
#include <stdint.h>

#define POLL_WINDOW_MIN_NS 8000u
/* The largest bound taken (`poll=US` of a drive or of the placement), 1 s. */
#define POLL_WINDOW_MAX_US 1000000u

struct poll_window {
    uint64_t bound_ns; /* 0: polling off */
    uint64_t window_ns;
    bool adaptive;
    bool polling;          /* kicks are off and the thread polls */
    uint64_t last_work_ns; /* while polling: when work was last found */
    uint64_t stopped_ns;   /* when polling last stopped (0: never) */
    uint64_t grows, shrinks;
};

/* bound_us 0 turns polling off. */
void poll_window_init(struct poll_window *w, unsigned bound_us, bool adaptive);
static inline bool poll_window_on(const struct poll_window *w)
{
    return w->bound_ns != 0;
}
/* A kick or other wake-up came: polling (re)starts now; an adaptive window grows if the kick
 * came soon enough after polling stopped that a longer window would have caught it. */
void poll_window_start(struct poll_window *w, uint64_t now_ns);
/* Polling found work. */
void poll_window_work(struct poll_window *w, uint64_t now_ns);
/* Polling found nothing: true while the window is still open; false when it closed (polling
 * stops: the caller asks for kicks again, then looks once more for work that raced with that
 * and calls poll_window_resume if it found some). With requests still in flight (pending),
 * their completions are work to come: the window is then the bound, and it does not shrink. */
bool poll_window_keep(struct poll_window *w, uint64_t now_ns, bool pending);
/* Work that raced with poll_window_keep's false was found after kicks were asked for: polling
 * goes on, the window as it is. */
void poll_window_resume(struct poll_window *w, uint64_t now_ns);
/* Polling stops for another reason (device reset, snapshot freeze). */
void poll_window_stop(struct poll_window *w, uint64_t now_ns);

#endif
