/* Unix stream sockets for host programs (vsock's host side). Every socket
 * returned is non-blocking and close-on-exec. */
#ifndef EMBER_BACKENDS_UDS_H
#define EMBER_BACKENDS_UDS_H

#define UDS_PATH_MAX 108 /* sizeof(sun_path) */

/* Binds and listens on path; a stale socket left there is replaced. */
int uds_listen(const char *path);
/* One pending connection, or -1 when none waits. */
int uds_accept(int listen_fd);
/* Connects to path; -1 (error_get() says why) when nobody listens. */
int uds_connect(const char *path);

#endif
