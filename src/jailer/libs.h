/* What a dynamically linked ember needs inside the jail. Firecracker's
 * jailer expects a static binary; ember links liburing, cJSON and the C
 * library dynamically, and the jail has no /lib. So the loader the binary
 * names (PT_INTERP) and every library it needs (DT_NEEDED, recursively) are
 * copied into the jail at the paths the loader searches, root-owned and
 * read-only to ember. A static binary needs nothing. */
#ifndef EMBER_JAILER_LIBS_H
#define EMBER_JAILER_LIBS_H

/* Copies exec_fd's loader and libraries under root (root_fd open on it), each
 * file and directory made recorded in the undo log; a file already there is
 * refused. */
int libs_copy(int exec_fd, const char *exec_name, int root_fd, const char *root);

#endif
