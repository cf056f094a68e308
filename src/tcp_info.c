/* tcp_info.h: the kernel's TCP counters of a socket. */
#include <netinet/in.h> /* IPPROTO_TCP */
#include <stddef.h>
#include <sys/socket.h>

#include <linux/tcp.h> /* struct tcp_info with tcpi_bytes_acked (Linux 4.1+) */

#include "tcp_info.h"

int surpool__tcp_bytes_acked(int fd, uint64_t *out)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    if (fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
        len < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof(ti.tcpi_bytes_acked))
        return -1;
    *out = ti.tcpi_bytes_acked;
    return 0;
}
