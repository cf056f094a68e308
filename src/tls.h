/*
 * TLS over OpenSSL for the transport (as hiredis keeps ssl.c apart from its
 * socket code): our own client SSL_CTX (CA file/dir or the system store, client
 * certificate and key, verification policy), the certificate check run from the
 * verification callback, client sessions on memory buffers, and the handshake
 * notes that explain a failure better than OpenSSL's reasons alone. Nothing
 * here knows libwebsockets.
 *
 * Threads: surpool__tls_init() and surpool__tls_ctx_create() from any thread;
 * the others on the thread running the handshake (the service thread).
 */
#ifndef SURPOOL_TLS_H
#define SURPOOL_TLS_H

#include <openssl/ssl.h>

#include "transport.h"

/* Process-wide, once: the SSL ex_data slots the handshake notes live in.
 * 0, or -1 when OpenSSL could not allocate them. Any thread, any number of
 * times. */
int surpool__tls_init(void);

/* Build the client SSL_CTX for `cfg` (TLS 1.2 or newer, its CA, certificate,
 * key and verification settings, the note-taking callbacks). On failure
 * SURPOOL_ERR_TLS (or NOMEM) with OpenSSL's reasons in err, and nothing is
 * left behind. The caller frees *out with SSL_CTX_free(). Needs
 * surpool__tls_init(). */
surpool_err surpool__tls_ctx_create(const surpool__tconfig *cfg, SSL_CTX **out,
                                    surpool_error *err);

/* What the handshake on `ssl` noted, each static text or NULL: the fatal alert
 * received, the fatal alert sent, another explanation (the server answered in
 * plain HTTP, or not in TLS). */
void surpool__tls_handshake_notes(const SSL *ssl, const char **alert_rx, const char **alert_tx,
                                  const char **note);

/*
 * A client TLS session over memory buffers: the transport hands in the bytes it
 * read from the socket and writes out the bytes this produces (libwebsockets
 * 4.1 cannot run TLS under a raw client socket, ws.h says why we need one).
 * Each certificate is checked against `peer` (with `insecure` every one is
 * accepted), whose `reason` receives the first failure. All calls on one
 * thread at a time.
 */
typedef struct surpool__tls_peer {
    int insecure;
    const char *host; /* borrowed for the session's life */
    int host_is_ip;
    const char *reason; /* static text: why the certificate was refused */
} surpool__tls_peer;

/* A session on `ctx` for `peer` (SNI set for a name). NULL when out of memory. */
SSL *surpool__tls_session_new(SSL_CTX *ctx, surpool__tls_peer *peer);

/* Bytes read from the socket. 0, or -1 when out of memory. */
int surpool__tls_put(SSL *ssl, const void *p, size_t n);

/* Advance the handshake: 1 done, 0 more bytes needed (write out what is
 * pending first), -1 failed: OpenSSL's reasons in why. */
int surpool__tls_handshake(SSL *ssl, char *why, size_t cap);

/* Decrypted bytes: > 0 read, 0 none for now, -1 the session failed (why),
 * -2 the server ended it (a close_notify). */
long surpool__tls_get(SSL *ssl, void *buf, size_t cap, char *why, size_t whycap);

/* Encrypt all n bytes. 0, or -1 (why). */
int surpool__tls_send(SSL *ssl, const void *p, size_t n, char *why, size_t whycap);

/* The encrypted bytes waiting to be written; take up to cap of them. */
size_t surpool__tls_pending(SSL *ssl);
size_t surpool__tls_take(SSL *ssl, void *buf, size_t cap);

/* Give back the memory the session's buffers grew to while they are empty
 * (for an idle connection: a memory BIO never shrinks by itself). */
void surpool__tls_trim(SSL *ssl);

#endif
