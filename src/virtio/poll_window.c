#include "virtio/poll_window.h"

void poll_window_init(struct poll_window *w, unsigned bound_us, bool adaptive)
{
    *w = (struct poll_window){0};
    if (bound_us > POLL_WINDOW_MAX_US)
        bound_us = POLL_WINDOW_MAX_US;
    w->bound_ns = (uint64_t)bound_us * 1000;
    w->adaptive = adaptive;
    w->window_ns = w->bound_ns;
    if (adaptive && w->window_ns > POLL_WINDOW_MIN_NS)
        w->window_ns = POLL_WINDOW_MIN_NS;
}

void poll_window_start(struct poll_window *w, uint64_t now_ns)
{
    if (!w->bound_ns)
        return;
    if (!w->polling && w->adaptive && w->stopped_ns && now_ns >= w->stopped_ns) {
        /* Asleep for `gap` after a window of window_ns: had the window been gap longer, this
         * kick would have been polled instead. Worth it only within the bound. */
        uint64_t wanted = w->window_ns + (now_ns - w->stopped_ns);
        if (wanted <= w->bound_ns && w->window_ns < w->bound_ns) {
            uint64_t grown = w->window_ns * 2;
            while (grown < wanted)
                grown *= 2;
            w->window_ns = grown < w->bound_ns ? grown : w->bound_ns;
            w->grows++;
        }
    }
    w->polling = true;
    w->last_work_ns = now_ns;
}

void poll_window_resume(struct poll_window *w, uint64_t now_ns)
{
    if (!w->bound_ns)
        return;
    w->polling = true;
    w->last_work_ns = now_ns;
}

void poll_window_work(struct poll_window *w, uint64_t now_ns)
{
    w->last_work_ns = now_ns;
}

void poll_window_stop(struct poll_window *w, uint64_t now_ns)
{
    if (w->polling)
        w->stopped_ns = now_ns;
    w->polling = false;
}

bool poll_window_keep(struct poll_window *w, uint64_t now_ns, bool pending)
{
    if (!w->polling)
        return false;
    if (now_ns - w->last_work_ns < (pending ? w->bound_ns : w->window_ns))
        return true;
    if (!pending && w->adaptive && w->window_ns > POLL_WINDOW_MIN_NS) {
        w->window_ns /= 2;
        if (w->window_ns < POLL_WINDOW_MIN_NS)
            w->window_ns = POLL_WINDOW_MIN_NS;
        w->shrinks++;
    }
    poll_window_stop(w, now_ns);
    return false;
}
