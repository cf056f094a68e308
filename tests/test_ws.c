/*
 * Unit tests for src/ws.c, the client side of the WebSocket protocol, with no
 * network: the server's answers and frames are built by hand here, fed to
 * surpool__ws_handshake / surpool__ws_recv, and what comes out (data callback
 * pieces, return codes, the output bytes: our request, masked frames) is
 * checked against RFC 6455.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "ws.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_MSGS 64

/* ---- the data callback: records pieces, checks their order -------------- */

typedef struct {
    unsigned char *data; /* every piece's bytes, in order */
    size_t len, cap;
    size_t msg_end[MAX_MSGS]; /* where each complete message ended in `data` */
    int msg_binary[MAX_MSGS];
    int nmsg;
    int pieces, in_msg, cur_binary;
    int bad;        /* pieces out of order: first/final/binary flags inconsistent */
    char why[120];  /* what was out of order */
    int stop_at;    /* return -1 on this piece (0-based); -1 never */
    int after_stop; /* pieces delivered after we returned -1 */
    int stopped;
} coll;

static void coll_init(coll *c)
{
    memset(c, 0, sizeof(*c));
    c->stop_at = -1;
}

static void coll_free(coll *c)
{
    free(c->data);
    c->data = NULL;
}

static void coll_bad(coll *c, const char *why)
{
    if (!c->bad)
        snprintf(c->why, sizeof(c->why), "piece %d: %s", c->pieces, why);
    c->bad = 1;
}

/* Append n bytes to a growing buffer (*buf, *len, *cap). */
static void append(unsigned char **buf, size_t *len, size_t *cap, const void *p, size_t n)
{
    if (*len + n > *cap) {
        size_t nc = *cap ? *cap : 256;
        while (nc < *len + n)
            nc *= 2;
        *buf = realloc(*buf, nc);
        assert_non_null(*buf);
        *cap = nc;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
}

static int on_data(void *ud, const unsigned char *p, size_t n, int first, int final, int binary)
{
    coll *c = ud;
    if (c->stopped)
        c->after_stop++;
    if (first && c->in_msg)
        coll_bad(c, "first piece while a message is open");
    if (!first && !c->in_msg)
        coll_bad(c, "not first, but no message is open");
    if (first) {
        c->in_msg = 1;
        c->cur_binary = binary;
    } else if (binary != c->cur_binary) {
        coll_bad(c, "binary flag changed inside a message");
    }
    if (n > 0)
        append(&c->data, &c->len, &c->cap, p, n);
    if (final) {
        if (c->nmsg < MAX_MSGS) {
            c->msg_end[c->nmsg] = c->len;
            c->msg_binary[c->nmsg] = c->cur_binary;
        }
        c->nmsg++;
        c->in_msg = 0;
    }
    int piece = c->pieces++;
    if (piece == c->stop_at) {
        c->stopped = 1;
        return -1;
    }
    return 0;
}

/* Message i's bytes. */
static const unsigned char *coll_msg(const coll *c, int i, size_t *n)
{
    size_t start = i == 0 ? 0 : c->msg_end[i - 1];
    *n = c->msg_end[i] - start;
    return c->data + start;
}

/* ---- building server frames --------------------------------------------- */

/* A frame from the server: first byte b0 (FIN, RSV, opcode), unmasked, the
 * shortest length encoding. Returns its size; `out` must have n + 14 bytes. */
static size_t mkframe(unsigned char *out, unsigned b0, const void *p, size_t n)
{
    size_t h = 0;
    out[h++] = (unsigned char)b0;
    if (n < 126) {
        out[h++] = (unsigned char)n;
    } else if (n < 65536) {
        out[h++] = 126;
        out[h++] = (unsigned char)(n >> 8);
        out[h++] = (unsigned char)n;
    } else {
        out[h++] = 127;
        for (int i = 7; i >= 0; i--)
            out[h++] = (unsigned char)((uint64_t)n >> (8 * i));
    }
    if (n > 0)
        memcpy(out + h, p, n);
    return h + n;
}

#define FIN 0x80u
#define OP_CONT 0x0u
#define OP_TEXT 0x1u
#define OP_BIN 0x2u
#define OP_CLOSE 0x8u
#define OP_PING 0x9u
#define OP_PONG 0xAu

/* A growing byte string. */
typedef struct {
    unsigned char *p;
    size_t n, cap;
} bytes;

static void bytes_add(bytes *b, const void *p, size_t n)
{
    append(&b->p, &b->n, &b->cap, p, n);
}

static void bytes_frame(bytes *b, unsigned b0, const void *p, size_t n)
{
    unsigned char *f = malloc(n + 14);
    assert_non_null(f);
    size_t fl = mkframe(f, b0, p, n);
    bytes_add(b, f, fl);
    free(f);
}

/* ---- reading our output --------------------------------------------------- */

typedef struct {
    int fin, rsv, opcode, masked;
    unsigned char *payload; /* unmasked, malloc'd (NULL when empty) */
    size_t len;
    int len_bytes; /* 0: 7-bit length, 2: 16-bit, 8: 64-bit */
} cframe;

/* Decode one client frame at p[0..n): bytes used, or 0 when incomplete. */
static size_t decode_frame(const unsigned char *p, size_t n, cframe *f)
{
    memset(f, 0, sizeof(*f));
    if (n < 2)
        return 0;
    f->fin = p[0] >> 7;
    f->rsv = (p[0] >> 4) & 7;
    f->opcode = p[0] & 0xF;
    f->masked = p[1] >> 7;
    uint64_t len = p[1] & 0x7F;
    size_t h = 2;
    if (len == 126) {
        if (n < 4)
            return 0;
        len = ((uint64_t)p[2] << 8) | p[3];
        h = 4;
        f->len_bytes = 2;
    } else if (len == 127) {
        if (n < 10)
            return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | p[2 + i];
        h = 10;
        f->len_bytes = 8;
    }
    const unsigned char *key = NULL;
    if (f->masked) {
        if (n < h + 4)
            return 0;
        key = p + h;
        h += 4;
    }
    if (n - h < len)
        return 0;
    f->len = (size_t)len;
    if (len > 0) {
        f->payload = malloc(f->len);
        assert_non_null(f->payload);
        for (size_t i = 0; i < f->len; i++)
            f->payload[i] = p[h + i] ^ (key != NULL ? key[i % 4] : 0);
    }
    return h + f->len;
}

/* Every frame in the output (all of it must be whole frames, all masked);
 * marks the output written. Returns the number of frames. */
static int take_output(surpool__ws *ws, cframe *fs, int max)
{
    unsigned char *p;
    size_t n = surpool__ws_output(ws, &p);
    int k = 0;
    size_t off = 0;
    while (off < n) {
        assert_true(k < max);
        size_t used = decode_frame(p + off, n - off, &fs[k]);
        assert_true(used > 0); /* a whole frame */
        assert_true(fs[k].masked);
        off += used;
        k++;
    }
    surpool__ws_written(ws, n);
    return k;
}

static void free_frames(cframe *fs, int n)
{
    for (int i = 0; i < n; i++)
        free(fs[i].payload);
}

static size_t output_len(surpool__ws *ws)
{
    unsigned char *p;
    return surpool__ws_output(ws, &p);
}

/* ---- the handshake ------------------------------------------------------- */

#define HOST "db.example:8000"
#define PATH "/rpc"

/* The request in the output, as a string (malloc'd); marks it written. */
static char *take_request(surpool__ws *ws)
{
    unsigned char *p;
    size_t n = surpool__ws_output(ws, &p);
    assert_true(n > 0);
    char *s = malloc(n + 1);
    assert_non_null(s);
    memcpy(s, p, n);
    s[n] = '\0';
    surpool__ws_written(ws, n);
    assert_int_equal(output_len(ws), 0);
    return s;
}

/* The value of header `name` in request `req` (exact case, as we send it). */
static int req_header(const char *req, const char *name, char *out, size_t outsz)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\r\n%s: ", name);
    const char *v = strstr(req, pat);
    if (v == NULL)
        return 0;
    v += strlen(pat);
    const char *e = strstr(v, "\r\n");
    assert_non_null(e);
    size_t n = (size_t)(e - v);
    assert_true(n < outsz);
    memcpy(out, v, n);
    out[n] = '\0';
    return 1;
}

/* The Sec-WebSocket-Accept that answers `key` (RFC 6455 section 4.2.2). */
static void accept_for(const char *key, char out[29])
{
    char cat[128];
    unsigned char sha[SHA_DIGEST_LENGTH];
    int n = snprintf(cat, sizeof(cat), "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    SHA1((const unsigned char *)cat, (size_t)n, sha);
    EVP_EncodeBlock((unsigned char *)out, sha, sizeof(sha));
}

/* A new ws that has sent its request; `accept` gets the right answer key. */
static surpool__ws *ws_started(coll *c, char accept[29])
{
    surpool__ws *ws = surpool__ws_new(on_data, c, 16);
    assert_non_null(ws);
    assert_int_equal(surpool__ws_start(ws, HOST, PATH, "cbor"), 0);
    char *req = take_request(ws);
    char key[64];
    assert_true(req_header(req, "Sec-WebSocket-Key", key, sizeof(key)));
    accept_for(key, accept);
    free(req);
    return ws;
}

/* `tmpl` with every "{A}" replaced by `accept`, every "{a}" by `accept` with
 * its letters' case swapped (malloc'd). */
static char *fill(const char *tmpl, const char *accept)
{
    char *out = malloc(strlen(tmpl) * (strlen(accept) + 1) + 1), *o = out;
    assert_non_null(out);
    for (const char *s = tmpl; *s != '\0';) {
        if (strncmp(s, "{A}", 3) == 0) {
            o += sprintf(o, "%s", accept);
            s += 3;
        } else if (strncmp(s, "{a}", 3) == 0) {
            for (const char *a = accept; *a != '\0'; a++)
                *o++ = *a >= 'a' && *a <= 'z'   ? (char)(*a - 32)
                       : *a >= 'A' && *a <= 'Z' ? (char)(*a + 32)
                                                : *a;
            s += 3;
        } else {
            *o++ = *s++;
        }
    }
    *o = '\0';
    return out;
}

static const char GOOD_ANSWER[] = "HTTP/1.1 101 Switching Protocols\r\n"
                                  "Upgrade: websocket\r\n"
                                  "Connection: Upgrade\r\n"
                                  "Sec-WebSocket-Accept: {A}\r\n"
                                  "Sec-WebSocket-Protocol: cbor\r\n"
                                  "\r\n";

/* A ws past a good handshake, output empty. */
static surpool__ws *ws_open(coll *c)
{
    char accept[29];
    surpool__ws *ws = ws_started(c, accept);
    char *ans = fill(GOOD_ANSWER, accept);
    size_t used = 99;
    assert_int_equal(surpool__ws_handshake(ws, (const unsigned char *)ans, strlen(ans), &used),
                     SURPOOL__WS_OPEN);
    assert_int_equal(used, strlen(ans));
    free(ans);
    return ws;
}

static surpool__ws_rc feed(surpool__ws *ws, const bytes *b)
{
    return surpool__ws_recv(ws, b->p, b->n);
}

/* ---- 1. the request and a good answer ------------------------------------ */

static void request_and_open(void **state)
{
    (void)state;
    coll c;
    coll_init(&c);
    surpool__ws *ws = surpool__ws_new(on_data, &c, 16);
    assert_non_null(ws);
    assert_int_equal(surpool__ws_start(ws, HOST, "/rpc?x=1", "cbor"), 0);
    char *req = take_request(ws);

    assert_true(strncmp(req, "GET /rpc?x=1 HTTP/1.1\r\n", 23) == 0);
    size_t rl = strlen(req);
    assert_true(rl >= 4 && strcmp(req + rl - 4, "\r\n\r\n") == 0);
    assert_true(strstr(req, "\r\n\r\n") == req + rl - 4); /* one blank line, at the end */
    char v[128];
    assert_true(req_header(req, "Host", v, sizeof(v)));
    assert_string_equal(v, HOST);
    assert_true(req_header(req, "Upgrade", v, sizeof(v)));
    assert_string_equal(v, "websocket");
    assert_true(req_header(req, "Connection", v, sizeof(v)));
    assert_string_equal(v, "Upgrade");
    assert_true(req_header(req, "Sec-WebSocket-Version", v, sizeof(v)));
    assert_string_equal(v, "13");
    assert_true(req_header(req, "Sec-WebSocket-Protocol", v, sizeof(v)));
    assert_string_equal(v, "cbor");
    char key[64];
    assert_true(req_header(req, "Sec-WebSocket-Key", key, sizeof(key)));
    /* The key is 16 bytes, base64: 24 characters ending in "==". */
    unsigned char raw[32];
    assert_int_equal(strlen(key), 24);
    assert_int_equal(EVP_DecodeBlock(raw, (const unsigned char *)key, 24), 18);
    assert_true(key[22] == '=' && key[23] == '=');
    free(req);

    /* The answer, then a frame in the same read: the frame is left over. */
    char accept[29];
    accept_for(key, accept);
    char *ans = fill(GOOD_ANSWER, accept);
    size_t al = strlen(ans);
    bytes in = {0};
    bytes_add(&in, ans, al);
    bytes_frame(&in, FIN | OP_BIN, "tail", 4);

    /* One byte at a time: OK (each byte taken) until the last byte of the
     * answer, then OPEN. */
    for (size_t i = 0; i + 1 < al; i++) {
        size_t used = 99;
        assert_int_equal(surpool__ws_handshake(ws, in.p + i, 1, &used), SURPOOL__WS_OK);
        assert_int_equal(used, 1);
    }
    size_t used = 99;
    assert_int_equal(surpool__ws_handshake(ws, in.p + al - 1, in.n - (al - 1), &used),
                     SURPOOL__WS_OPEN);
    assert_int_equal(used, 1);
    assert_int_equal(output_len(ws), 0);

    /* The rest is a frame. */
    assert_int_equal(surpool__ws_recv(ws, in.p + al, in.n - al), SURPOOL__WS_OK);
    assert_int_equal(c.nmsg, 1);
    assert_int_equal(c.len, 4);
    assert_memory_equal(c.data, "tail", 4);
    assert_false(c.bad);

    free(in.p);
    free(ans);
    surpool__ws_free(ws);
    coll_free(&c);
}

/* The whole answer and frames in one read: used stops at the blank line. */
static void answer_with_frames_in_one_read(void **state)
{
    (void)state;
    coll c;
    coll_init(&c);
    char accept[29];
    surpool__ws *ws = ws_started(&c, accept);
    char *ans = fill(GOOD_ANSWER, accept);
    size_t al = strlen(ans);
    bytes in = {0};
    bytes_add(&in, ans, al);
    bytes_frame(&in, FIN | OP_TEXT, "hello", 5);
    size_t used = 0;
    assert_int_equal(surpool__ws_handshake(ws, in.p, in.n, &used), SURPOOL__WS_OPEN);
    assert_int_equal(used, al);
    assert_true(used < in.n);
    assert_int_equal(surpool__ws_recv(ws, in.p + used, in.n - used), SURPOOL__WS_OK);
    assert_int_equal(c.nmsg, 1);
    assert_memory_equal(c.data, "hello", 5);
    assert_int_equal(c.msg_binary[0], 0);
    /* Once open, the handshake takes nothing more. */
    assert_int_equal(surpool__ws_handshake(ws, in.p, in.n, &used), SURPOOL__WS_OPEN);
    assert_int_equal(used, 0);
    free(in.p);
    free(ans);
    surpool__ws_free(ws);
    coll_free(&c);
}

/* ---- 2. answers that are refused ------------------------------------------ */

typedef struct {
    const char *name;
    const char *answer; /* "{A}" is the right Sec-WebSocket-Accept */
    surpool__ws_rc rc;
    const char *err; /* a substring of surpool__ws_error(), or NULL */
} hs_case;

static const hs_case HS_CASES[] = {
    {"404", "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", SURPOOL__WS_REFUSED,
     "404 Not Found"},
    {"wrong accept",
     "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Accept: dGhlIHNhbXBsZSBub25jZQ==AAAA\r\nSec-WebSocket-Protocol: "
     "cbor\r\n\r\n",
     SURPOOL__WS_PROTOCOL, "wrong Sec-WebSocket-Accept"},
    {"accept with a byte more",
     "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Accept: {A}x\r\nSec-WebSocket-Protocol: cbor\r\n\r\n",
     SURPOOL__WS_PROTOCOL, "wrong Sec-WebSocket-Accept"},
    {"accept in other case",
     "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Accept: {a}\r\nSec-WebSocket-Protocol: cbor\r\n\r\n",
     SURPOOL__WS_PROTOCOL, "wrong Sec-WebSocket-Accept"},
    {"missing accept",
     "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Protocol: cbor\r\n\r\n",
     SURPOOL__WS_PROTOCOL, "missing Sec-WebSocket-Accept"},
    {"missing Upgrade",
     "HTTP/1.1 101 OK\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {A}\r\n"
     "Sec-WebSocket-Protocol: cbor\r\n\r\n",
     SURPOOL__WS_PROTOCOL, "without 'Upgrade: websocket'"},
    {"Upgrade: h2c",
     "HTTP/1.1 101 OK\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {A}\r\n"
     "Sec-WebSocket-Protocol: cbor\r\n\r\n",
     SURPOOL__WS_PROTOCOL, "without 'Upgrade: websocket'"},
    {"missing Connection",
     "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {A}\r\n"
     "Sec-WebSocket-Protocol: cbor\r\n\r\n",
     SURPOOL__WS_PROTOCOL, "without 'Connection: Upgrade'"},
    {"Connection: keep-alive",
     "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n"
     "Sec-WebSocket-Accept: {A}\r\nSec-WebSocket-Protocol: cbor\r\n\r\n",
     SURPOOL__WS_PROTOCOL, "without 'Connection: Upgrade'"},
    {"Connection: Upgrades",
     "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrades\r\n"
     "Sec-WebSocket-Accept: {A}\r\nSec-WebSocket-Protocol: cbor\r\n\r\n",
     SURPOOL__WS_PROTOCOL, "without 'Connection: Upgrade'"},
    {"Connection: keep-alive, Upgrade",
     "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
     "Sec-WebSocket-Accept: {A}\r\nSec-WebSocket-Protocol: cbor\r\n\r\n",
     SURPOOL__WS_OPEN, NULL},
    {"extensions",
     "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Accept: {A}\r\nSec-WebSocket-Protocol: cbor\r\n"
     "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
     SURPOOL__WS_PROTOCOL, "extensions 'permessage-deflate'"},
    {"other subprotocol",
     "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Accept: {A}\r\nSec-WebSocket-Protocol: json\r\n\r\n",
     SURPOOL__WS_PROTOCOL, "did not accept WebSocket subprotocol 'cbor' (answered 'json')"},
    {"no subprotocol",
     "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Accept: {A}\r\n\r\n",
     SURPOOL__WS_PROTOCOL, "did not accept WebSocket subprotocol 'cbor' (answered none)"},
    {"not HTTP", "SSH-2.0-OpenSSH_9.2\r\n\r\n", SURPOOL__WS_PROTOCOL, "not HTTP"},
    {"no status code", "HTTP/1.1 OK\r\n\r\n", SURPOOL__WS_PROTOCOL, "not HTTP"},
    {"NUL byte", "HTTP/1.1 101 OK\r\nUpgrade: web\0socket\r\n\r\n", SURPOOL__WS_PROTOCOL,
     "NUL byte"},
    {"broken header line",
     "HTTP/1.1 101 OK\r\nUpgrade websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Accept: {A}\r\nSec-WebSocket-Protocol: cbor\r\n\r\n",
     SURPOOL__WS_PROTOCOL, "broken header line"},
    {"header names in any case",
     "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nCONNECTION: UPGRADE\r\n"
     "sec-websocket-accept: {A}\r\nSEC-WEBSOCKET-PROTOCOL: cbor\r\nX-Other: 1\r\n\r\n",
     SURPOOL__WS_OPEN, NULL},
    {"spaces around values",
     "HTTP/1.1 101 OK\r\nUpgrade:websocket  \r\nConnection: \tUpgrade\t\r\n"
     "Sec-WebSocket-Accept:   {A}  \r\nSec-WebSocket-Protocol: cbor \r\n\r\n",
     SURPOOL__WS_OPEN, NULL},
};

/* The answer's length: "NUL byte" holds a NUL, so count to the blank line. */
static size_t answer_len(const char *s)
{
    size_t n = 0;
    while (memcmp(s + n, "\r\n\r\n", 4) != 0)
        n++;
    return n + 4;
}

static void handshake_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(HS_CASES); i++) {
        const hs_case *t = &HS_CASES[i];
        coll c;
        coll_init(&c);
        char accept[29];
        surpool__ws *ws = ws_started(&c, accept);
        /* fill() stops at a NUL: the "NUL byte" case has no {A}, copy it. */
        size_t al = answer_len(t->answer);
        char *ans;
        int templated = strstr(t->answer, "{A}") != NULL || strstr(t->answer, "{a}") != NULL;
        if (templated) {
            ans = fill(t->answer, accept);
        } else {
            ans = malloc(al);
            assert_non_null(ans);
            memcpy(ans, t->answer, al);
        }
        if (templated)
            al = strlen(ans);
        size_t used = 0;
        surpool__ws_rc rc = surpool__ws_handshake(ws, (const unsigned char *)ans, al, &used);
        if (rc != t->rc)
            fail_msg("%s: rc %d, want %d (error '%s')", t->name, (int)rc, (int)t->rc,
                     surpool__ws_error(ws));
        if (t->err != NULL && strstr(surpool__ws_error(ws), t->err) == NULL)
            fail_msg("%s: error '%s' lacks '%s'", t->name, surpool__ws_error(ws), t->err);
        if (rc == SURPOOL__WS_REFUSED)
            assert_int_equal(surpool__ws_status(ws), 404);
        if (rc != SURPOOL__WS_OPEN) {
            /* Terminal: the same answer again, nothing taken. */
            assert_int_equal(surpool__ws_handshake(ws, (const unsigned char *)ans, al, &used),
                             rc);
            assert_int_equal(used, 0);
            assert_int_equal(surpool__ws_recv(ws, (const unsigned char *)"\x82\x01x", 3), rc);
            assert_int_equal(c.pieces, 0);
            assert_int_equal(surpool__ws_send(ws, 1, "x", 1), -1);
        }
        free(ans);
        surpool__ws_free(ws);
        coll_free(&c);
    }
}

/* The answer's headers may take 16 KiB, not a byte more (and a server that
 * sends more is stopped before its blank line arrives). */
static void handshake_size_limit(void **state)
{
    (void)state;
    static const char head[] =
        "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: {A}\r\nSec-WebSocket-Protocol: cbor\r\n"
        "X-Pad: ";
    for (int over = 0; over <= 1; over++) {
        coll c;
        coll_init(&c);
        char accept[29];
        surpool__ws *ws = ws_started(&c, accept);
        char *h = fill(head, accept);
        size_t hl = strlen(h);
        size_t total = 16384 + (size_t)over;
        char *ans = malloc(total);
        assert_non_null(ans);
        memcpy(ans, h, hl);
        memset(ans + hl, 'a', total - hl - 4);
        memcpy(ans + total - 4, "\r\n\r\n", 4);
        size_t used = 0;
        surpool__ws_rc rc = surpool__ws_handshake(ws, (unsigned char *)ans, total, &used);
        if (!over) {
            assert_int_equal(rc, SURPOOL__WS_OPEN);
            assert_int_equal(used, total);
        } else {
            assert_int_equal(rc, SURPOOL__WS_PROTOCOL);
            assert_non_null(strstr(surpool__ws_error(ws), "exceed 16384"));
        }
        free(ans);
        free(h);
        surpool__ws_free(ws);
        coll_free(&c);
    }

    /* Endless headers, never a blank line: refused once past the limit. */
    coll c;
    coll_init(&c);
    char accept[29];
    surpool__ws *ws = ws_started(&c, accept);
    static const char line[] = "X-Pad: aaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    size_t used = 0;
    surpool__ws_rc rc =
        surpool__ws_handshake(ws, (const unsigned char *)"HTTP/1.1 101 OK\r\n", 17, &used);
    assert_int_equal(rc, SURPOOL__WS_OK);
    size_t fed = 17;
    while (rc == SURPOOL__WS_OK && fed < 20000) {
        rc = surpool__ws_handshake(ws, (const unsigned char *)line, sizeof(line) - 1, &used);
        fed += sizeof(line) - 1;
    }
    assert_int_equal(rc, SURPOOL__WS_PROTOCOL);
    assert_true(fed > 16384 && fed < 16384 + sizeof(line));
    surpool__ws_free(ws);
    coll_free(&c);
}

/* ---- 3. data frames ------------------------------------------------------- */

static unsigned char *pattern(size_t n, unsigned seed)
{
    unsigned char *p = malloc(n ? n : 1);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 131u + seed + (i >> 8));
    return p;
}

/* One unfragmented message of each length encoding: the pieces concatenate
 * to the payload, first on the first piece only, final on the last only. */
static void frame_lengths(void **state)
{
    (void)state;
    static const size_t sizes[] = {0, 1, 125, 126, 300, 65535, 65536, 70000};
    for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
        for (int binary = 0; binary <= 1; binary++) {
            coll c;
            coll_init(&c);
            surpool__ws *ws = ws_open(&c);
            size_t n = sizes[i];
            unsigned char *pl = pattern(n, (unsigned)i);
            if (!binary)
                for (size_t k = 0; k < n; k++)
                    pl[k] = (unsigned char)('a' + k % 26); /* valid UTF-8 */
            bytes in = {0};
            bytes_frame(&in, FIN | (binary ? OP_BIN : OP_TEXT), pl, n);
            assert_int_equal(in.n, n + (n < 126 ? 2 : n < 65536 ? 4 : 10));
            assert_int_equal(feed(ws, &in), SURPOOL__WS_OK);
            if (c.bad)
                fail_msg("size %zu: %s", n, c.why);
            assert_false(c.in_msg);
            assert_int_equal(c.nmsg, 1);
            assert_int_equal(c.msg_binary[0], binary);
            assert_int_equal(c.len, n);
            if (n > 0)
                assert_memory_equal(c.data, pl, n);
            assert_int_equal(output_len(ws), 0);
            free(in.p);
            free(pl);
            surpool__ws_free(ws);
            coll_free(&c);
        }
    }
}

/* A data frame larger than 2 GiB is the transport's to judge (against
 * max_message_bytes: TOO_LARGE, or taken when allowed): ws.c passes its
 * pieces on like any other. wslay's own default limit (2^31 - 1 bytes)
 * refused it with close 1009 (PROTOCOL "a frame too large"). */
static void huge_frame_header(void **state)
{
    (void)state;
    coll c;
    coll_init(&c);
    surpool__ws *ws = ws_open(&c);
    uint64_t n = (uint64_t)3 << 30;
    unsigned char in[10 + 5] = {FIN | OP_BIN, 127};
    for (int i = 0; i < 8; i++)
        in[2 + i] = (unsigned char)(n >> (56 - 8 * i));
    memcpy(in + 10, "abcde", 5);
    surpool__ws_rc rc = surpool__ws_recv(ws, in, sizeof(in));
    if (rc != SURPOOL__WS_OK)
        fail_msg("rc %d: %s", (int)rc, surpool__ws_error(ws));
    assert_false(c.bad);
    assert_int_equal(c.len, 5);
    assert_memory_equal(c.data, "abcde", 5);
    assert_true(c.in_msg);
    assert_int_equal(output_len(ws), 0); /* no close frame */
    surpool__ws_free(ws);
    coll_free(&c);
}

/* binary "abc" (not final), a ping, continuation "def", continuation "gh"
 * (final): one message "abcdefgh", and a masked pong with the ping's payload. */
static void fragmented_with_ping(void **state)
{
    (void)state;
    coll c;
    coll_init(&c);
    surpool__ws *ws = ws_open(&c);
    bytes in = {0};
    bytes_frame(&in, OP_BIN, "abc", 3);
    bytes_frame(&in, FIN | OP_PING, "are you there", 13);
    bytes_frame(&in, OP_CONT, "def", 3);
    bytes_frame(&in, FIN | OP_CONT, "gh", 2);
    assert_int_equal(feed(ws, &in), SURPOOL__WS_OK);
    if (c.bad)
        fail_msg("%s", c.why);
    assert_int_equal(c.nmsg, 1);
    assert_int_equal(c.msg_binary[0], 1);
    assert_int_equal(c.len, 8);
    assert_memory_equal(c.data, "abcdefgh", 8);
    assert_true(c.pieces >= 3);

    cframe f[4];
    int nf = take_output(ws, f, 4);
    assert_int_equal(nf, 1);
    assert_int_equal(f[0].opcode, OP_PONG);
    assert_true(f[0].fin);
    assert_int_equal(f[0].rsv, 0);
    assert_int_equal(f[0].len, 13);
    assert_memory_equal(f[0].payload, "are you there", 13);
    free_frames(f, nf);

    /* A text message in fragments, after it. */
    free(in.p);
    memset(&in, 0, sizeof(in));
    bytes_frame(&in, OP_TEXT, "h\xC3", 2); /* "hé" split inside the é */
    bytes_frame(&in, FIN | OP_PONG, NULL, 0);
    bytes_frame(&in, FIN | OP_CONT, "\xA9!", 2);
    assert_int_equal(feed(ws, &in), SURPOOL__WS_OK);
    assert_false(c.bad);
    assert_int_equal(c.nmsg, 2);
    assert_int_equal(c.msg_binary[1], 0);
    size_t n;
    const unsigned char *m = coll_msg(&c, 1, &n);
    assert_int_equal(n, 4);
    assert_memory_equal(m, "h\xC3\xA9!", 4);
    assert_int_equal(output_len(ws), 0); /* a pong is not answered */

    free(in.p);
    surpool__ws_free(ws);
    coll_free(&c);
}

/* A stream of messages fed in pieces of many sizes (1 byte included) gives
 * the same messages as the stream fed at once. */
static void split_reads(void **state)
{
    (void)state;
    bytes in = {0};
    unsigned char *big = pattern(70000, 7), *mid = pattern(300, 3);
    bytes_frame(&in, FIN | OP_BIN, "one", 3);
    bytes_frame(&in, FIN | OP_BIN, mid, 300);
    bytes_frame(&in, OP_BIN, big, 5000);
    bytes_frame(&in, FIN | OP_PING, "p", 1);
    bytes_frame(&in, OP_CONT, big + 5000, 0);
    bytes_frame(&in, FIN | OP_CONT, big + 5000, 65000);
    bytes_frame(&in, FIN | OP_TEXT, "\xE2\x82\xAC uro", 7);
    bytes_frame(&in, FIN | OP_BIN, big, 70000);
    bytes_frame(&in, FIN | OP_BIN, NULL, 0);

    coll whole;
    coll_init(&whole);
    surpool__ws *ws = ws_open(&whole);
    assert_int_equal(feed(ws, &in), SURPOOL__WS_OK);
    assert_false(whole.bad);
    assert_int_equal(whole.nmsg, 6);
    size_t n;
    const unsigned char *m = coll_msg(&whole, 2, &n);
    assert_int_equal(n, 70000);
    assert_memory_equal(m, big, 70000);
    cframe f[4];
    int nf = take_output(ws, f, 4);
    assert_int_equal(nf, 1);
    free_frames(f, nf);
    surpool__ws_free(ws);

    static const size_t step_sets[][6] = {
        {1, 1, 1, 1, 1, 1},
        {1, 2, 3, 7, 1, 4096},
        {5000, 1, 13, 2, 9000, 3},
        {2, 4097, 1, 1, 126, 65537},
    };
    for (size_t s = 0; s < ARRAY_LEN(step_sets); s++) {
        coll c;
        coll_init(&c);
        ws = ws_open(&c);
        size_t off = 0, k = 0;
        while (off < in.n) {
            size_t step = step_sets[s][k++ % 6];
            if (step > in.n - off)
                step = in.n - off;
            assert_int_equal(surpool__ws_recv(ws, in.p + off, step), SURPOOL__WS_OK);
            off += step;
        }
        if (c.bad)
            fail_msg("steps %zu: %s", s, c.why);
        assert_int_equal(c.nmsg, whole.nmsg);
        assert_int_equal(c.len, whole.len);
        assert_memory_equal(c.data, whole.data, whole.len);
        for (int i = 0; i < whole.nmsg; i++) {
            assert_int_equal(c.msg_end[i], whole.msg_end[i]);
            assert_int_equal(c.msg_binary[i], whole.msg_binary[i]);
        }
        nf = take_output(ws, f, 4);
        assert_int_equal(nf, 1);
        assert_int_equal(f[0].opcode, OP_PONG);
        assert_int_equal(f[0].len, 1);
        free_frames(f, nf);
        surpool__ws_free(ws);
        coll_free(&c);
    }
    free(big);
    free(mid);
    free(in.p);
    coll_free(&whole);
}

/* A zero-length final frame ends a message; an empty message is one piece. */
static void zero_length_frames(void **state)
{
    (void)state;
    coll c;
    coll_init(&c);
    surpool__ws *ws = ws_open(&c);
    bytes in = {0};
    bytes_frame(&in, OP_BIN, "abc", 3);
    bytes_frame(&in, OP_CONT, NULL, 0);
    bytes_frame(&in, FIN | OP_CONT, NULL, 0);
    assert_int_equal(feed(ws, &in), SURPOOL__WS_OK);
    assert_false(c.bad);
    assert_int_equal(c.nmsg, 1);
    assert_int_equal(c.len, 3);
    assert_false(c.in_msg);

    /* An empty binary message: one piece, first and final, no bytes. (A text
     * message ends with a piece of its own, once wslay has checked its UTF-8.) */
    int before = c.pieces;
    free(in.p);
    memset(&in, 0, sizeof(in));
    bytes_frame(&in, FIN | OP_BIN, NULL, 0);
    assert_int_equal(feed(ws, &in), SURPOOL__WS_OK);
    assert_false(c.bad);
    assert_int_equal(c.nmsg, 2);
    assert_int_equal(c.pieces, before + 1);
    assert_int_equal(c.msg_end[1], 3);
    assert_int_equal(c.msg_binary[1], 1);

    /* An empty first fragment, then the bytes. */
    free(in.p);
    memset(&in, 0, sizeof(in));
    bytes_frame(&in, OP_BIN, NULL, 0);
    bytes_frame(&in, FIN | OP_CONT, "xy", 2);
    assert_int_equal(feed(ws, &in), SURPOOL__WS_OK);
    assert_false(c.bad);
    assert_int_equal(c.nmsg, 3);
    assert_int_equal(c.msg_end[2], 5);
    assert_int_equal(c.msg_binary[2], 1);

    free(in.p);
    surpool__ws_free(ws);
    coll_free(&c);
}

/* ---- 4. the server closes ------------------------------------------------- */

static void check_close_answer(surpool__ws *ws)
{
    cframe f[4];
    int nf = take_output(ws, f, 4);
    assert_int_equal(nf, 1);
    assert_int_equal(f[0].opcode, OP_CLOSE);
    assert_true(f[0].fin);
    assert_true(f[0].len == 0 || f[0].len >= 2);
    free_frames(f, nf);
    assert_true(surpool__ws_close_queued(ws));
}

static void server_close(void **state)
{
    (void)state;
    coll c;
    coll_init(&c);
    surpool__ws *ws = ws_open(&c);
    bytes in = {0};
    bytes_frame(&in, FIN | OP_BIN, "before", 6);
    bytes_frame(&in, FIN | OP_CLOSE,
                "\x0F\xA0"
                "bye",
                5); /* 4000 */
    bytes_frame(&in, FIN | OP_BIN, "after", 5);
    assert_false(surpool__ws_close_queued(ws));
    assert_int_equal(feed(ws, &in), SURPOOL__WS_CLOSED);
    const char *reason = NULL;
    assert_int_equal(surpool__ws_peer_close(ws, &reason), 4000);
    assert_string_equal(reason, "bye");
    assert_int_equal(c.nmsg, 1); /* "before", not "after" */
    assert_int_equal(c.len, 6);
    check_close_answer(ws);

    /* Closed for good: nothing more is read, nothing can be sent. */
    int pieces = c.pieces;
    assert_int_equal(feed(ws, &in), SURPOOL__WS_CLOSED);
    assert_int_equal(c.pieces, pieces);
    assert_int_equal(output_len(ws), 0);
    assert_int_equal(surpool__ws_send(ws, 1, "x", 1), -1);
    assert_int_equal(surpool__ws_ping(ws), -1);
    free(in.p);
    surpool__ws_free(ws);
    coll_free(&c);

    /* No code: 1005, no reason. */
    coll_init(&c);
    ws = ws_open(&c);
    memset(&in, 0, sizeof(in));
    bytes_frame(&in, FIN | OP_CLOSE, NULL, 0);
    assert_int_equal(feed(ws, &in), SURPOOL__WS_CLOSED);
    assert_int_equal(surpool__ws_peer_close(ws, &reason), 1005);
    assert_string_equal(reason, "");
    check_close_answer(ws);
    free(in.p);
    surpool__ws_free(ws);
    coll_free(&c);

    /* A reason with a control character is made printable. */
    coll_init(&c);
    ws = ws_open(&c);
    memset(&in, 0, sizeof(in));
    bytes_frame(&in, FIN | OP_CLOSE,
                "\x03\xE8"
                "a\nb",
                5); /* 1000 */
    assert_int_equal(feed(ws, &in), SURPOOL__WS_CLOSED);
    assert_int_equal(surpool__ws_peer_close(ws, &reason), 1000);
    assert_string_equal(reason, "a\\nb");
    free(in.p);
    surpool__ws_free(ws);
    coll_free(&c);
}

/* We close first: our close frame goes out, then the server's answer. */
static void client_close(void **state)
{
    (void)state;
    coll c;
    coll_init(&c);
    surpool__ws *ws = ws_open(&c);
    surpool__ws_close(ws, 1000, "done");
    assert_true(surpool__ws_close_queued(ws));
    cframe f[4];
    int nf = take_output(ws, f, 4);
    assert_int_equal(nf, 1);
    assert_int_equal(f[0].opcode, OP_CLOSE);
    assert_int_equal(f[0].len, 6);
    assert_memory_equal(f[0].payload,
                        "\x03\xE8"
                        "done",
                        6);
    free_frames(f, nf);
    assert_int_equal(surpool__ws_send(ws, 0, "late", 4), -1);
    assert_int_equal(surpool__ws_ping(ws), -1);
    surpool__ws_close(ws, 1001, NULL); /* once only */
    assert_int_equal(output_len(ws), 0);

    /* Data still in flight is read; the server's close ends it. */
    bytes in = {0};
    bytes_frame(&in, FIN | OP_BIN, "in flight", 9);
    assert_int_equal(feed(ws, &in), SURPOOL__WS_OK);
    assert_int_equal(c.nmsg, 1);
    free(in.p);
    memset(&in, 0, sizeof(in));
    bytes_frame(&in, FIN | OP_BIN, "late reply", 10);
    bytes_frame(&in, FIN | OP_PING, "x", 1);
    bytes_frame(&in, FIN | OP_CLOSE, "\x03\xE8", 2);
    assert_int_equal(feed(ws, &in), SURPOOL__WS_CLOSED);
    assert_int_equal(c.nmsg, 2);
    assert_int_equal(output_len(ws), 0); /* no pong, no second close after ours */
    free(in.p);
    surpool__ws_free(ws);

    /* Closing during the handshake just ends it. */
    char accept[29];
    ws = ws_started(&c, accept);
    surpool__ws_close(ws, 1000, NULL);
    size_t used = 9;
    assert_int_not_equal(
        surpool__ws_handshake(ws, (const unsigned char *)"HTTP/1.1 ", 9, &used),
        SURPOOL__WS_OK);
    assert_int_equal(used, 0);
    surpool__ws_free(ws);
    coll_free(&c);
}

/* ---- 5. protocol errors --------------------------------------------------- */

typedef struct {
    const char *name;
    const char *bytes; /* after an open handshake */
    size_t len;
    const char *err; /* substring of surpool__ws_error(), or NULL */
    int code;        /* the code in our close frame; 0: any (or none) */
    int data_pieces; /* pieces delivered before the error */
} proto_case;

#define B(s) s, sizeof(s) - 1

static const proto_case PROTO_CASES[] = {
    {"masked frame",
     B("\x82\x83\x01\x02\x03\x04"
       "abc"),
     NULL, 1002, 0},
    {"reserved opcode 3", B("\x83\x01x"), NULL, 1002, 0},
    {"reserved control opcode 11", B("\x8B\x00"), NULL, 1002, 0},
    {"RSV1", B("\xC2\x01x"), NULL, 1002, 0},
    {"RSV2", B("\xA2\x01x"), NULL, 1002, 0},
    {"RSV3", B("\x92\x01x"), NULL, 1002, 0},
    {"control frame of 126 bytes", B("\x89\x7E\x00\x7E"), NULL, 0, 0},
    {"fragmented ping", B("\x09\x00"), NULL, 0, 0},
    {"continuation without start", B("\x80\x01x"), NULL, 1002, 0},
    {"text not UTF-8",
     B("\x81\x03"
       "a\xFF"
       "b"),
     "UTF-8", 1007, 0},
    {"text with a UTF-16 surrogate", B("\x81\x03\xED\xA0\x80"), "UTF-8", 1007, 0},
    {"new message inside a fragmented one",
     B("\x02\x01"
       "a\x82\x01"
       "b"),
     NULL, 1002, 1},
    {"16-bit length under 126",
     B("\x82\x7E\x00\x05"
       "abcde"),
     NULL, 0, 0},
    {"64-bit length under 65536", B("\x82\x7F\x00\x00\x00\x00\x00\x00\x01\x00"), NULL, 0, 0},
    {"64-bit length with the top bit", B("\x82\x7F\x80\x00\x00\x00\x00\x00\x00\x00"), NULL, 0,
     0},
    {"close code 1005", B("\x88\x02\x03\xED"), NULL, 1002, 0},
    {"close code 999", B("\x88\x02\x03\xE7"), NULL, 1002, 0},
    {"close reason not UTF-8", B("\x88\x03\x03\xE8\xFF"), "UTF-8", 1007, 0},
};

static void protocol_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(PROTO_CASES); i++) {
        const proto_case *t = &PROTO_CASES[i];
        coll c;
        coll_init(&c);
        surpool__ws *ws = ws_open(&c);
        bytes in = {0};
        bytes_add(&in, t->bytes, t->len);
        if (strcmp(t->name, "control frame of 126 bytes") == 0) {
            unsigned char pad[126];
            memset(pad, 'p', sizeof(pad));
            bytes_add(&in, pad, sizeof(pad));
        }
        surpool__ws_rc rc = feed(ws, &in);
        if (rc != SURPOOL__WS_PROTOCOL)
            fail_msg("%s: rc %d, want PROTOCOL", t->name, (int)rc);
        const char *e = surpool__ws_error(ws);
        if (e[0] == '\0' || (t->err != NULL && strstr(e, t->err) == NULL))
            fail_msg("%s: error '%s', want '%s'", t->name, e, t->err ? t->err : "(any)");
        if (c.pieces != t->data_pieces)
            fail_msg("%s: %d data pieces, want %d", t->name, c.pieces, t->data_pieces);
        assert_false(c.bad);
        assert_int_equal(c.nmsg, 0);

        /* Our close frame is in the output. */
        assert_true(surpool__ws_close_queued(ws));
        cframe f[4];
        int nf = take_output(ws, f, 4);
        if (nf != 1 || f[0].opcode != OP_CLOSE)
            fail_msg("%s: %d frames out, first opcode %d", t->name, nf,
                     nf > 0 ? f[0].opcode : -1);
        assert_true(f[0].len == 0 || f[0].len >= 2);
        if (t->code != 0) {
            int code = f[0].len >= 2 ? (f[0].payload[0] << 8) | f[0].payload[1] : 0;
            if (code != t->code)
                fail_msg("%s: close code %d, want %d", t->name, code, t->code);
        }
        free_frames(f, nf);

        /* Terminal: the same again, nothing read, nothing sent. */
        int pieces = c.pieces;
        assert_int_equal(surpool__ws_recv(ws, (const unsigned char *)"\x82\x01x", 3),
                         SURPOOL__WS_PROTOCOL);
        assert_int_equal(c.pieces, pieces);
        assert_int_equal(output_len(ws), 0);
        assert_int_equal(surpool__ws_send(ws, 1, "x", 1), -1);
        free(in.p);
        surpool__ws_free(ws);
        coll_free(&c);
    }
}

/* Frames before the handshake is done are refused, not parsed. */
static void recv_before_open(void **state)
{
    (void)state;
    coll c;
    coll_init(&c);
    char accept[29];
    surpool__ws *ws = ws_started(&c, accept);
    assert_int_equal(surpool__ws_recv(ws, (const unsigned char *)"\x82\x01x", 3),
                     SURPOOL__WS_PROTOCOL);
    assert_int_equal(c.pieces, 0);
    assert_int_equal(surpool__ws_send(ws, 1, "x", 1), -1);
    assert_int_equal(surpool__ws_ping(ws), -1);
    surpool__ws_free(ws);
    coll_free(&c);
}

/* ---- 6. the data callback stops reading ----------------------------------- */

static void callback_stops(void **state)
{
    (void)state;
    coll c;
    coll_init(&c);
    c.stop_at = 1; /* the second message's piece */
    surpool__ws *ws = ws_open(&c);
    bytes in = {0};
    bytes_frame(&in, FIN | OP_BIN, "one", 3);
    bytes_frame(&in, FIN | OP_BIN, "two", 3);
    bytes_frame(&in, FIN | OP_BIN, "three", 5);
    assert_int_equal(feed(ws, &in), SURPOOL__WS_STOPPED);
    assert_int_equal(c.pieces, 2);
    assert_int_equal(c.after_stop, 0);
    assert_int_equal(surpool__ws_recv(ws, in.p, in.n), SURPOOL__WS_STOPPED);
    assert_int_equal(c.pieces, 2);
    assert_int_equal(surpool__ws_send(ws, 1, "x", 1), -1);
    /* The transport then closes with a code of its choosing. */
    assert_int_equal(output_len(ws), 0);
    surpool__ws_close(ws, 1011, NULL);
    assert_true(surpool__ws_close_queued(ws));
    cframe f[2];
    int nf = take_output(ws, f, 2);
    assert_int_equal(nf, 1);
    assert_int_equal(f[0].opcode, OP_CLOSE);
    assert_int_equal(f[0].len, 2);
    assert_memory_equal(f[0].payload, "\x03\xF3", 2);
    free_frames(f, nf);
    free(in.p);
    surpool__ws_free(ws);
    coll_free(&c);

    /* Stopped on a piece of a large frame read in several pieces. */
    coll_init(&c);
    c.stop_at = 0;
    ws = ws_open(&c);
    unsigned char *big = pattern(70000, 1);
    memset(&in, 0, sizeof(in));
    bytes_frame(&in, FIN | OP_BIN, big, 70000);
    assert_int_equal(feed(ws, &in), SURPOOL__WS_STOPPED);
    assert_int_equal(c.pieces, 1);
    assert_int_equal(c.after_stop, 0);
    assert_int_equal(surpool__ws_recv(ws, in.p, in.n), SURPOOL__WS_STOPPED);
    assert_int_equal(c.pieces, 1);
    free(big);
    free(in.p);
    surpool__ws_free(ws);
    coll_free(&c);
}

/* ---- 7. sending ----------------------------------------------------------- */

static void send_frames(void **state)
{
    (void)state;
    coll c;
    coll_init(&c);
    surpool__ws *ws = ws_open(&c);
    static const struct {
        size_t n;
        int binary, len_bytes;
    } sends[] = {{10, 1, 0},  {300, 0, 2}, {70000, 1, 8}, {0, 0, 0},
                 {125, 0, 0}, {126, 1, 2}, {65535, 1, 2}, {65536, 0, 8}};
    unsigned char *pl[ARRAY_LEN(sends)];
    for (size_t i = 0; i < ARRAY_LEN(sends); i++) {
        pl[i] = pattern(sends[i].n, (unsigned)i + 1);
        assert_int_equal(surpool__ws_send(ws, sends[i].binary, pl[i], sends[i].n), 0);
    }
    /* The transport's headroom is in front of the output (ASan checks it). */
    unsigned char *p;
    assert_true(surpool__ws_output(ws, &p) > 0);
    memset(p - 16, 0xEE, 16);

    cframe f[ARRAY_LEN(sends) + 1];
    int nf = take_output(ws, f, (int)ARRAY_LEN(f));
    assert_int_equal(nf, ARRAY_LEN(sends));
    for (size_t i = 0; i < ARRAY_LEN(sends); i++) {
        assert_true(f[i].fin);
        assert_int_equal(f[i].rsv, 0);
        assert_true(f[i].masked);
        assert_int_equal(f[i].opcode, sends[i].binary ? OP_BIN : OP_TEXT);
        assert_int_equal(f[i].len_bytes, sends[i].len_bytes);
        assert_int_equal(f[i].len, sends[i].n);
        if (sends[i].n > 0)
            assert_memory_equal(f[i].payload, pl[i], sends[i].n);
        free(pl[i]);
    }
    free_frames(f, nf);
    assert_int_equal(output_len(ws), 0);
    surpool__ws_free(ws);
    coll_free(&c);
}

/* surpool__ws_written(n < len) keeps the rest, in order. */
static void partial_writes(void **state)
{
    (void)state;
    coll c;
    coll_init(&c);
    surpool__ws *ws = ws_open(&c);
    unsigned char *pl = pattern(300, 9);
    assert_int_equal(surpool__ws_send(ws, 1, pl, 300), 0);
    assert_int_equal(surpool__ws_send(ws, 0, "tail", 4), 0);
    unsigned char *p;
    size_t n = surpool__ws_output(ws, &p);
    assert_int_equal(n, 4 + 4 + 300 + 2 + 4 + 4);
    unsigned char *all = malloc(n);
    assert_non_null(all);
    memcpy(all, p, n);

    /* Write it in pieces of 1, 7, 100, ... and check each is what remained. */
    static const size_t steps[] = {1, 7, 100, 3, 200};
    size_t off = 0;
    for (size_t k = 0; off < n; k++) {
        size_t left = surpool__ws_output(ws, &p);
        assert_int_equal(left, n - off);
        assert_memory_equal(p, all + off, left);
        size_t w = steps[k % ARRAY_LEN(steps)];
        if (w > left)
            w = left;
        surpool__ws_written(ws, w);
        off += w;
    }
    assert_int_equal(output_len(ws), 0);

    cframe f[2];
    size_t u = decode_frame(all, n, &f[0]);
    assert_true(u > 0);
    assert_true(f[0].masked);
    assert_int_equal(f[0].len, 300);
    assert_memory_equal(f[0].payload, pl, 300);
    assert_int_equal(decode_frame(all + u, n - u, &f[1]), n - u);
    assert_int_equal(f[1].opcode, OP_TEXT);
    assert_memory_equal(f[1].payload, "tail", 4);
    free_frames(f, 2);

    /* After close: no more sends, close queued. */
    surpool__ws_close(ws, 1000, NULL);
    assert_true(surpool__ws_close_queued(ws));
    assert_int_equal(surpool__ws_send(ws, 1, pl, 10), -1);
    cframe cf[2];
    int nf = take_output(ws, cf, 2);
    assert_int_equal(nf, 1);
    assert_int_equal(cf[0].opcode, OP_CLOSE);
    assert_int_equal(cf[0].len, 2);
    assert_memory_equal(cf[0].payload, "\x03\xE8", 2);
    free_frames(cf, nf);

    free(all);
    free(pl);
    surpool__ws_free(ws);

    /* A big output written in two goes (its buffer is then given back), and
     * the next frame still comes out behind the headroom. */
    ws = ws_open(&c);
    size_t bn = 300000;
    unsigned char *big = pattern(bn, 5);
    assert_int_equal(surpool__ws_send(ws, 1, big, bn), 0);
    n = surpool__ws_output(ws, &p);
    assert_int_equal(n, 2 + 8 + 4 + bn);
    surpool__ws_written(ws, 1000);
    assert_int_equal(output_len(ws), n - 1000);
    surpool__ws_written(ws, n - 1000);
    assert_int_equal(output_len(ws), 0);
    assert_int_equal(surpool__ws_send(ws, 0, "next", 4), 0);
    assert_int_equal(surpool__ws_output(ws, &p), 2 + 4 + 4);
    memset(p - 16, 0xEE, 16);
    nf = take_output(ws, cf, 2);
    assert_int_equal(nf, 1);
    assert_memory_equal(cf[0].payload, "next", 4);
    free_frames(cf, nf);
    free(big);
    surpool__ws_free(ws);
    coll_free(&c);
}

/* ---- 8. ping -------------------------------------------------------------- */

static void ping(void **state)
{
    (void)state;
    coll c;
    coll_init(&c);
    surpool__ws *ws = ws_open(&c);
    assert_int_equal(surpool__ws_ping(ws), 0);
    unsigned char *p;
    assert_int_equal(surpool__ws_output(ws, &p), 6); /* 2 + mask */
    assert_int_equal(p[0], FIN | OP_PING);
    assert_int_equal(p[1], 0x80); /* masked, empty */
    cframe f[2];
    int nf = take_output(ws, f, 2);
    assert_int_equal(nf, 1);
    assert_int_equal(f[0].len, 0);
    /* The server's pong is taken quietly. */
    assert_int_equal(surpool__ws_recv(ws, (const unsigned char *)"\x8A\x00", 2),
                     SURPOOL__WS_OK);
    assert_int_equal(c.pieces, 0);
    assert_int_equal(output_len(ws), 0);
    surpool__ws_free(ws);
    coll_free(&c);
}

/* A text message whose last frame ends inside a UTF-8 sequence never reaches
 * the data callback as a final piece (wslay checks the sequence is complete
 * after its chunk callback; ws.c ends text messages after that check). */
static void truncated_utf8_final(void **state)
{
    (void)state;
    coll c;
    coll_init(&c);
    surpool__ws *ws = ws_open(&c);
    assert_int_equal(surpool__ws_recv(ws,
                                      (const unsigned char *)"\x81\x02"
                                                             "a\xC3",
                                      4),
                     SURPOOL__WS_PROTOCOL);
    assert_int_equal(c.nmsg, 0);
    surpool__ws_free(ws);
    coll_free(&c);
}

/* `s` fed to a fresh open state in two reads split at k: it must end with
 * `want` after one message. The state is returned for more checks. */
static surpool__ws *split_at(coll *c, const unsigned char *s, size_t n, size_t k,
                             surpool__ws_rc want)
{
    coll_init(c);
    surpool__ws *ws = ws_open(c);
    surpool__ws_rc rc = surpool__ws_recv(ws, s, k);
    if (rc == SURPOOL__WS_OK)
        rc = surpool__ws_recv(ws, s + k, n - k);
    assert_int_equal(rc, want);
    assert_int_equal(c->nmsg, 1);
    return ws;
}

/* wslay 1.1.1 UTF-8-checks a close reason from byte 2 of each piece it reads,
 * not of the payload: ws.c hands it control frames whole, so a valid close
 * (4000, "é") split after its third byte is still CLOSED. */
static void split_close(void **state)
{
    (void)state;
    coll c;
    coll_init(&c);
    surpool__ws *ws = ws_open(&c);
    static const unsigned char fr[] = {0x88, 0x04, 0x0F, 0xA0, 0xC3, 0xA9};
    assert_int_equal(surpool__ws_recv(ws, fr, 3), SURPOOL__WS_OK);
    assert_int_equal(surpool__ws_recv(ws, fr + 3, 3), SURPOOL__WS_CLOSED);
    surpool__ws_free(ws);
    coll_free(&c);

    /* A message then that close, and then a control frame wslay refuses at
     * its header (not FIN, RSV bits, opcode 0xC): each split in two at every
     * byte ends as it does whole. */
    static const unsigned char s1[] = {0x82, 0x03, 'a',  'b',  'c', 0x88,
                                       0x04, 0x0F, 0xA0, 0xC3, 0xA9};
    static const unsigned char s2[] = {0x82, 0x01, 'a', 0x6C, 0x65, 'n', 0x03, 0, 0, 0, 0xFF};
    for (size_t k = 0; k <= sizeof(s1); k++) {
        ws = split_at(&c, s1, sizeof(s1), k, SURPOOL__WS_CLOSED);
        const char *reason;
        assert_int_equal(surpool__ws_peer_close(ws, &reason), 4000);
        assert_string_equal(reason, "\xC3\xA9");
        surpool__ws_free(ws);
        coll_free(&c);
    }
    for (size_t k = 0; k <= sizeof(s2); k++) {
        surpool__ws_free(split_at(&c, s2, sizeof(s2), k, SURPOOL__WS_PROTOCOL));
        coll_free(&c);
    }
}

/* A close frame with a 1-byte payload is a protocol error (RFC 6455 5.5.1: a
 * body starts with a 2-byte code); wslay 1.1.1 takes it, ws.c refuses it. */
static void close_one_byte(void **state)
{
    (void)state;
    coll c;
    coll_init(&c);
    surpool__ws *ws = ws_open(&c);
    assert_int_equal(surpool__ws_recv(ws, (const unsigned char *)"\x88\x01\x03", 3),
                     SURPOOL__WS_PROTOCOL);
    surpool__ws_free(ws);
    coll_free(&c);
}

/* The status code is exactly three digits: "HTTP/1.1 1011" is not 101 (a
 * sscanf("%3u") read it as 101). */
static void status_digits(void **state)
{
    (void)state;
    coll c;
    coll_init(&c);
    char accept[29];
    surpool__ws *ws = ws_started(&c, accept);
    char *ans = fill("HTTP/1.1 1011 X\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: {A}\r\nSec-WebSocket-Protocol: cbor\r\n\r\n",
                     accept);
    size_t used;
    assert_int_not_equal(surpool__ws_handshake(ws, (unsigned char *)ans, strlen(ans), &used),
                         SURPOOL__WS_OPEN);
    free(ans);
    surpool__ws_free(ws);
    coll_free(&c);
}

/* A reason over 123 bytes is cut (wslay would refuse it and queue no close
 * frame at all). */
static void close_long_reason(void **state)
{
    (void)state;
    coll c;
    coll_init(&c);
    surpool__ws *ws = ws_open(&c);
    char reason[200];
    memset(reason, 'r', 150);
    reason[150] = '\0';
    surpool__ws_close(ws, 1000, reason);
    assert_true(surpool__ws_close_queued(ws));
    surpool__ws_free(ws);
    coll_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(request_and_open),
        cmocka_unit_test(answer_with_frames_in_one_read),
        cmocka_unit_test(handshake_cases),
        cmocka_unit_test(handshake_size_limit),
        cmocka_unit_test(frame_lengths),
        cmocka_unit_test(huge_frame_header),
        cmocka_unit_test(fragmented_with_ping),
        cmocka_unit_test(split_reads),
        cmocka_unit_test(zero_length_frames),
        cmocka_unit_test(server_close),
        cmocka_unit_test(client_close),
        cmocka_unit_test(protocol_errors),
        cmocka_unit_test(recv_before_open),
        cmocka_unit_test(callback_stops),
        cmocka_unit_test(send_frames),
        cmocka_unit_test(partial_writes),
        cmocka_unit_test(ping),
        cmocka_unit_test(truncated_utf8_final),
        cmocka_unit_test(split_close),
        cmocka_unit_test(close_one_byte),
        cmocka_unit_test(status_digits),
        cmocka_unit_test(close_long_reason),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
