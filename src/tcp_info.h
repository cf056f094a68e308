/*
 * What the kernel knows of a TCP connection that the transport cannot see
 * through libwebsockets: how many of our bytes the peer has acknowledged. Apart
 * from the transport because glibc's <netinet/tcp.h> (which other headers pull
 * in) has an older struct tcp_info than <linux/tcp.h>. Any thread.
 */
#ifndef SURPOOL_TCP_INFO_H
#define SURPOOL_TCP_INFO_H

#include <stdint.h>

/* The bytes socket `fd`'s peer has acknowledged so far (Linux TCP_INFO
 * tcpi_bytes_acked) into *out. 0, or -1 when the kernel does not tell. */
int surpool__tcp_bytes_acked(int fd, uint64_t *out);

#endif
