#ifndef MM1_SYSTEM_H
#define MM1_SYSTEM_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* copy_file_range(2): the kernel copies between files without a round trip through user memory. Returns the
   bytes copied, or -1 with errno set (ENOSYS, EXDEV, EINVAL mean "not possible here: copy another way"). */
ssize_t mm1_copy_file_range(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out, size_t len);

/* Starts writeback of [offset, offset + len) without waiting for it (sync_file_range with SYNC_FILE_RANGE_WRITE),
   so a long streaming write never accumulates enough dirty pages to be throttled. 0, or -1 with errno. */
int mm1_start_writeback(int fd, int64_t offset, int64_t len);

#endif
