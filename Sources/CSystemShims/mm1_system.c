#define _GNU_SOURCE
#include "mm1_system.h"
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif

ssize_t mm1_copy_file_range(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out, size_t len) {
#if defined(__linux__) && defined(SYS_copy_file_range)
    loff_t in = (loff_t)*off_in, out = (loff_t)*off_out;
    ssize_t n = (ssize_t)syscall(SYS_copy_file_range, fd_in, &in, fd_out, &out, len, 0u);
    if (n > 0) {
        *off_in = (int64_t)in;
        *off_out = (int64_t)out;
    }
    return n;
#else
    (void)fd_in; (void)off_in; (void)fd_out; (void)off_out; (void)len;
    errno = ENOSYS;
    return -1;
#endif
}

int mm1_start_writeback(int fd, int64_t offset, int64_t len) {
#if defined(__linux__) && defined(SYNC_FILE_RANGE_WRITE)
    return sync_file_range(fd, (off_t)offset, (off_t)len, SYNC_FILE_RANGE_WRITE);
#else
    (void)fd; (void)offset; (void)len;
    return 0;
#endif
}
