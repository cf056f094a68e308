/*
 * What the kernel knows of a TCP connection that the transport cannot see
 * through libwebsockets: how many of our bytes the peer has acknowledged, and
 * how many still wait in the send queue. Apart from the transport because
 * glibc's <netinet/tcp.h> (which other headers pull in) has an older struct
 * tcp_info than <linux/tcp.h>. Any thread.
 */
#ifndef SURPOOL_TCP_INFO_H
#define SURPOOL_TCP_INFO_H

#include <stddef.h>
#include <stdint.h>

/* For socket `fd`: the bytes its peer has acknowledged so far (Linux TCP_INFO
 * tcpi_bytes_acked) into *acked, and the bytes in its send queue not yet
 * acknowledged (SIOCOUTQ) into *queued. 0, or -1 when the kernel does not
 * tell. */
int surpool__tcp_sending(int fd, uint64_t *acked, size_t *queued);

#endif
