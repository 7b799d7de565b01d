/* ember's version, and the version it gives to Firecracker's clients.
 *
 * Tools written for Firecracker check its version: Kata Containers takes the
 * second word of the first line of `--version` as a semantic version and
 * requires at least 0.21.1. ember answers them with the Firecracker release
 * whose API it follows, and names itself in the build metadata, which
 * semantic versioning leaves out of every comparison:
 *
 *   EMBER_FIRECRACKER_VERSION  "1.14.0+ember.0.1.0"
 *
 * so a client comparing versions compares API levels, and anyone reading it
 * sees which ember it is. `--version`, GET /version (firecracker_version)
 * and GET / (vmm_version) all give this string. */
#ifndef EMBER_UTIL_VERSION_H
#define EMBER_UTIL_VERSION_H

#ifndef EMBER_VERSION
#define EMBER_VERSION "0.1.0"
#endif
/* The Firecracker release whose API ember answers (routes ember lacks are
 * refused by name, "not supported yet"). */
#ifndef EMBER_FIRECRACKER_API
#define EMBER_FIRECRACKER_API "1.14.0"
#endif

#define EMBER_FIRECRACKER_VERSION EMBER_FIRECRACKER_API "+ember." EMBER_VERSION

#endif
