/* tcp_info.h: the kernel's TCP counters of a socket. */
#include <netinet/in.h> /* IPPROTO_TCP */
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <linux/sockios.h> /* SIOCOUTQ */
#include <linux/tcp.h>     /* struct tcp_info with tcpi_bytes_acked (Linux 4.1+) */

#include "tcp_info.h"

int surpool__tcp_sending(int fd, uint64_t *acked, size_t *queued)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    int q = 0;
    if (fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
        len < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof(ti.tcpi_bytes_acked) ||
        ioctl(fd, SIOCOUTQ, &q) != 0 || q < 0)
        return -1;
    *acked = ti.tcpi_bytes_acked;
    *queued = (size_t)q;
    return 0;
}
