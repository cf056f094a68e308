/*
 * The WebSocket protocol (RFC 6455), client side, over a byte stream: the
 * opening handshake (our request, the check of the server's answer) and the
 * framing, which is wslay's (its event API, without message buffering). No I/O
 * and nothing of libwebsockets here: the transport hands in the bytes it read
 * and writes out the bytes this produces.
 *
 * Why not libwebsockets' own WebSocket role: libwebsockets 4.1 runs its client
 * parser once per received byte (~3.2 ns a byte on the pool's one service
 * thread, so a 1 MB reply held every other connection of the pool for ~3 ms;
 * docs/PERFORMANCE.md). wslay reads a frame's payload in blocks.
 *
 * wslay 1.1.1 quirks handled here: a text message ends only after wslay's
 * UTF-8 check of its last bytes; control frames are handed to wslay whole (it
 * checks a close reason's UTF-8 per piece read); a 1-byte close body is refused.
 *
 * Threads: one surpool__ws belongs to one connection and is used on one thread
 * at a time (the transport's service thread). wslay allocates with malloc(),
 * not surpool_set_allocator()'s functions (as libwebsockets and OpenSSL do).
 */
#ifndef SURPOOL_WS_H
#define SURPOOL_WS_H

#include <stddef.h>

typedef struct surpool__ws surpool__ws;

/* One piece of a data message, in order: `first` on the message's first piece,
 * `final` on its last (a message may come in one piece with both set, or end
 * with an empty piece). `binary`: a binary message, else text. `p` is valid
 * only during the call. Return 0 to go on, -1 to stop reading (surpool__ws_recv
 * then returns SURPOOL__WS_STOPPED; the callee knows why). */
typedef int (*surpool__ws_data_fn)(void *ud, const unsigned char *p, size_t n, int first,
                                   int final, int binary);

typedef enum {
    SURPOOL__WS_OK = 0,   /* all bytes taken (handshake: the answer is not complete yet) */
    SURPOOL__WS_OPEN,     /* handshake: the upgrade was accepted */
    SURPOOL__WS_REFUSED,  /* handshake: an HTTP status other than 101 (surpool__ws_status) */
    SURPOOL__WS_PROTOCOL, /* broken or unacceptable bytes: surpool__ws_error() says which;
                             after the upgrade a close frame is queued (with the code
                             wslay chose: 1002, 1007, 1009, or none) */
    SURPOOL__WS_CLOSED,   /* the server sent a close frame (surpool__ws_peer_close);
                             our answer is queued */
    SURPOOL__WS_STOPPED,  /* the data callback returned -1 */
    SURPOOL__WS_NOMEM
} surpool__ws_rc;

/* A connection's protocol state, its output buffer starting with `headroom`
 * spare bytes (the transport's writer may need them in front of the data).
 * NULL when out of memory. */
surpool__ws *surpool__ws_new(surpool__ws_data_fn on_data, void *ud, size_t headroom);
void surpool__ws_free(surpool__ws *ws);

/* Queue the upgrade request for `path` on `host` ("host[:port]", the Host
 * header) asking for subprotocol `proto`. 0, or -1 when out of memory. */
int surpool__ws_start(surpool__ws *ws, const char *host, const char *path, const char *proto);

/* Bytes of the server's answer to the upgrade request. OK: all taken, more
 * needed; OPEN: accepted, *used bytes were the answer's (the rest of `in` is
 * frames: give it to surpool__ws_recv()); REFUSED: an HTTP status other than
 * 101; PROTOCOL: not HTTP, a missing or wrong Upgrade, Connection or
 * Sec-WebSocket-Accept, extensions, another subprotocol, headers over 16 KiB;
 * NOMEM. */
surpool__ws_rc surpool__ws_handshake(surpool__ws *ws, const unsigned char *in, size_t len,
                                     size_t *used);

/* Frames read from the server, once open: data callbacks run for the data
 * messages; pings are answered and a close frame is answered (queued output).
 * OK, PROTOCOL, CLOSED, STOPPED or NOMEM. Once anything but OK was returned,
 * further calls return the same and take nothing. */
surpool__ws_rc surpool__ws_recv(surpool__ws *ws, const unsigned char *in, size_t len);

/* Queue a ping (keepalive). 0, or -1 when out of memory or closing. */
int surpool__ws_ping(surpool__ws *ws);

/* Queue one data message (copied). 0, or -1: out of memory, or the connection
 * is closing (a close frame was queued). */
int surpool__ws_send(surpool__ws *ws, int binary, const void *p, size_t n);

/* Queue a close frame (once; later calls do nothing). `reason` may be NULL; a
 * longer one is cut to the 123 bytes a close frame has room for. Before the
 * upgrade there is no frame to send: the state just ends (STOPPED). */
void surpool__ws_close(surpool__ws *ws, int code, const char *reason);

/* The bytes to write now (frames, pongs, close; the request during the
 * handshake), starting `headroom` bytes into a buffer of ours: *p points at the
 * first byte to write. 0 when there is nothing. surpool__ws_written(ws, n)
 * after writing n of them (the transport's writer takes all it is given). */
size_t surpool__ws_output(surpool__ws *ws, unsigned char **p);
void surpool__ws_written(surpool__ws *ws, size_t n);

/* Free the output buffer if nothing waits in it (an idle connection). */
void surpool__ws_trim(surpool__ws *ws);

/* A close frame has gone into the output (ours or our answer to the server's):
 * once the output is written the socket may close. (The transport keeps its
 * own state of ending; test_ws and fuzz_ws check this one.) */
int surpool__ws_close_queued(const surpool__ws *ws);

/* After REFUSED: the HTTP status. After PROTOCOL (and REFUSED): what was wrong,
 * printable text. */
unsigned surpool__ws_status(const surpool__ws *ws);
const char *surpool__ws_error(const surpool__ws *ws);

/* After CLOSED: the server's close code (1005 when it sent none) and reason
 * (sanitized to printable UTF-8). */
int surpool__ws_peer_close(const surpool__ws *ws, const char **reason);

#endif
