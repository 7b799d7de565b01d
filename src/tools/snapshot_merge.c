/* ember-snapshot-merge BASE DIFF...: applies Diff memory files of snapshots onto their base
 * (a Full memory file, or one merged before), oldest first, in place (snapshot/memfile.h).
 * The result is the memory file of a Full snapshot taken with the last Diff. */
#include "snapshot/memfile.h"
#include "util/error.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: ember-snapshot-merge BASE DIFF [DIFF...]\n"
               "  Copies the pages each DIFF (the memory file of a Diff snapshot) holds onto\n"
               "  BASE (the memory file of the Full snapshot the DIFFs follow), in the order\n"
               "  given, oldest first. BASE is changed in place and synced; the vmstate file\n"
               "  to resume with is the last DIFF's.\n");
}

int main(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage(stdout);
        return 0;
    }
    if (argc < 3) {
        usage(stderr);
        return 2;
    }
    int base = open(argv[1], O_RDWR | O_CLOEXEC);
    if (base < 0) {
        error_errno("cannot open '%s'", argv[1]);
        fprintf(stderr, "ember-snapshot-merge: %s\n", error_get());
        return 1;
    }
    for (int i = 2; i < argc; i++) {
        int diff = open(argv[i], O_RDONLY | O_CLOEXEC);
        if (diff < 0) {
            error_errno("cannot open '%s'", argv[i]);
        } else if (memfile_merge(base, diff) < 0) {
            error_prefix("cannot merge '%s' onto '%s'", argv[i], argv[1]);
            close(diff);
            diff = -1;
        }
        if (diff < 0) {
            fprintf(stderr, "ember-snapshot-merge: %s%s\n", error_get(),
                    i > 2 ? " (the DIFFs before it are merged)" : "");
            close(base);
            return 1;
        }
        close(diff);
    }
    if (fsync(base) < 0) {
        error_errno("cannot sync '%s'", argv[1]);
        fprintf(stderr, "ember-snapshot-merge: %s\n", error_get());
        close(base);
        return 1;
    }
    close(base);
    return 0;
}
