#include "util/term.h"

#include "util/error.h"

#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

static struct termios saved;
static int saved_fd = -1;

void term_restore(void)
{
    if (saved_fd >= 0)
        tcsetattr(saved_fd, TCSANOW, &saved);
}

static void restore_and_reraise(int sig)
{
    term_restore();
    signal(sig, SIG_DFL);
    raise(sig);
}

int term_raw(int fd)
{
    struct termios t;
    if (tcgetattr(fd, &t) < 0)
        return error_errno("tcgetattr");
    static bool hooks_installed;
    if (!hooks_installed) {
        hooks_installed = true;
        atexit(term_restore);
        const int fatal[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
        for (size_t i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++) {
            struct sigaction sa;
            memset(&sa, 0, sizeof(sa));
            sa.sa_handler = restore_and_reraise;
            sa.sa_flags = SA_RESETHAND;
            sigaction(fatal[i], &sa, NULL);
        }
    }
    saved = t;
    saved_fd = fd;
    t.c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
    t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
    t.c_cflag &= ~(tcflag_t)(CSIZE | PARENB);
    t.c_cflag |= CS8;
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    if (tcsetattr(fd, TCSANOW, &t) < 0) {
        saved_fd = -1;
        return error_errno("tcsetattr");
    }
    return 0;
}
