/* Raw terminal mode for the guest console, restored on every way out:
 * normal return, exit(), and fatal signals. */
#ifndef EMBER_UTIL_TERM_H
#define EMBER_UTIL_TERM_H

/* Puts the terminal on fd in raw input mode (no echo, no line editing, no
 * signal keys); output processing stays as it was. Returns 0 or -1. */
int term_raw(int fd);
/* Restores the saved mode; async-signal-safe; harmless when not raw. */
void term_restore(void);

#endif
