#include "jailer/libs.h"

#include "jailer/chroot.h"
#include "util/error.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_LIBS    64
#define MAX_NEEDED  64
#define MAX_PHDRS   128
#define MAX_DYNAMIC (1u << 20)
#define MAX_STRTAB  (1u << 20)
#define MAX_RUNPATH 1024

#if defined(__x86_64__)
#define MULTIARCH "x86_64-linux-gnu"
#elif defined(__aarch64__)
#define MULTIARCH "aarch64-linux-gnu"
#else
#define MULTIARCH "unknown-linux-gnu"
#endif

/* Where the loader looks when no cache says otherwise (glibc's system
 * directories, Debian's multiarch ones first): a library copied to the same
 * path inside the jail is found there without /etc/ld.so.cache. */
static const char *const system_dirs[] = {
    "/lib/" MULTIARCH, "/usr/lib/" MULTIARCH, "/lib64", "/usr/lib64", "/lib", "/usr/lib",
};

struct elf_info {
    uint16_t machine;
    char interp[PATH_MAX];
    char needed[MAX_NEEDED][NAME_MAX + 1];
    unsigned nneeded;
    char runpath[MAX_RUNPATH];
};

static int read_at(int fd, void *buf, size_t len, uint64_t off)
{
    if (off > (uint64_t)INT64_MAX)
        return -1;
    ssize_t n = pread(fd, buf, len, (off_t)off);
    return n == (ssize_t)len ? 0 : -1;
}

/* Reads the loader, the libraries needed and the search path of an ELF file.
 * Returns 1 when the file is not ELF (a script, say), 0 when read, -1 when malformed. */
static int elf_read(int fd, const char *name, struct elf_info *e)
{
    memset(e, 0, sizeof(*e));
    Elf64_Ehdr eh;
    if (read_at(fd, &eh, sizeof(eh), 0) < 0 || memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0)
        return 1;
    if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB ||
        eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum > MAX_PHDRS)
        return error_set("%s: not a 64-bit little-endian ELF file this jailer can read", name);
    e->machine = eh.e_machine;
    Elf64_Phdr ph[MAX_PHDRS];
    if (eh.e_phnum && read_at(fd, ph, eh.e_phnum * sizeof(Elf64_Phdr), eh.e_phoff) < 0)
        return error_set("%s: cannot read its program headers", name);
    const Elf64_Phdr *dynamic = NULL;
    for (unsigned i = 0; i < eh.e_phnum; i++) {
        if (ph[i].p_type == PT_INTERP) {
            if (ph[i].p_filesz == 0 || ph[i].p_filesz >= sizeof(e->interp) ||
                read_at(fd, e->interp, ph[i].p_filesz, ph[i].p_offset) < 0)
                return error_set("%s: bad PT_INTERP", name);
            e->interp[ph[i].p_filesz] = '\0';
        } else if (ph[i].p_type == PT_DYNAMIC) {
            dynamic = &ph[i];
        }
    }
    if (!dynamic)
        return 0; /* static */
    if (dynamic->p_filesz > MAX_DYNAMIC)
        return error_set("%s: dynamic section too large", name);
    size_t ndyn = dynamic->p_filesz / sizeof(Elf64_Dyn);
    Elf64_Dyn *dyn = malloc(ndyn * sizeof(Elf64_Dyn) + 1);
    if (!dyn)
        return error_set("out of memory");
    if (read_at(fd, dyn, ndyn * sizeof(Elf64_Dyn), dynamic->p_offset) < 0) {
        free(dyn);
        return error_set("%s: cannot read its dynamic section", name);
    }
    uint64_t strtab = 0, strsz = 0;
    for (size_t i = 0; i < ndyn && dyn[i].d_tag != DT_NULL; i++) {
        if (dyn[i].d_tag == DT_STRTAB)
            strtab = dyn[i].d_un.d_ptr;
        else if (dyn[i].d_tag == DT_STRSZ)
            strsz = dyn[i].d_un.d_val;
    }
    /* DT_STRTAB is an address: the PT_LOAD segment holding it gives its file offset. */
    uint64_t stroff = UINT64_MAX;
    for (unsigned i = 0; i < eh.e_phnum; i++) {
        if (ph[i].p_type == PT_LOAD && strtab >= ph[i].p_vaddr &&
            strtab - ph[i].p_vaddr < ph[i].p_filesz &&
            strsz <= ph[i].p_filesz - (strtab - ph[i].p_vaddr)) {
            stroff = ph[i].p_offset + (strtab - ph[i].p_vaddr);
            break;
        }
    }
    char *str = NULL;
    if (stroff == UINT64_MAX || strsz == 0 || strsz > MAX_STRTAB || !(str = malloc(strsz + 1)) ||
        read_at(fd, str, strsz, stroff) < 0) {
        free(dyn);
        free(str);
        return error_set("%s: cannot read its dynamic string table", name);
    }
    str[strsz] = '\0';
    int result = 0;
    for (size_t i = 0; i < ndyn && dyn[i].d_tag != DT_NULL && result == 0; i++) {
        uint64_t off = dyn[i].d_un.d_val;
        if (dyn[i].d_tag != DT_NEEDED && dyn[i].d_tag != DT_RUNPATH && dyn[i].d_tag != DT_RPATH)
            continue;
        if (off >= strsz) {
            result = error_set("%s: a dynamic entry points outside its string table", name);
            break;
        }
        const char *s = str + off;
        if (dyn[i].d_tag == DT_NEEDED) {
            if (e->nneeded == MAX_NEEDED || strlen(s) > NAME_MAX || !*s)
                result = error_set("%s: too many or too long DT_NEEDED entries", name);
            else
                snprintf(e->needed[e->nneeded++], NAME_MAX + 1, "%s", s);
        } else if (!e->runpath[0] || dyn[i].d_tag == DT_RUNPATH) {
            snprintf(e->runpath, sizeof(e->runpath), "%s", s);
        }
    }
    free(dyn);
    free(str);
    return result;
}

/* Finds a needed library the way the loader would without its cache: the
 * object's RUNPATH (without $ORIGIN-style entries, which mean something else
 * inside the jail), then the system directories; a file for another machine
 * is passed over, as the loader does. Returns an open descriptor. */
static int find_library(const char *name, const char *runpath, uint16_t machine, char *path,
                        size_t size)
{
    char dirs[MAX_RUNPATH];
    snprintf(dirs, sizeof(dirs), "%s", runpath);
    const char *candidates[MAX_RUNPATH / 2 + sizeof(system_dirs) / sizeof(system_dirs[0])];
    size_t n = 0;
    for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        if (d[0] == '/' && !strchr(d, '$'))
            candidates[n++] = d;
    }
    for (size_t i = 0; i < sizeof(system_dirs) / sizeof(system_dirs[0]); i++)
        candidates[n++] = system_dirs[i];
    for (size_t i = 0; i < n; i++) {
        snprintf(path, size, "%s/%s", candidates[i], name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        struct stat st;
        Elf64_Ehdr eh;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && read_at(fd, &eh, sizeof(eh), 0) == 0 &&
            !memcmp(eh.e_ident, ELFMAG, SELFMAG) && eh.e_ident[EI_CLASS] == ELFCLASS64 &&
            eh.e_machine == machine)
            return fd;
        close(fd);
    }
    return -1;
}

/* Copies fd to root/path (path absolute, without "." or ".." parts), making its parent
 * directories where missing (root-owned, 0755); an existing one must be a real directory. */
static int copy_into(int fd, const char *path, int root_fd, const char *root)
{
    char rel[PATH_MAX], dir_path[PATH_MAX];
    if (path[0] != '/' || strstr(path, "/../") || strstr(path, "/./") ||
        (size_t)snprintf(rel, sizeof(rel), "%s", path + 1) >= sizeof(rel) ||
        (size_t)snprintf(dir_path, sizeof(dir_path), "%s", root) >= sizeof(dir_path))
        return error_set("cannot place %s in the jail", path);
    int dir_fd = fcntl(root_fd, F_DUPFD_CLOEXEC, 0);
    if (dir_fd < 0)
        return error_errno("cannot place %s in the jail", path);
    char *name = rel;
    for (char *slash; (slash = strchr(name, '/')) != NULL; name = slash + 1) {
        *slash = '\0';
        if (!*name)
            continue;
        int next = chroot_open_dir(dir_fd, dir_path, name, 0755, NULL);
        if (next < 0 || path_format(dir_path + strlen(dir_path),
                                    sizeof(dir_path) - strlen(dir_path), "/%s", name) < 0) {
            close(dir_fd);
            if (next >= 0)
                close(next);
            return -1;
        }
        close(dir_fd);
        dir_fd = next;
    }
    struct stat st;
    int r = fstat(fd, &st);
    if (r < 0)
        error_errno("cannot stat %s", path);
    else
        r = chroot_copy_file(fd, path, dir_fd, dir_path, name, st.st_mode & 0755, (uid_t)-1,
                             (gid_t)-1);
    close(dir_fd);
    return r;
}

int libs_copy(int exec_fd, const char *exec_name, int root_fd, const char *root)
{
    static struct elf_info info;
    int r = elf_read(exec_fd, exec_name, &info);
    if (r != 0)
        return r > 0 ? 0 : -1; /* not ELF: exec will say what it thinks of it */
    if (!info.interp[0] && info.nneeded == 0)
        return 0;
    uint16_t machine = info.machine;
    const char *interp_name = NULL;
    if (info.interp[0]) {
        int fd = open(info.interp, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return error_errno("%s needs the loader %s", exec_name, info.interp);
        int c = copy_into(fd, info.interp, root_fd, root);
        close(fd);
        if (c < 0)
            return -1;
        interp_name = strrchr(info.interp, '/') + 1;
    }
    /* Breadth first over DT_NEEDED, each name once. */
    static char names[MAX_LIBS][NAME_MAX + 1];
    static char runpaths[MAX_LIBS][MAX_RUNPATH];
    unsigned nnames = 0;
    for (unsigned next = 0;; next++) {
        for (unsigned i = 0; i < info.nneeded; i++) {
            const char *n = info.needed[i];
            bool known = interp_name && !strcmp(n, interp_name); /* the loader is itself */
            for (unsigned k = 0; k < nnames && !known; k++)
                known = !strcmp(names[k], n);
            if (known)
                continue;
            if (nnames == MAX_LIBS)
                return error_set("%s needs more than %d libraries", exec_name, MAX_LIBS);
            if (strchr(n, '/'))
                return jail_bad_input("%s needs %s by path: the jailer copies only libraries "
                                      "found by name",
                                      exec_name, n);
            snprintf(names[nnames], sizeof(names[nnames]), "%s", n);
            snprintf(runpaths[nnames], sizeof(runpaths[nnames]), "%s", info.runpath);
            nnames++;
        }
        if (next == nnames)
            return 0;
        char path[PATH_MAX];
        int fd = find_library(names[next], runpaths[next], machine, path, sizeof(path));
        if (fd < 0)
            return jail_bad_input("%s needs %s, found neither in its RUNPATH nor in /lib/" MULTIARCH
                                  ", /usr/lib/" MULTIARCH ", /lib64, /usr/lib64, /lib, /usr/lib",
                                  exec_name, names[next]);
        r = copy_into(fd, path, root_fd, root);
        if (r == 0)
            r = elf_read(fd, path, &info);
        close(fd);
        if (r != 0)
            return r > 0 ? error_set("%s: not an ELF file", path) : -1;
    }
}
