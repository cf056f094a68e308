/*
 * TLS over OpenSSL (tls.h): the client SSL_CTX, sessions on memory buffers,
 * the certificate check and the handshake notes. No libwebsockets here:
 * transport_lws.c moves a session's bytes over a raw socket.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "internal.h"
#include "tls.h"
#include "utf8.h"

static pthread_once_t g_tls_once = PTHREAD_ONCE_INIT;
static int g_ssl_rx_alert_idx = -1; /* SSL ex_data: last fatal alert received */
static int g_ssl_tx_alert_idx = -1; /* SSL ex_data: last fatal alert sent */
static int g_ssl_note_idx = -1;     /* SSL ex_data: other static explanation */
static int g_ssl_peer_idx = -1;     /* SSL ex_data: the surpool__tls_peer of a session */

static void tls_global_init(void)
{
    g_ssl_rx_alert_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    g_ssl_tx_alert_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    g_ssl_note_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    g_ssl_peer_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

int surpool__tls_init(void)
{
    pthread_once(&g_tls_once, tls_global_init);
    if (g_ssl_rx_alert_idx < 0 || g_ssl_tx_alert_idx < 0 || g_ssl_note_idx < 0 ||
        g_ssl_peer_idx < 0)
        return -1;
    return 0;
}

/* OpenSSL's reasons for a failed handshake are terse ("unexpected eof",
 * "wrong version number"). Alerts and the first record header we read say
 * more; keep them on the SSL (static strings only). */
static void tls_info_cb(const SSL *ssl, int where, int ret)
{
    if (where & SSL_CB_HANDSHAKE_DONE) {
        /* Only the handshake is interesting: stop watching records. */
        SSL_set_msg_callback((SSL *)ssl, NULL);
        return;
    }
    if (!(where & SSL_CB_ALERT) || strcmp(SSL_alert_type_string(ret), "F") != 0)
        return;
    int idx = (where & SSL_CB_READ) ? g_ssl_rx_alert_idx : g_ssl_tx_alert_idx;
    const char *desc = SSL_alert_desc_string_long(ret);
    if ((ret & 0xff) == 116) /* TLS 1.3's certificate_required: "unknown" to OpenSSL 3.0 */
        desc = "certificate required (the server wants a client certificate: tls_cert_file)";
    SSL_set_ex_data((SSL *)ssl, idx, (void *)desc);
}

static void tls_msg_cb(int write_p, int version, int content_type, const void *buf, size_t len,
                       SSL *ssl, void *arg)
{
    SURPOOL__UNUSED(version);
    SURPOOL__UNUSED(arg);
    if (write_p || content_type != SSL3_RT_HEADER || len < 1)
        return;
    unsigned char type = ((const unsigned char *)buf)[0];
    /* TLS record types are 20..24; "H" (72) is an HTTP answer to our hello. */
    if ((type < 20 || type > 24) && SSL_get_ex_data(ssl, g_ssl_note_idx) == NULL)
        SSL_set_ex_data(ssl, g_ssl_note_idx,
                        (void *)(type == 'H' ? "the server answered in plain HTTP "
                                               "(is it a ws:// endpoint?)"
                                             : "the server's answer is not TLS"));
}

void surpool__tls_handshake_notes(const SSL *ssl, const char **alert_rx, const char **alert_tx,
                                  const char **note)
{
    *alert_rx = SSL_get_ex_data(ssl, g_ssl_rx_alert_idx);
    *alert_tx = SSL_get_ex_data(ssl, g_ssl_tx_alert_idx);
    *note = SSL_get_ex_data(ssl, g_ssl_note_idx);
}

static int host_matches(const char *host, int host_is_ip, X509 *cert)
{
    if (host_is_ip)
        return X509_check_ip_asc(cert, host, 0) == 1;
    return X509_check_host(cert, host, strlen(host), X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS,
                           NULL) == 1;
}

/* Our verdict on one certificate of the server's chain, given OpenSSL's
 * `preverify_ok` (from session_verify(), once per certificate): 0 to let
 * OpenSSL's verdict stand, non-zero to reject. With `insecure` every
 * certificate and name is accepted. For the leaf the name is checked against
 * `host` (an address when host_is_ip is 4 or 6). *reason is set to static text
 * when the certificate fails (else left alone). */
static int verify_cert(X509_STORE_CTX *xs, int preverify_ok, int insecure, const char *host,
                       int host_is_ip, const char **reason)
{
    if (insecure) {
        /* tls_insecure_skip_verify: accept any certificate and name. */
        X509_STORE_CTX_set_error(xs, X509_V_OK);
        return 0;
    }
    if (!preverify_ok) {
        /* Record the reason for the user; returning 0 keeps it a failure (a
         * non-zero return would reject good certificates too). */
        *reason = X509_verify_cert_error_string(X509_STORE_CTX_get_error(xs));
        return 0;
    }
    /* The name check: the leaf against the URL's host (or address). */
    if (X509_STORE_CTX_get_error_depth(xs) == 0) {
        X509 *cert = X509_STORE_CTX_get_current_cert(xs);
        if (cert == NULL || !host_matches(host, host_is_ip, cert)) {
            int e = host_is_ip ? X509_V_ERR_IP_ADDRESS_MISMATCH : X509_V_ERR_HOSTNAME_MISMATCH;
            X509_STORE_CTX_set_error(xs, e);
            *reason = X509_verify_cert_error_string(e);
            return 1;
        }
    }
    return 0;
}

/* OpenSSL's reasons for the errors queued on this thread, oldest first:
 * "No such file or directory; system lib". */
static void tls_reasons(char *out, size_t cap)
{
    size_t n = 0;
    int kept = 0;
    out[0] = '\0';
    unsigned long e;
    while ((e = ERR_get_error()) != 0) {
        if (kept == 2)
            continue; /* the first ones are the specific ones; drain the rest */
        /* "error:80000002:system library::No such file or directory": keep the
         * reason (thread-safe, unlike strerror). */
        char full[256];
        ERR_error_string_n(e, full, sizeof(full));
        const char *r = strrchr(full, ':');
        r = r != NULL && r[1] != '\0' ? r + 1 : full;
        if (strstr(out, r) != NULL || n + 3 >= cap)
            continue;
        /* Bounded copies cut on a character boundary when a reason does not
         * fit (a plain snprintf here trips -Wformat-truncation at -O2). */
        if (n > 0)
            n += surpool__strlcpy(out + n, "; ", cap - n);
        n += surpool__strlcpy(out + n, r, cap - n);
        kept++;
    }
    if (n == 0)
        surpool__strlcpy(out, "unknown error", cap);
}

static surpool_err tls_error(surpool_error *err, const char *what, const char *path)
{
    char reason[160];
    tls_reasons(reason, sizeof(reason));
    if (path != NULL)
        return surpool__seterr(err, SURPOOL_ERR_TLS, "%s '%s': %s", what, path, reason);
    return surpool__seterr(err, SURPOOL_ERR_TLS, "%s: %s", what, reason);
}

/* The transport's client SSL_CTX; each session sets SNI and its verification
 * callback itself (surpool__tls_session_new()). */
surpool_err surpool__tls_ctx_create(const surpool__tconfig *cfg, SSL_CTX **out,
                                    surpool_error *err)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        return tls_error(err, "cannot create the TLS context", NULL);
    surpool_err rc = SURPOOL_OK;
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        rc = tls_error(err, "cannot require TLS 1.2", NULL);
        goto fail;
    }
    if (cfg->tls_ca_file != NULL || cfg->tls_ca_dir != NULL) {
        if (cfg->tls_ca_file != NULL &&
            SSL_CTX_load_verify_locations(ctx, cfg->tls_ca_file, NULL) != 1) {
            rc = tls_error(err, "cannot load tls_ca_file", cfg->tls_ca_file);
            goto fail;
        }
        if (cfg->tls_ca_dir != NULL &&
            SSL_CTX_load_verify_locations(ctx, NULL, cfg->tls_ca_dir) != 1) {
            rc = tls_error(err, "cannot load tls_ca_dir", cfg->tls_ca_dir);
            goto fail;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        rc = tls_error(err, "cannot load the system CA store", NULL);
        goto fail;
    }
    if (cfg->tls_key_file != NULL && cfg->tls_cert_file == NULL) {
        rc = surpool__seterr(err, SURPOOL_ERR_TLS,
                             "tls_key_file is set but tls_cert_file is not");
        goto fail;
    }
    if (cfg->tls_cert_file != NULL) {
        /* Without tls_key_file the key is expected in the certificate's file. */
        const char *key = cfg->tls_key_file != NULL ? cfg->tls_key_file : cfg->tls_cert_file;
        if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert_file) != 1) {
            rc = tls_error(err, "cannot load tls_cert_file", cfg->tls_cert_file);
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
            rc = tls_error(err, "cannot load tls_key_file", key);
            goto fail;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            rc = tls_error(err, "tls_cert_file and tls_key_file do not match", NULL);
            goto fail;
        }
    }
    /* Each session sets SSL_VERIFY_PEER with session_verify() (our policy,
     * insecure included); this is the policy a session starts from. */
    SSL_CTX_set_verify(ctx, cfg->tls_insecure_skip_verify ? SSL_VERIFY_NONE : SSL_VERIFY_PEER,
                       NULL);
    SSL_CTX_set_info_callback(ctx, tls_info_cb);
    SSL_CTX_set_msg_callback(ctx, tls_msg_cb);
    *out = ctx;
    return SURPOOL_OK;
fail:
    SSL_CTX_free(ctx);
    return rc;
}

/* ------------------------------------------------------------------------- */
/* A session over memory buffers                                              */
/* ------------------------------------------------------------------------- */

static int session_verify(int preverify_ok, X509_STORE_CTX *xs)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
    surpool__tls_peer *peer = ssl != NULL ? SSL_get_ex_data(ssl, g_ssl_peer_idx) : NULL;
    if (peer == NULL)
        return 0;
    const char *reason = NULL;
    int reject =
        verify_cert(xs, preverify_ok, peer->insecure, peer->host, peer->host_is_ip, &reason);
    if (reason != NULL && peer->reason == NULL)
        peer->reason = reason; /* the first failure is the one the user is told */
    return !reject && X509_STORE_CTX_get_error(xs) == X509_V_OK;
}

SSL *surpool__tls_session_new(SSL_CTX *ctx, surpool__tls_peer *peer)
{
    SSL *ssl = SSL_new(ctx);
    BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
    if (ssl == NULL || rb == NULL || wb == NULL)
        goto fail;
    SSL_set_bio(ssl, rb, wb); /* the SSL owns them from here */
    rb = wb = NULL;
    if (!SSL_set_ex_data(ssl, g_ssl_peer_idx, peer))
        goto fail;
    SSL_set_verify(ssl, SSL_VERIFY_PEER, session_verify);
    /* An idle session holds no record buffers (~34 KiB). */
    SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    if (!peer->host_is_ip && SSL_set_tlsext_host_name(ssl, peer->host) != 1)
        goto fail;
    SSL_set_connect_state(ssl);
    return ssl;
fail:
    BIO_free(rb);
    BIO_free(wb);
    SSL_free(ssl);
    ERR_clear_error();
    return NULL;
}

int surpool__tls_put(SSL *ssl, const void *p, size_t n)
{
    size_t done = 0;
    return n == 0 || (BIO_write_ex(SSL_get_rbio(ssl), p, n, &done) == 1 && done == n) ? 0 : -1;
}

/* Why the last call on ssl failed (`rc` its return), into why. */
static void session_why(SSL *ssl, int rc, char *why, size_t cap)
{
    int e = SSL_get_error(ssl, rc);
    if (e == SSL_ERROR_ZERO_RETURN)
        surpool__strlcpy(why, "the server ended the TLS session", cap);
    else if (e == SSL_ERROR_SSL)
        tls_reasons(why, cap);
    else {
        snprintf(why, cap, "TLS error %d", e);
        ERR_clear_error();
    }
}

int surpool__tls_handshake(SSL *ssl, char *why, size_t cap)
{
    ERR_clear_error();
    int rc = SSL_do_handshake(ssl);
    if (rc == 1)
        return 1;
    int e = SSL_get_error(ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    session_why(ssl, rc, why, cap);
    return -1;
}

long surpool__tls_get(SSL *ssl, void *buf, size_t cap, char *why, size_t whycap)
{
    size_t got = 0;
    ERR_clear_error();
    int rc = SSL_read_ex(ssl, buf, cap, &got);
    if (rc == 1)
        return (long)got;
    int e = SSL_get_error(ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    session_why(ssl, rc, why, whycap);
    return e == SSL_ERROR_ZERO_RETURN ? -2 : -1;
}

int surpool__tls_send(SSL *ssl, const void *p, size_t n, char *why, size_t whycap)
{
    size_t done = 0;
    ERR_clear_error();
    /* Memory BIOs take everything: one call writes all n bytes. */
    int rc = n == 0 ? 1 : SSL_write_ex(ssl, p, n, &done);
    if (rc == 1 && (n == 0 || done == n))
        return 0;
    session_why(ssl, rc, why, whycap);
    return -1;
}

size_t surpool__tls_pending(SSL *ssl)
{
    return BIO_ctrl_pending(SSL_get_wbio(ssl));
}

size_t surpool__tls_take(SSL *ssl, void *buf, size_t cap)
{
    size_t got = 0;
    if (cap == 0 || BIO_read_ex(SSL_get_wbio(ssl), buf, cap, &got) != 1)
        return 0;
    return got;
}

/* A memory BIO keeps the largest size it ever held (its BUF_MEM never
 * shrinks): an empty one above this is replaced by a new one. */
#define TRIM_BYTES (16u << 10)

static BIO *trimmed(BIO *b)
{
    BUF_MEM *bm = NULL;
    if (BIO_ctrl_pending(b) != 0 || BIO_get_mem_ptr(b, &bm) != 1 || bm == NULL ||
        bm->max <= TRIM_BYTES)
        return NULL;
    return BIO_new(BIO_s_mem()); /* NULL when out of memory: keep the old one */
}

void surpool__tls_trim(SSL *ssl)
{
    BIO *nb = trimmed(SSL_get_rbio(ssl));
    if (nb != NULL)
        SSL_set0_rbio(ssl, nb); /* frees the old one */
    nb = trimmed(SSL_get_wbio(ssl));
    if (nb != NULL)
        SSL_set0_wbio(ssl, nb);
}
