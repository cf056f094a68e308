/*
 * libFuzzer harness for the WebSocket protocol (src/ws.c): arbitrary bytes as
 * the server's side of a connection, fed to surpool__ws_handshake and then
 * surpool__ws_recv in pieces whose sizes the input chooses, checking:
 *  - nothing crashes or leaks; every return code is one the call may give;
 *  - the handshake takes whole pieces while it waits (OK), never more than
 *    it was given, and hands the rest to recv after OPEN;
 *  - after a terminal code every later call returns the same code, takes
 *    nothing and calls no data callback;
 *  - data pieces are well formed: `first` opens a message and only then,
 *    `final` closes it, `binary` stays the same inside it; text delivered is
 *    never broken UTF-8 so far, and a text message that ends broken ends the
 *    read with PROTOCOL; after the callback returns -1, no more pieces and
 *    recv returns STOPPED;
 *  - our output is whole masked frames with valid opcodes, nothing after a
 *    close frame; a message we send comes out as itself;
 *  - the pieces change nothing: the stream fed again at once (no stop, no
 *    sends) gives the same messages, opens at the same byte and ends with
 *    the same code, close code and reason, and error text.
 *  - a text message is never ended (final piece) with broken UTF-8.
 *
 * The accept key is random, so with bit 0 of the first byte set the harness
 * answers the upgrade correctly itself and the rest of the input is frames.
 *
 * Input: [flags][stop piece][seed lo][seed hi] then the server's bytes.
 *   flags bit 0: a correct 101 answer goes first;
 *         bit 1: the answer and the frames reach the handshake in one stream
 *                (else the answer alone, then the frames to recv);
 *         bits 2-3: piece sizes: whole / 1 byte / 1-16 / 1-5000;
 *         bit 4: between pieces, send a message and a ping, close at the end;
 *         bit 5: the data callback returns -1 on piece number `stop piece`;
 *         bit 6: write the output in partial amounts.
 *
 *   CC=clang cmake -S . -B build/fuzz -DSURPOOL_BUILD_FUZZERS=ON && \
 *   cmake --build build/fuzz --target fuzz_ws && build/fuzz/fuzz/fuzz_ws fuzz/corpus/ws
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "ws.h"

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "fuzz_ws.c:%d: check failed: %s\n", __LINE__, #cond);              \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

/* ---- UTF-8 (Bjoern Hoehrmann's DFA, as wslay checks) ---------------------- */

enum { U_ACCEPT = 0, U_REJECT = 1, U_MORE = 2 };

/* The state after byte b: U_ACCEPT, U_REJECT or U_MORE with `need` bytes to go. */
static int utf8_step(int *need, unsigned *lo, unsigned *hi, unsigned char b)
{
    if (*need == 0) {
        *lo = 0x80;
        *hi = 0xBF;
        if (b < 0x80)
            return U_ACCEPT;
        if (b >= 0xC2 && b <= 0xDF)
            *need = 1;
        else if (b == 0xE0)
            *need = 2, *lo = 0xA0;
        else if (b == 0xED)
            *need = 2, *hi = 0x9F;
        else if (b >= 0xE1 && b <= 0xEF)
            *need = 2;
        else if (b == 0xF0)
            *need = 3, *lo = 0x90;
        else if (b == 0xF4)
            *need = 3, *hi = 0x8F;
        else if (b >= 0xF1 && b <= 0xF3)
            *need = 3;
        else
            return U_REJECT;
        return U_MORE;
    }
    if (b < *lo || b > *hi)
        return U_REJECT;
    *lo = 0x80;
    *hi = 0xBF;
    return --*need == 0 ? U_ACCEPT : U_MORE;
}

/* ---- the data callback ---------------------------------------------------- */

typedef struct {
    int pieces;
    int in_msg, binary;
    int stop_at;         /* -1: never */
    int stopped;         /* we returned -1 */
    int closed_for_good; /* a terminal code was returned: no callback allowed */
    int u_need;
    unsigned u_lo, u_hi;
    int text_ended_broken; /* a text message ended inside a sequence this call */
    /* Completed messages, for comparing two runs: how many, and a hash of
     * each one's type, length and bytes in order. */
    unsigned char *cur; /* the open message's bytes so far (room for the input) */
    size_t cur_len, cur_cap;
    int msgs;
    uint64_t hash;
} state;

static void hash_add(uint64_t *h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        *h = (*h ^ b[i]) * 0x100000001B3ull; /* FNV-1a */
}

static int on_data(void *ud, const unsigned char *p, size_t n, int first, int final, int binary)
{
    state *s = ud;
    CHECK(!s->closed_for_good);
    CHECK(!s->stopped);
    CHECK(p != NULL || n == 0);
    CHECK(first == 0 || first == 1);
    CHECK(final == 0 || final == 1);
    CHECK(binary == 0 || binary == 1);
    if (first) {
        CHECK(!s->in_msg);
        s->in_msg = 1;
        s->binary = binary;
        s->u_need = 0;
        s->cur_len = 0;
    } else {
        CHECK(s->in_msg);
        CHECK(binary == s->binary);
    }
    if (!binary) {
        int u = U_ACCEPT;
        for (size_t i = 0; i < n; i++) {
            u = utf8_step(&s->u_need, &s->u_lo, &s->u_hi, p[i]);
            CHECK(u != U_REJECT); /* wslay refuses a piece before handing it on */
        }
        if (final && s->u_need != 0)
            s->text_ended_broken = 1;
    }
    CHECK(n <= s->cur_cap - s->cur_len); /* a payload is never longer than the input */
    if (n > 0)
        memcpy(s->cur + s->cur_len, p, n);
    s->cur_len += n;
    if (final) {
        s->in_msg = 0;
        unsigned char hdr[9] = {(unsigned char)binary};
        for (int i = 0; i < 8; i++)
            hdr[1 + i] = (unsigned char)((uint64_t)s->cur_len >> (8 * i));
        hash_add(&s->hash, hdr, sizeof(hdr));
        hash_add(&s->hash, s->cur, s->cur_len);
        s->msgs++;
    }
    if (s->pieces++ == s->stop_at) {
        s->stopped = 1;
        return -1;
    }
    return 0;
}

/* ---- our output ------------------------------------------------------------ */

typedef struct {
    int close_seen; /* a close frame went out: nothing may follow */
    size_t checked; /* bytes at the start of the output already checked */
} outstate;

/* Decode one frame at p[0..n): its size, or 0 when incomplete. Payload
 * unmasked into `pl` (room for `plmax` bytes; the rest is not kept). */
static size_t out_frame(const unsigned char *p, size_t n, int *opcode, unsigned char *pl,
                        size_t plmax, size_t *len)
{
    if (n < 2)
        return 0;
    CHECK((p[0] & 0x70) == 0); /* no RSV bits */
    CHECK(p[1] & 0x80);        /* masked */
    *opcode = p[0] & 0xF;
    uint64_t l = p[1] & 0x7F;
    size_t h = 2;
    if (l == 126) {
        if (n < 4)
            return 0;
        l = ((uint64_t)p[2] << 8) | p[3];
        CHECK(l >= 126);
        h = 4;
    } else if (l == 127) {
        if (n < 10)
            return 0;
        l = 0;
        for (int i = 0; i < 8; i++)
            l = (l << 8) | p[2 + i];
        CHECK(l >= 65536 && l < (1ull << 63));
        h = 10;
    }
    if (n < h + 4 || n - h - 4 < l)
        return 0;
    const unsigned char *key = p + h;
    h += 4;
    for (size_t i = 0; i < l && i < plmax; i++)
        pl[i] = p[h + i] ^ key[i % 4];
    *len = (size_t)l;
    return h + (size_t)l;
}

/* Check the new output is whole frames; write all of it, or `part` bytes. */
static void drain(surpool__ws *ws, outstate *o, size_t part)
{
    unsigned char *p;
    size_t n = surpool__ws_output(ws, &p);
    CHECK(n >= o->checked);
    if (n == 0)
        return;
    CHECK(p != NULL);
    size_t off = o->checked;
    unsigned char pl[125];
    while (off < n) {
        int op;
        size_t len;
        size_t u = out_frame(p + off, n - off, &op, pl, sizeof(pl), &len);
        CHECK(u != 0); /* frames go into the output whole */
        CHECK(!o->close_seen);
        CHECK(op == 0x1 || op == 0x2 || op == 0x8 || op == 0x9 || op == 0xA);
        if (op >= 0x8)
            CHECK(len <= 125);
        if (op == 0x8) {
            CHECK(len == 0 || len >= 2);
            o->close_seen = 1;
        }
        off += u;
    }
    size_t w = part != 0 && part < n ? part : n;
    surpool__ws_written(ws, w);
    o->checked = n - w;
    CHECK(surpool__ws_output(ws, &p) == n - w);
}

/* ---- the handshake ---------------------------------------------------------- */

static size_t good_answer(surpool__ws *ws, char *ans, size_t cap)
{
    unsigned char *p;
    size_t n = surpool__ws_output(ws, &p);
    CHECK(n > 0 && n < 1024);
    char req[1024];
    memcpy(req, p, n);
    req[n] = '\0';
    surpool__ws_written(ws, n);
    const char *k = strstr(req, "\r\nSec-WebSocket-Key: ");
    CHECK(k != NULL);
    k += strlen("\r\nSec-WebSocket-Key: ");
    char cat[128];
    int cl = snprintf(cat, sizeof(cat), "%.24s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", k);
    unsigned char sha[SHA_DIGEST_LENGTH];
    char accept[32];
    SHA1((const unsigned char *)cat, (size_t)cl, sha);
    EVP_EncodeBlock((unsigned char *)accept, sha, sizeof(sha));
    int al = snprintf(ans, cap,
                      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n"
                      "Sec-WebSocket-Protocol: cbor\r\n\r\n",
                      accept);
    CHECK(al > 0 && (size_t)al < cap);
    return (size_t)al;
}

static int is_terminal(surpool__ws_rc rc)
{
    return rc != SURPOOL__WS_OK && rc != SURPOOL__WS_OPEN;
}

/* After `rc` was returned: what must hold. */
static void check_terminal(surpool__ws *ws, state *s, surpool__ws_rc rc)
{
    if (rc == SURPOOL__WS_PROTOCOL)
        CHECK(surpool__ws_error(ws)[0] != '\0');
    if (rc == SURPOOL__WS_REFUSED) {
        CHECK(surpool__ws_status(ws) != 101);
        CHECK(surpool__ws_error(ws)[0] != '\0');
    }
    if (rc == SURPOOL__WS_STOPPED)
        CHECK(s->stopped);
    if (rc == SURPOOL__WS_CLOSED) {
        const char *reason = NULL;
        int code = surpool__ws_peer_close(ws, &reason);
        CHECK(reason != NULL && strlen(reason) < 124);
        CHECK(code == 1005 || (code >= 1000 && code <= 4999));
        for (const char *r = reason; *r != '\0'; r++)
            CHECK((unsigned char)*r >= 0x20 && *r != 0x7F);
    }
    s->closed_for_good = 1;
    static const unsigned char more[] = {0x82, 0x01, 'x', 0x81, 0x00};
    size_t used = 7;
    CHECK(surpool__ws_handshake(ws, more, sizeof(more), &used) == rc);
    CHECK(used == 0);
    CHECK(surpool__ws_recv(ws, more, sizeof(more)) == rc);
    CHECK(surpool__ws_send(ws, 1, "x", 1) == -1);
}

/* ---- the run ------------------------------------------------------------------ */

static uint32_t next(uint32_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

/* What a run ended with, to compare two runs of the same input. */
typedef struct {
    surpool__ws_rc rc; /* the last code returned */
    size_t open_at;    /* where in the stream the answer ended; 0: not open */
    int msgs;          /* completed messages and their hash */
    uint64_t hash;
    int peer_code; /* after CLOSED */
    char reason[124];
    char error[200];
} outcome;

/* Feed the server's stream `in` to a new ws in the pieces `flags` say (see
 * the top of the file), checking the invariants on the way. */
static void run(const unsigned char *data, size_t size, unsigned flags, int stop_at,
                uint32_t seed, outcome *res)
{
    state s = {.stop_at = stop_at};
    memset(res, 0, sizeof(*res));
    surpool__ws *ws = surpool__ws_new(on_data, &s, 8);
    CHECK(ws != NULL);
    outstate o = {0};
    CHECK(surpool__ws_start(ws, "db.example:8000", "/rpc", "cbor") == 0);
    char ans[512];
    size_t al = good_answer(ws, ans, sizeof(ans));

    /* The server's stream, and where the frames start when we answer. */
    unsigned char *in = malloc(al + size + 1);
    CHECK(in != NULL);
    size_t n = 0, frames_at = 0;
    if (flags & 1) {
        memcpy(in, ans, al);
        n = frames_at = al;
    }
    memcpy(in + n, data, size);
    n += size;
    s.cur_cap = n + 1;
    s.cur = malloc(s.cur_cap);
    CHECK(s.cur != NULL);

    int open = 0;
    surpool__ws_rc last = SURPOOL__WS_OK;
    size_t off = 0;
    /* The answer alone first: it must open. */
    if ((flags & 3) == 1) {
        size_t used = 0;
        last = surpool__ws_handshake(ws, in, al, &used);
        CHECK(last == SURPOOL__WS_OPEN && used == al);
        open = 1;
        res->open_at = al;
        last = SURPOOL__WS_OK;
        off = al;
    }
    int sends = 0;
    while (off < n && !is_terminal(last)) {
        size_t piece;
        switch ((flags >> 2) & 3) {
        case 0: piece = n - off; break;
        case 1: piece = 1; break;
        case 2: piece = 1 + next(&seed) % 16; break;
        default: piece = 1 + next(&seed) % 5000; break;
        }
        if (piece > n - off)
            piece = n - off;
        if (!open) {
            size_t used = 12345;
            last = surpool__ws_handshake(ws, in + off, piece, &used);
            CHECK(used <= piece);
            CHECK(last == SURPOOL__WS_OK || last == SURPOOL__WS_OPEN ||
                  last == SURPOOL__WS_REFUSED || last == SURPOOL__WS_PROTOCOL ||
                  last == SURPOOL__WS_NOMEM);
            if (last == SURPOOL__WS_OK)
                CHECK(used == piece);
            if (last != SURPOOL__WS_OPEN) {
                off += piece;
                continue;
            }
            /* Our own answer ends exactly where the frames start. */
            if (flags & 1)
                CHECK(off + used == frames_at);
            open = 1;
            off += used;
            res->open_at = off;
            piece -= used;
            last = SURPOOL__WS_OK;
            if (piece == 0)
                continue;
        }
        s.text_ended_broken = 0;
        int pieces_before = s.pieces;
        last = surpool__ws_recv(ws, in + off, piece);
        CHECK(last == SURPOOL__WS_OK || last == SURPOOL__WS_PROTOCOL ||
              last == SURPOOL__WS_CLOSED || last == SURPOOL__WS_STOPPED ||
              last == SURPOOL__WS_NOMEM);
        if (s.stopped)
            CHECK(last == SURPOOL__WS_STOPPED);
        if (last == SURPOOL__WS_STOPPED)
            CHECK(s.pieces > pieces_before);
        CHECK(!s.text_ended_broken);
        if (last == SURPOOL__WS_PROTOCOL || last == SURPOOL__WS_CLOSED)
            CHECK(surpool__ws_close_queued(ws));
        off += piece;
        drain(ws, &o, (flags & 0x40) ? 1 + next(&seed) % 64 : 0);

        if ((flags & 0x10) && !is_terminal(last)) {
            /* A message of ours comes out as itself, at the end of the output. */
            unsigned char msg[40];
            size_t ml = next(&seed) % sizeof(msg);
            for (size_t i = 0; i < ml; i++)
                msg[i] = (unsigned char)('a' + next(&seed) % 26);
            unsigned char *p;
            size_t before = surpool__ws_output(ws, &p);
            CHECK(!surpool__ws_close_queued(ws));
            CHECK(surpool__ws_send(ws, sends & 1, msg, ml) == 0);
            size_t total = surpool__ws_output(ws, &p);
            int op;
            unsigned char pl[sizeof(msg)];
            size_t len;
            size_t u = out_frame(p + before, total - before, &op, pl, sizeof(pl), &len);
            CHECK(u == total - before);
            CHECK(op == ((sends & 1) ? 0x2 : 0x1));
            CHECK(len == ml && memcmp(pl, msg, ml) == 0);
            sends++;
            if (next(&seed) % 4 == 0)
                CHECK(surpool__ws_ping(ws) == 0);
            drain(ws, &o, 0);
        }
    }
    if (is_terminal(last)) {
        int pieces = s.pieces;
        check_terminal(ws, &s, last);
        CHECK(s.pieces == pieces);
    }
    if (flags & 0x10) {
        surpool__ws_close(ws, 1000, "bye");
        if (open && !is_terminal(last))
            CHECK(surpool__ws_close_queued(ws));
        CHECK(surpool__ws_send(ws, 1, "x", 1) == -1);
    }
    drain(ws, &o, 0);

    res->rc = last;
    res->msgs = s.msgs;
    res->hash = s.hash;
    if (last == SURPOOL__WS_CLOSED) {
        const char *reason;
        res->peer_code = surpool__ws_peer_close(ws, &reason);
        snprintf(res->reason, sizeof(res->reason), "%s", reason);
    }
    snprintf(res->error, sizeof(res->error), "%s", surpool__ws_error(ws));
    free(s.cur);
    free(in);
    surpool__ws_free(ws);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    unsigned flags = data[0];
    int stop_at = (flags & 0x20) ? data[1] : -1;
    uint32_t seed = 0x9E3779B9u ^ (uint32_t)data[2] ^ ((uint32_t)data[3] << 8);
    outcome a, b;
    run(data + 4, size - 4, flags, stop_at, seed, &a);
    if (stop_at >= 0)
        return 0; /* where a piece number falls depends on the pieces */

    /* The same stream at once, nothing sent: the same messages and the same
     * end, whatever the pieces were. */
    run(data + 4, size - 4, flags & 0x03, -1, seed, &b);
    CHECK(a.msgs == b.msgs && a.hash == b.hash);
    CHECK(a.open_at == b.open_at);
    CHECK(a.rc == b.rc);
    CHECK(a.peer_code == b.peer_code && strcmp(a.reason, b.reason) == 0);
    CHECK(strcmp(a.error, b.error) == 0);
    return 0;
}
