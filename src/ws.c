/*
 * The WebSocket protocol, client side (ws.h): our upgrade request and the check
 * of the answer (RFC 6455 section 4.1), then framing through wslay's event API
 * with message buffering off, so a data message reaches the transport in the
 * pieces it was read in, and control frames (ping, pong, close) are wslay's.
 */
#include "ws.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <wslay/wslay.h>

#include "internal.h"
#include "utf8.h"

#define HS_MAX (16u * 1024u)         /* the server's answer: status line and headers */
#define OUT_KEEP_BYTES (64u * 1024u) /* output buffers above this are freed once written */

enum { PH_HANDSHAKE = 0, PH_OPEN = 1, PH_DONE = 2 };

struct surpool__ws {
    wslay_event_context_ptr ev;
    surpool__ws_data_fn on_data;
    void *ud;
    int phase;
    surpool__ws_rc done_rc; /* PH_DONE: what every later recv returns */

    /* Output: `headroom` spare bytes, then out_len bytes to write. */
    unsigned char *out;
    size_t headroom, out_len, out_cap;
    int nomem; /* an output append failed */

    /* Handshake. */
    char accept[32]; /* the Sec-WebSocket-Accept we expect */
    char proto[32];
    char *hs; /* the answer so far (freed once open) */
    size_t hs_len, hs_cap;
    unsigned status;

    /* Reading: the bytes recv() hands wslay, the frame being read. */
    const unsigned char *in;
    size_t in_len;
    int f_opcode, f_fin;
    uint64_t f_len, f_off;
    int msg_binary, msg_first;
    int text_final; /* a text message's last bytes went out: its end waits for
                       wslay's UTF-8 verdict (cb_frame_end) */
    int stopped;
    int bad_close; /* a close frame with a 1-byte body (wslay takes it) */

    /* Frame boundaries of the bytes handed to wslay (feed_frames()): wslay
     * 1.1.1 checks a close reason's UTF-8 from byte 2 of every piece it reads,
     * so a control frame is only ever handed over whole; the start of one cut
     * by the end of a read waits in `carry`. */
    unsigned char carry[14 + 125];
    size_t carry_len;
    unsigned char trk_hdr[14];
    size_t trk_hdr_len;
    uint64_t trk_left; /* payload bytes of the current frame not yet seen */
    int trk_carry;     /* the current frame is one to carry (carried_kind()) */
    int peer_code;     /* the server's close code once it closed (1005 for none), else 0 */
    char peer_reason[124];

    char err[200];
};

/* ------------------------------------------------------------------------- */
/* Output                                                                     */
/* ------------------------------------------------------------------------- */

static int out_append(surpool__ws *ws, const void *p, size_t n)
{
    size_t need = ws->headroom + ws->out_len + n;
    if (need > ws->out_cap) {
        size_t cap = ws->out_cap != 0 ? ws->out_cap : 512;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        unsigned char *nb = surpool__realloc(ws->out, cap);
        if (nb == NULL) {
            ws->nomem = 1;
            return -1;
        }
        ws->out = nb;
        ws->out_cap = cap;
    }
    memcpy(ws->out + ws->headroom + ws->out_len, p, n);
    ws->out_len += n;
    return 0;
}

size_t surpool__ws_output(surpool__ws *ws, unsigned char **p)
{
    *p = ws->out != NULL ? ws->out + ws->headroom : NULL;
    return ws->out_len;
}

void surpool__ws_written(surpool__ws *ws, size_t n)
{
    if (n >= ws->out_len) {
        ws->out_len = 0;
        if (ws->out_cap > OUT_KEEP_BYTES)
            surpool__ws_trim(ws); /* one big request should not pin its buffer */
        return;
    }
    memmove(ws->out + ws->headroom, ws->out + ws->headroom + n, ws->out_len - n);
    ws->out_len -= n;
}

void surpool__ws_trim(surpool__ws *ws)
{
    if (ws->out_len == 0) {
        surpool__free(ws->out);
        ws->out = NULL;
        ws->out_cap = 0;
    }
}

/* ------------------------------------------------------------------------- */
/* wslay's callbacks                                                          */
/* ------------------------------------------------------------------------- */

static ssize_t cb_recv(wslay_event_context_ptr ev, uint8_t *buf, size_t len, int flags,
                       void *ud)
{
    surpool__ws *ws = ud;
    (void)flags;
    if (ws->in_len == 0 || ws->stopped) {
        wslay_event_set_error(ev, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = len < ws->in_len ? len : ws->in_len;
    memcpy(buf, ws->in, n);
    ws->in += n;
    ws->in_len -= n;
    return (ssize_t)n;
}

static ssize_t cb_send(wslay_event_context_ptr ev, const uint8_t *data, size_t len, int flags,
                       void *ud)
{
    (void)flags;
    if (out_append(ud, data, len) != 0) {
        wslay_event_set_error(ev, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static int cb_genmask(wslay_event_context_ptr ev, uint8_t *buf, size_t len, void *ud)
{
    (void)ev;
    (void)ud;
    return RAND_bytes(buf, (int)len) == 1 ? 0 : -1;
}

static int is_data_opcode(int op)
{
    return op == WSLAY_TEXT_FRAME || op == WSLAY_BINARY_FRAME || op == WSLAY_CONTINUATION_FRAME;
}

static void cb_frame_start(wslay_event_context_ptr ev,
                           const struct wslay_event_on_frame_recv_start_arg *a, void *ud)
{
    surpool__ws *ws = ud;
    (void)ev;
    ws->f_opcode = a->opcode;
    ws->f_fin = a->fin;
    ws->f_len = a->payload_length;
    ws->f_off = 0;
    if (a->opcode == WSLAY_CONNECTION_CLOSE && a->payload_length == 1)
        ws->bad_close = 1; /* RFC 6455 5.5.1: a body starts with a 2-byte code */
    if (a->opcode == WSLAY_TEXT_FRAME || a->opcode == WSLAY_BINARY_FRAME) {
        /* wslay refuses a new message while one is unfinished. */
        ws->msg_binary = a->opcode == WSLAY_BINARY_FRAME;
        ws->msg_first = 1;
    }
}

static void cb_frame_chunk(wslay_event_context_ptr ev,
                           const struct wslay_event_on_frame_recv_chunk_arg *a, void *ud)
{
    surpool__ws *ws = ud;
    (void)ev;
    if (ws->stopped || !is_data_opcode(ws->f_opcode))
        return;
    ws->f_off += a->data_length;
    int final = ws->f_fin && ws->f_off == ws->f_len;
    if (final && !ws->msg_binary) {
        /* wslay checks that the text ends on a whole UTF-8 character after
         * this callback: the message ends in cb_frame_end(), if it does. */
        ws->text_final = 1;
        final = 0;
    }
    if (a->data_length == 0 && !final && !ws->msg_first)
        return;
    if (ws->on_data(ws->ud, a->data, a->data_length, ws->msg_first, final, ws->msg_binary) != 0)
        ws->stopped = 1;
    ws->msg_first = 0;
}

static void cb_frame_end(wslay_event_context_ptr ev, void *ud)
{
    static const unsigned char none[1];
    surpool__ws *ws = ud;
    (void)ev;
    if (!ws->text_final)
        return;
    ws->text_final = 0;
    if (!ws->stopped && ws->on_data(ws->ud, none, 0, ws->msg_first, 1, 0) != 0)
        ws->stopped = 1;
    ws->msg_first = 0;
}

static void cb_msg(wslay_event_context_ptr ev, const struct wslay_event_on_msg_recv_arg *a,
                   void *ud)
{
    surpool__ws *ws = ud;
    (void)ev;
    if (a->opcode != WSLAY_CONNECTION_CLOSE)
        return;
    ws->peer_code = a->status_code != 0 ? a->status_code : 1005;
    if (a->msg != NULL && a->msg_length > 2)
        surpool__text_sanitize(ws->peer_reason, sizeof(ws->peer_reason),
                               (const char *)a->msg + 2, a->msg_length - 2);
}

/* ------------------------------------------------------------------------- */
/* Life                                                                       */
/* ------------------------------------------------------------------------- */

surpool__ws *surpool__ws_new(surpool__ws_data_fn on_data, void *ud, size_t headroom)
{
    static const struct wslay_event_callbacks cbs = {
        .recv_callback = cb_recv,
        .send_callback = cb_send,
        .genmask_callback = cb_genmask,
        .on_frame_recv_start_callback = cb_frame_start,
        .on_frame_recv_chunk_callback = cb_frame_chunk,
        .on_frame_recv_end_callback = cb_frame_end,
        .on_msg_recv_callback = cb_msg,
    };
    surpool__ws *ws = surpool__calloc(1, sizeof(*ws));
    if (ws == NULL)
        return NULL;
    if (wslay_event_context_client_init(&ws->ev, &cbs, ws) != 0) {
        surpool__free(ws);
        return NULL;
    }
    wslay_event_config_set_no_buffering(ws->ev, 1);
    /* No limit of wslay's (its default refuses a frame over 2^31 - 1 bytes
     * with close 1009): max_message_bytes is the transport's to apply. */
    wslay_event_config_set_max_recv_msg_length(ws->ev, UINT64_MAX);
    ws->on_data = on_data;
    ws->ud = ud;
    ws->headroom = headroom;
    return ws;
}

void surpool__ws_free(surpool__ws *ws)
{
    if (ws == NULL)
        return;
    wslay_event_context_free(ws->ev);
    surpool__free(ws->out);
    surpool__free(ws->hs);
    surpool__free(ws);
}

/* ------------------------------------------------------------------------- */
/* Handshake                                                                  */
/* ------------------------------------------------------------------------- */

static const char WS_GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

int surpool__ws_start(surpool__ws *ws, const char *host, const char *path, const char *proto)
{
    unsigned char raw[16], sha[SHA_DIGEST_LENGTH];
    char key[32], cat[sizeof(key) + sizeof(WS_GUID)];

    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return -1;
    EVP_EncodeBlock((unsigned char *)key, raw, sizeof(raw)); /* 24 characters */
    int n = snprintf(cat, sizeof(cat), "%s%s", key, WS_GUID);
    SHA1((const unsigned char *)cat, (size_t)n, sha);
    EVP_EncodeBlock((unsigned char *)ws->accept, sha, sizeof(sha)); /* 28 characters */
    surpool__strlcpy(ws->proto, proto, sizeof(ws->proto));

#define REQUEST_FMT                                                                            \
    "GET %s HTTP/1.1\r\n"                                                                      \
    "Host: %s\r\n"                                                                             \
    "Upgrade: websocket\r\n"                                                                   \
    "Connection: Upgrade\r\n"                                                                  \
    "Sec-WebSocket-Key: %s\r\n"                                                                \
    "Sec-WebSocket-Version: 13\r\n"                                                            \
    "Sec-WebSocket-Protocol: %s\r\n"                                                           \
    "\r\n"
    n = snprintf(NULL, 0, REQUEST_FMT, path, host, key, proto);
    char *req = n > 0 ? surpool__malloc((size_t)n + 1) : NULL;
    if (req == NULL)
        return -1;
    snprintf(req, (size_t)n + 1, REQUEST_FMT, path, host, key, proto);
#undef REQUEST_FMT
    ws->hs_len = 0;
    int rc = out_append(ws, req, (size_t)n);
    surpool__free(req);
    return rc;
}

/* The handshake answer is read (or never will be): its buffer goes. */
static void hs_drop(surpool__ws *ws)
{
    surpool__free(ws->hs);
    ws->hs = NULL;
    ws->hs_cap = 0;
}

static surpool__ws_rc finish(surpool__ws *ws, surpool__ws_rc rc)
{
    ws->phase = PH_DONE;
    ws->done_rc = rc;
    hs_drop(ws);
    return rc;
}

/* The answer is refused: `before`, `arg` (server text: sanitized), `after`. */
static surpool__ws_rc hs_fail(surpool__ws *ws, const char *before, const char *arg,
                              const char *after)
{
    char text[80];
    surpool__text_sanitize_str(text, sizeof(text), arg);
    snprintf(ws->err, sizeof(ws->err), "%s%s%s", before, text, after);
    return finish(ws, SURPOOL__WS_PROTOCOL);
}

/* Does the comma-separated list `v` hold `token` (any case)? */
static int has_token(const char *v, const char *token)
{
    size_t tl = strlen(token);
    while (*v != '\0') {
        while (*v == ' ' || *v == '\t' || *v == ',')
            v++;
        const char *e = v;
        while (*e != '\0' && *e != ',')
            e++;
        const char *t = e;
        while (t > v && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        if ((size_t)(t - v) == tl && surpool__ascii_ncaseeq(v, token, tl))
            return 1;
        v = e;
    }
    return 0;
}

/* The complete answer sits in ws->hs, NUL-terminated where its blank line
 * ended; the status line and the headers are read in place. */
static surpool__ws_rc hs_check(surpool__ws *ws)
{
    char *line = ws->hs;
    char *eol = strstr(line, "\r\n");
    *eol = '\0';
    unsigned st = 0;
    const char *d = line + 9;
    if (strncmp(line, "HTTP/1.", 7) == 0 && line[7] != '\0' && line[8] == ' ' && d[0] >= '1' &&
        d[0] <= '5' && d[1] >= '0' && d[1] <= '9' && d[2] >= '0' && d[2] <= '9' &&
        (d[3] == ' ' || d[3] == '\0'))
        st = (unsigned)((d[0] - '0') * 100 + (d[1] - '0') * 10 + (d[2] - '0'));
    if (st == 0)
        return hs_fail(ws, "answered the WebSocket upgrade with '", line, "', not HTTP");
    ws->status = st;
    if (st != 101) {
        surpool__text_sanitize_str(ws->err, sizeof(ws->err), line);
        return finish(ws, SURPOOL__WS_REFUSED);
    }

    int upgrade = 0, connection = 0, accept = 0, proto = 0;
    char answered[32] = ""; /* the server's Sec-WebSocket-Protocol, sanitized */
    for (line = eol + 2; *line != '\0'; line = eol + 2) {
        eol = strstr(line, "\r\n");
        *eol = '\0';
        char *colon = strchr(line, ':');
        if (colon == NULL)
            return hs_fail(ws, "sent a broken header line '", line, "' in its upgrade answer");
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        char *ve = v + strlen(v);
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            *--ve = '\0';
        if (surpool__ascii_caseeq(line, "Upgrade"))
            upgrade = surpool__ascii_caseeq(v, "websocket");
        else if (surpool__ascii_caseeq(line, "Connection"))
            connection = has_token(v, "upgrade");
        else if (surpool__ascii_caseeq(line, "Sec-WebSocket-Accept"))
            accept = strcmp(v, ws->accept) == 0 ? 1 : -1;
        else if (surpool__ascii_caseeq(line, "Sec-WebSocket-Protocol")) {
            surpool__text_sanitize_str(answered, sizeof(answered), v);
            proto = 1;
        } else if (surpool__ascii_caseeq(line, "Sec-WebSocket-Extensions"))
            return hs_fail(ws, "answered with WebSocket extensions '", v,
                           "' that were not asked for");
    }
    if (!upgrade)
        return hs_fail(ws, "answered 101 without 'Upgrade: websocket'", "", "");
    if (!connection)
        return hs_fail(ws, "answered 101 without 'Connection: Upgrade'", "", "");
    if (accept != 1)
        return hs_fail(ws, "answered 101 with a ", accept == 0 ? "missing" : "wrong",
                       " Sec-WebSocket-Accept");
    if (!proto || strcmp(answered, ws->proto) != 0) {
        snprintf(ws->err, sizeof(ws->err),
                 "did not accept WebSocket subprotocol '%s' (answered %s%s%s)", ws->proto,
                 proto ? "'" : "", proto ? answered : "none", proto ? "'" : "");
        return finish(ws, SURPOOL__WS_PROTOCOL);
    }
    return SURPOOL__WS_OPEN;
}

/* Take answer bytes until its blank line; *used says how many were its. */
static surpool__ws_rc hs_recv(surpool__ws *ws, const unsigned char *in, size_t len,
                              size_t *used)
{
    *used = 0;
    /* Copy up to the end of the blank line, never past it: the rest is frames.
     * Look back three bytes so a terminator split across reads is found. */
    while (*used < len) {
        if (ws->hs_len == HS_MAX) {
            snprintf(ws->err, sizeof(ws->err),
                     "sent an upgrade answer whose headers exceed %u bytes", HS_MAX);
            return finish(ws, SURPOOL__WS_PROTOCOL);
        }
        if (ws->hs_len + 1 >= ws->hs_cap) {
            /* Grown as needed (an answer is ~200 bytes): a pool opening many
             * connections at once does not hold 16 KiB for each. */
            size_t cap = ws->hs_cap != 0 ? ws->hs_cap * 2 : 512;
            char *nb = surpool__realloc(ws->hs, cap < HS_MAX + 1 ? cap : HS_MAX + 1);
            if (nb == NULL)
                return finish(ws, SURPOOL__WS_NOMEM);
            ws->hs = nb;
            ws->hs_cap = cap < HS_MAX + 1 ? cap : HS_MAX + 1;
        }
        char ch = (char)in[(*used)++];
        if (ch == '\0')
            return hs_fail(ws, "sent a NUL byte in its upgrade answer", "", "");
        ws->hs[ws->hs_len++] = ch;
        if (ch == '\n' && ws->hs_len >= 4 &&
            memcmp(ws->hs + ws->hs_len - 4, "\r\n\r\n", 4) == 0) {
            ws->hs[ws->hs_len - 2] = '\0'; /* the last header line keeps its CRLF */
            surpool__ws_rc rc = hs_check(ws);
            if (rc == SURPOOL__WS_OPEN) {
                hs_drop(ws);
                ws->phase = PH_OPEN;
            }
            return rc;
        }
    }
    return SURPOOL__WS_OK;
}

/* ------------------------------------------------------------------------- */
/* Frames                                                                     */
/* ------------------------------------------------------------------------- */

static const char *close_code_text(int code)
{
    switch (code) {
    case 1007: return "text that is not UTF-8 (in a text message or a close reason)";
    case 1009: return "a frame too large";
    default: return "a broken WebSocket frame";
    }
}

/* Flush what wslay queued (pongs, close frames) into our output. */
static int flush(surpool__ws *ws)
{
    return wslay_event_send(ws->ev) == 0 && !ws->nomem ? 0 : -1;
}

/* Hand wslay `len` bytes that end on a frame boundary or inside a data frame. */
static surpool__ws_rc feed(surpool__ws *ws, const unsigned char *in, size_t len)
{
    if (len == 0)
        return SURPOOL__WS_OK;
    ws->in = in;
    ws->in_len = len;
    int r = wslay_event_recv(ws->ev);
    ws->in = NULL;
    ws->in_len = 0;
    int fr = flush(ws);
    if (ws->stopped)
        return finish(ws, SURPOOL__WS_STOPPED);
    if (r == WSLAY_ERR_NOMEM || ws->nomem)
        return finish(ws, SURPOOL__WS_NOMEM);
    if (ws->bad_close) {
        snprintf(ws->err, sizeof(ws->err), "server sent a close frame with a 1-byte body");
        return finish(ws, SURPOOL__WS_PROTOCOL);
    }
    if (ws->peer_code != 0)
        return finish(ws, SURPOOL__WS_CLOSED);
    if (r != 0 || !wslay_event_get_read_enabled(ws->ev)) {
        int code = wslay_event_get_status_code_sent(ws->ev);
        snprintf(ws->err, sizeof(ws->err), "server sent %s", close_code_text(code));
        return finish(ws, SURPOOL__WS_PROTOCOL);
    }
    if (fr != 0)
        return finish(ws, SURPOOL__WS_NOMEM);
    return SURPOOL__WS_OK;
}

/* A frame header's length so far: 2 until its second byte is known, then
 * with its extended length and mask key. */
static size_t hdr_need(const unsigned char *h, size_t have)
{
    if (have < 2)
        return 2;
    unsigned l7 = h[1] & 0x7f;
    return 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + ((h[1] & 0x80) ? 4 : 0);
}

static uint64_t hdr_payload(const unsigned char *h)
{
    unsigned l7 = h[1] & 0x7f;
    if (l7 < 126)
        return l7;
    uint64_t v = 0;
    for (int i = 0; i < (l7 == 126 ? 2 : 8); i++)
        v = v << 8 | h[2 + i];
    return v;
}

/* A frame header (its first `have` bytes) of a well-formed control frame:
 * FIN, no RSV bit, close/ping/pong, unmasked, at most 125 bytes. Only those
 * are carried; wslay refuses any other control frame at its header, so those
 * go over as they come (the same, split or whole). */
static int carried_kind(const unsigned char *h, size_t have)
{
    return (h[0] == 0x88 || h[0] == 0x89 || h[0] == 0x8A) && (have < 2 || h[1] <= 125);
}

/* Walk `n` bytes about to be handed to wslay; returns how many to hand over
 * now: all, or up to the start of a control frame the bytes end inside. */
static size_t track(surpool__ws *ws, const unsigned char *p, size_t n)
{
    size_t i = 0, start = 0;
    while (i < n) {
        if (ws->trk_left > 0) {
            uint64_t skip = n - i < ws->trk_left ? n - i : ws->trk_left;
            ws->trk_left -= skip;
            i += (size_t)skip;
            continue;
        }
        if (ws->trk_hdr_len == 0)
            start = i;
        ws->trk_hdr[ws->trk_hdr_len++] = p[i++];
        if (ws->trk_hdr_len == hdr_need(ws->trk_hdr, ws->trk_hdr_len)) {
            ws->trk_left = hdr_payload(ws->trk_hdr);
            ws->trk_carry = carried_kind(ws->trk_hdr, ws->trk_hdr_len);
            ws->trk_hdr_len = 0;
        }
    }
    int in_hdr = ws->trk_hdr_len > 0 && carried_kind(ws->trk_hdr, ws->trk_hdr_len);
    /* A frame to carry starts in this buffer: its first byte was carried
     * (in_hdr) whenever a read ended right after it. */
    int in_ctrl = ws->trk_hdr_len == 0 && ws->trk_left > 0 && ws->trk_carry;
    if (!in_hdr && !in_ctrl)
        return n;
    /* Not handed over: wslay will see the frame whole, from the carry. */
    ws->trk_hdr_len = 0;
    ws->trk_left = 0;
    return start;
}

/* The size of the control frame in carry once its header is known, else 0. */
static size_t carry_need(const surpool__ws *ws)
{
    size_t h = hdr_need(ws->carry, ws->carry_len);
    if (ws->carry_len < h)
        return 0;
    return h + (size_t)hdr_payload(ws->carry);
}

static surpool__ws_rc frames_recv(surpool__ws *ws, const unsigned char *in, size_t len)
{
    size_t pos = 0;
    if (ws->carry_len > 0) {
        /* First complete the control frame whose start waits in carry. */
        size_t need = carry_need(ws);
        int kind = 1;
        while (pos < len && (need == 0 || ws->carry_len < need) && kind) {
            ws->carry[ws->carry_len++] = in[pos++];
            kind = carried_kind(ws->carry, ws->carry_len);
            if (need == 0)
                need = carry_need(ws);
        }
        if (kind && (need == 0 || ws->carry_len < need))
            return SURPOOL__WS_OK; /* all of `in` is in carry */
        size_t n = ws->carry_len;
        ws->carry_len = 0;
        if (!kind)
            (void)track(ws, ws->carry, n); /* not carried after all: wslay refuses it */
        surpool__ws_rc rc = feed(ws, ws->carry, n);
        if (rc != SURPOOL__WS_OK)
            return rc;
    }
    size_t now = track(ws, in + pos, len - pos);
    surpool__ws_rc rc = feed(ws, in + pos, now);
    if (rc != SURPOOL__WS_OK)
        return rc;
    ws->carry_len = len - pos - now; /* a control frame's start: at most 14 + 125 bytes */
    memcpy(ws->carry, in + pos + now, ws->carry_len);
    return SURPOOL__WS_OK;
}

surpool__ws_rc surpool__ws_handshake(surpool__ws *ws, const unsigned char *in, size_t len,
                                     size_t *used)
{
    *used = 0;
    if (ws->phase == PH_DONE)
        return ws->done_rc;
    if (ws->phase == PH_OPEN)
        return SURPOOL__WS_OPEN;
    return hs_recv(ws, in, len, used);
}

surpool__ws_rc surpool__ws_recv(surpool__ws *ws, const unsigned char *in, size_t len)
{
    if (ws->phase == PH_DONE)
        return ws->done_rc;
    if (ws->phase != PH_OPEN) {
        snprintf(ws->err, sizeof(ws->err), "frames before the upgrade was accepted");
        return finish(ws, SURPOOL__WS_PROTOCOL);
    }
    return frames_recv(ws, in, len);
}

int surpool__ws_ping(surpool__ws *ws)
{
    struct wslay_event_msg m = {.opcode = WSLAY_PING, .msg = NULL, .msg_length = 0};
    if (ws->phase != PH_OPEN || wslay_event_queue_msg(ws->ev, &m) != 0)
        return -1;
    return flush(ws);
}

int surpool__ws_send(surpool__ws *ws, int binary, const void *p, size_t n)
{
    struct wslay_event_msg m = {
        .opcode = binary ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME,
        .msg = p,
        .msg_length = n,
    };
    if (ws->phase != PH_OPEN || wslay_event_queue_msg(ws->ev, &m) != 0)
        return -1;
    return flush(ws);
}

void surpool__ws_close(surpool__ws *ws, int code, const char *reason)
{
    if (ws->phase == PH_HANDSHAKE) {
        ws->phase = PH_DONE; /* no frames before the upgrade: just drop the socket */
        ws->done_rc = SURPOOL__WS_STOPPED;
        return;
    }
    char r[124]; /* a close frame's body is at most 125 bytes, 2 of them the code */
    surpool__strlcpy(r, reason != NULL ? reason : "", sizeof(r));
    size_t rl = surpool__utf8_trim(r);
    if (wslay_event_queue_close(ws->ev, (uint16_t)code, (const uint8_t *)r, rl) == 0)
        flush(ws);
}

int surpool__ws_close_queued(const surpool__ws *ws)
{
    return wslay_event_get_close_sent(ws->ev);
}

unsigned surpool__ws_status(const surpool__ws *ws)
{
    return ws->status;
}

const char *surpool__ws_error(const surpool__ws *ws)
{
    return ws->err;
}

int surpool__ws_peer_close(const surpool__ws *ws, const char **reason)
{
    *reason = ws->peer_reason;
    return ws->peer_code;
}
