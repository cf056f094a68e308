/*
 * Security properties, against the real server:
 *  (a) passwords and tokens never appear in log lines (everything, at DEBUG),
 *      event messages, surpool_error.message or surpool_conn_last_error(),
 *      whatever path they took (config, URL userinfo, percent-encoded, a lease's
 *      signin, a JWT) and whether they were right or wrong;
 *  (b) TLS: certificates made at test time with the openssl CLI; verification
 *      on by default, the CA file honoured, untrusted chains and wrong names
 *      refused with SURPOOL_ERR_TLS and OpenSSL's reason, and
 *      tls_insecure_skip_verify accepting anything;
 *  (c) the receive limit (max_message_bytes) is enforced;
 *  (d) URLs the parser does not understand are refused, without echoing them;
 *  (e) every string the API takes must be valid UTF-8 (one strict checker: no
 *      surrogates, no overlong forms, nothing above U+10FFFF): anything else is
 *      SURPOOL_ERR_INVALID_ARG before a byte is sent, for every function and
 *      every string argument, json_t strings and keys included.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "fault_util.h"
#include "harness.h"
#include "surpool.h"

#define PASSWORD "S3cr3t-P@ss"
#define PASSWORD_ENC "S3cr3t-P%40ss"
#define WRONG_PASSWORD "Wr0ng-Pa55-XyZ"

static int setup(void **state)
{
    (void)state;
    fu_watchdog(0, NULL);
    return 0;
}

/* ------------------------------------------------------------------------- */
/* (a) secrets                                                                */
/* ------------------------------------------------------------------------- */

/* Everything the library said, in one place. */
static pthread_mutex_t g_cap_mu = PTHREAD_MUTEX_INITIALIZER;
static char *g_cap;
static size_t g_cap_len, g_cap_cap;
static int g_cap_logs, g_cap_events, g_cap_errors;

static void capture(const char *kind, const char *text)
{
    pthread_mutex_lock(&g_cap_mu);
    size_t n = strlen(kind) + strlen(text) + 3;
    if (g_cap_len + n + 1 > g_cap_cap) {
        size_t cap = g_cap_cap ? g_cap_cap : 65536;
        while (cap < g_cap_len + n + 1)
            cap *= 2;
        g_cap = realloc(g_cap, cap);
        g_cap_cap = cap;
    }
    g_cap_len +=
        (size_t)snprintf(g_cap + g_cap_len, g_cap_cap - g_cap_len, "%s: %s\n", kind, text);
    pthread_mutex_unlock(&g_cap_mu);
}

static void log_fn(void *ud, surpool_log_level level, const char *msg)
{
    (void)ud;
    (void)level;
    capture("log", msg);
    pthread_mutex_lock(&g_cap_mu);
    g_cap_logs++;
    pthread_mutex_unlock(&g_cap_mu);
}

static void on_event(void *ud, const surpool_event *ev)
{
    (void)ud;
    capture("event", ev->message != NULL ? ev->message : "");
    pthread_mutex_lock(&g_cap_mu);
    g_cap_events++;
    pthread_mutex_unlock(&g_cap_mu);
}

static void capture_err(const surpool_error *err)
{
    capture("error", err->message);
    capture("kind", err->kind);
    pthread_mutex_lock(&g_cap_mu);
    g_cap_errors++;
    pthread_mutex_unlock(&g_cap_mu);
}

static void secret_config(surpool_config *cfg, const char *url)
{
    surpool_config_init(cfg);
    cfg->url = url;
    cfg->ns = "sec";
    cfg->db = "sec";
    cfg->max_connections = 3;
    cfg->acquire_timeout_ms = 3000;
    cfg->connect_timeout_ms = 3000;
    cfg->reconnect_backoff_min_ms = 20;
    cfg->reconnect_backoff_max_ms = 100;
    cfg->breaker_threshold = 0; /* each case's own error (case 2b turns it on) */
    cfg->log_fn = log_fn;
    cfg->log_level = SURPOOL_LOG_DEBUG;
    cfg->on_event = on_event;
}

/* create + acquire + query; returns the first failing code (all captured). */
static surpool_err session(const surpool_config *cfg, int signin_on_lease, json_t **token)
{
    surpool_pool *p = NULL;
    surpool_error err;
    memset(&err, 0, sizeof(err));
    surpool_err rc = surpool_pool_create(cfg, &p, &err);
    if (rc != SURPOOL_OK) {
        capture_err(&err);
        return rc;
    }
    surpool_conn *c = NULL;
    rc = surpool_pool_acquire(p, 5000, &c, &err); /* room for connect + signin */
    if (rc != SURPOOL_OK) {
        capture_err(&err);
        surpool_pool_destroy(p);
        return rc;
    }
    json_t *out = NULL;
    rc = surpool_conn_query(c, "RETURN 1", NULL, &out, &err);
    json_decref(out);
    if (rc != SURPOOL_OK)
        capture_err(&err);
    capture("last_error", surpool_conn_last_error(c));
    if (rc == SURPOOL_OK && signin_on_lease) {
        /* Wrong password on a lease, then the right one (the token is kept). */
        surpool_credentials cred = {0};
        cred.user = "root";
        cred.pass = WRONG_PASSWORD;
        surpool_err src = surpool_conn_signin(c, &cred, NULL, &err);
        assert_int_equal(src, SURPOOL_ERR_AUTH);
        capture_err(&err);
        capture("last_error", surpool_conn_last_error(c));
        cred.pass = PASSWORD;
        src = surpool_conn_signin(c, &cred, token, &err);
        if (src != SURPOOL_OK)
            fail_msg("signin with the right password: %s", err.message);
        capture("last_error", surpool_conn_last_error(c));
    }
    surpool_conn_release(c); /* dirty after signin: reset + signin + use (logged) */
    surpool_pool_destroy(p);
    return rc;
}

/* A provider handing out the token in `ud`. */
#define PROVIDER_BAD_TOKEN "prov1der-b4d-t0ken-Qx"
static surpool_err provide_token(void *ud, char *token, size_t size, surpool_error *err)
{
    (void)err;
    snprintf(token, size, "%s", (const char *)ud);
    return SURPOOL_OK;
}

static void assert_absent(const char *secret, const char *what)
{
    if (secret == NULL || secret[0] == '\0')
        return;
    pthread_mutex_lock(&g_cap_mu);
    const char *hit = g_cap != NULL ? strstr(g_cap, secret) : NULL;
    pthread_mutex_unlock(&g_cap_mu);
    if (hit != NULL) {
        const char *line = hit;
        while (line > g_cap && line[-1] != '\n')
            line--;
        const char *end = strchr(hit, '\n');
        fail_msg("%s leaked: \"%.*s\"", what, (int)(end != NULL ? end - line : 200), line);
    }
}

static void test_secrets_never_logged(void **state)
{
    (void)state;
    test_server s;
    const char *args[] = {"--user", "root", "--pass", PASSWORD, NULL};
    if (harness_start(&s, "server.mjs", 0, args) != 0)
        fail_msg("cannot start tests/server/server.mjs");
    fu_watchdog(120, "secrets session");
    char url[256];
    surpool_config cfg;
    surpool_err rc;

    /* 1. The right password in the config; then a wrong and a right signin on
     *    a lease (the right one returns a JWT). */
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/rpc", s.port);
    secret_config(&cfg, url);
    cfg.user = "root";
    cfg.pass = PASSWORD;
    cfg.min_connections = 1;
    json_t *token = NULL;
    rc = session(&cfg, 1, &token);
    assert_int_equal(rc, SURPOOL_OK);
    assert_true(json_is_string(token));
    char jwt[4096];
    snprintf(jwt, sizeof(jwt), "%s", json_string_value(token));
    json_decref(token);
    assert_true(strlen(jwt) > 40);
    const char *jwt_sig = strrchr(jwt, '.'); /* the signature part alone */
    assert_non_null(jwt_sig);

    /* 2. A wrong password in the config. */
    secret_config(&cfg, url);
    cfg.user = "root";
    cfg.pass = WRONG_PASSWORD;
    rc = session(&cfg, 0, NULL);
    assert_int_equal(rc, SURPOOL_ERR_AUTH);
    /* 2b. Again with the breaker on: the circuit opens, and the fast failure
     *     still says AUTH (the server is up; the credentials are wrong). */
    cfg.breaker_threshold = 2;
    rc = session(&cfg, 0, NULL);
    assert_int_equal(rc, SURPOOL_ERR_AUTH);

    /* 3. The password in the URL, percent-encoded; then a wrong one there. */
    snprintf(url, sizeof(url), "ws://root:%s@127.0.0.1:%d/rpc", PASSWORD_ENC, s.port);
    secret_config(&cfg, url);
    rc = session(&cfg, 0, NULL);
    assert_int_equal(rc, SURPOOL_OK);
    snprintf(url, sizeof(url), "ws://root:%s@127.0.0.1:%d/rpc", WRONG_PASSWORD, s.port);
    secret_config(&cfg, url);
    rc = session(&cfg, 0, NULL);
    assert_int_equal(rc, SURPOOL_ERR_AUTH);

    /* 4. The JWT as config.token, then a tampered one. */
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/rpc", s.port);
    secret_config(&cfg, url);
    cfg.token = jwt;
    rc = session(&cfg, 0, NULL);
    assert_int_equal(rc, SURPOOL_OK);
    char bad_jwt[4096];
    snprintf(bad_jwt, sizeof(bad_jwt), "%s", jwt);
    size_t bl = strlen(bad_jwt);
    bad_jwt[bl - 2] = bad_jwt[bl - 2] == 'A' ? 'B' : 'A';
    secret_config(&cfg, url);
    cfg.token = bad_jwt;
    rc = session(&cfg, 0, NULL);
    assert_int_equal(rc, SURPOOL_ERR_AUTH); /* a tampered token is refused as such */

    /* 4b. Tokens the pool caches and hands around: a provider giving the JWT
     *     (three connections authenticate with it), one giving a bad token,
     *     and a pool that signs in once and authenticates the others with
     *     the token it got (docs/lifecycle.md, rule A6). */
    secret_config(&cfg, url);
    cfg.token_fn = provide_token;
    cfg.token_userdata = jwt;
    cfg.min_connections = 3;
    rc = session(&cfg, 0, NULL);
    assert_int_equal(rc, SURPOOL_OK);
    secret_config(&cfg, url);
    cfg.token_fn = provide_token;
    cfg.token_userdata = (void *)PROVIDER_BAD_TOKEN;
    rc = session(&cfg, 0, NULL);
    assert_int_equal(rc, SURPOOL_ERR_AUTH);
    secret_config(&cfg, url);
    cfg.user = "root";
    cfg.pass = PASSWORD;
    cfg.min_connections = 3;
    rc = session(&cfg, 0, NULL);
    assert_int_equal(rc, SURPOOL_OK);

    /* 5. A URL that does not parse (unencoded '@' in the password), and one
     *    with the password that cannot connect (nobody listens there). */
    snprintf(url, sizeof(url), "ws://root:%s@127.0.0.1:%d/rpc", PASSWORD, s.port);
    secret_config(&cfg, url);
    rc = session(&cfg, 0, NULL);
    assert_int_equal(rc, SURPOOL_ERR_INVALID_ARG);
    snprintf(url, sizeof(url), "ws://root:%s@127.0.0.1:%d/rpc", PASSWORD_ENC, fu_dead_port());
    secret_config(&cfg, url);
    cfg.min_connections = 1;
    rc = session(&cfg, 0, NULL);
    assert_int_equal(rc, SURPOOL_ERR_CONNECT);
    /* 6. Sessions: the password in the session's options (kept to sign in
     *    again), a wrong password and a tampered token inside a session and
     *    at open, the right token, then every socket dropped so that the
     *    session is rebuilt (authenticated again with what it kept). */
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/rpc", s.port);
    secret_config(&cfg, url);
    cfg.user = "root";
    cfg.pass = PASSWORD;
    surpool_pool *sp = NULL;
    surpool_error err;
    if (surpool_pool_create(&cfg, &sp, &err) != SURPOOL_OK)
        fail_msg("pool for sessions: %s", err.message);
    surpool_credentials cred = {0};
    cred.user = "root";
    cred.pass = PASSWORD;
    surpool_session_options so;
    surpool_session_options_init(&so);
    so.signin = &cred;
    so.ns = "sec";
    so.db = "sec";
    surpool_session *ss = NULL;
    if (harness_core_major() < 3) {
        /* 2.x has no sessions: open says so before anything is sent. */
        assert_int_equal(surpool_session_open(sp, &so, &ss, &err), SURPOOL_ERR_UNSUPPORTED);
        capture_err(&err);
        surpool_pool_destroy(sp);
    } else {
        if (surpool_session_open(sp, &so, &ss, &err) != SURPOOL_OK)
            fail_msg("session open: %s", err.message);
        cred.pass = WRONG_PASSWORD;
        assert_int_equal(surpool_session_signin(ss, &cred, NULL, &err), SURPOOL_ERR_AUTH);
        capture_err(&err);
        surpool_session *bad = NULL;
        assert_int_equal(surpool_session_open(sp, &so, &bad, &err), SURPOOL_ERR_AUTH);
        capture_err(&err);
        assert_int_equal(surpool_session_authenticate(ss, bad_jwt, &err), SURPOOL_ERR_AUTH);
        capture_err(&err);
        surpool_session_options_init(&so);
        so.token = bad_jwt;
        assert_int_equal(surpool_session_open(sp, &so, &bad, &err), SURPOOL_ERR_AUTH);
        capture_err(&err);
        if (surpool_session_authenticate(ss, jwt, &err) != SURPOOL_OK)
            fail_msg("session authenticate: %s", err.message);
        assert_int_equal(harness_control(&s, "{\"dropAll\":true}"), 0);
        for (int i = 0; i < 3; i++) {
            json_t *out = NULL;
            if (surpool_session_query(ss, "RETURN 1", NULL, &out, &err) != SURPOOL_OK)
                capture_err(&err);
            json_decref(out);
        }
        json_t *out = NULL;
        if (surpool_session_query(ss, "RETURN 1", NULL, &out, &err) != SURPOOL_OK)
            fail_msg("session query after the rebuild: %s", err.message);
        json_decref(out);
        surpool_session_close(ss);
        surpool_pool_destroy(sp);
    }

    fu_watchdog(0, NULL);
    harness_stop(&s);

    /* The capture is meaningful: DEBUG logs, events and errors were seen. */
    fprintf(stderr, "# captured %d log lines, %d events, %d error messages (%zu bytes)\n",
            g_cap_logs, g_cap_events, g_cap_errors, g_cap_len);
    assert_true(g_cap_logs > 10);
    assert_true(g_cap_events > 10);
    assert_true(g_cap_errors >= 6);
    if (getenv("SURPOOL_SECURITY_DUMP") != NULL)
        fputs(g_cap, stderr);
    assert_absent(PASSWORD, "the password");
    assert_absent(PASSWORD_ENC, "the percent-encoded password");
    assert_absent(WRONG_PASSWORD, "the wrong password");
    assert_absent("S3cr3t", "part of the password");
    assert_absent(jwt, "the JWT");
    assert_absent(jwt_sig + 1, "the JWT's signature");
    assert_absent(bad_jwt, "the tampered JWT");
    assert_absent(PROVIDER_BAD_TOKEN, "the provider's bad token");
    free(g_cap);
    g_cap = NULL;
    g_cap_len = g_cap_cap = 0;
}

/* ------------------------------------------------------------------------- */
/* (b) TLS                                                                    */
/* ------------------------------------------------------------------------- */

static char g_dir[64];

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    char full[2200];
    snprintf(full, sizeof(full), "cd '%s' && (%s) >/dev/null 2>&1", g_dir, cmd);
    if (system(full) != 0)
        fail_msg("command failed: %s", cmd);
}

#define EC_KEY "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"

/* A CA, a server certificate for localhost + 127.0.0.1 signed by it, one for
 * other.invalid only (signed by it too), and an unrelated "untrusted" CA. */
static void make_certs(void)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/surpool-tls-XXXXXX");
    if (mkdtemp(g_dir) == NULL)
        fail_msg("mkdtemp failed");
    sh("openssl req -x509 " EC_KEY " -keyout ca.key -out ca.pem -days 2 -subj "
       "'/CN=surpool test CA' -addext basicConstraints=critical,CA:TRUE -addext "
       "keyUsage=critical,keyCertSign,cRLSign");
    sh("openssl req -x509 " EC_KEY " -keyout untrusted.key -out untrusted.pem -days 2 -subj "
       "'/CN=untrusted CA' -addext basicConstraints=critical,CA:TRUE -addext "
       "keyUsage=critical,keyCertSign,cRLSign");
    const char *names[2][2] = {{"srv", "DNS:localhost,IP:127.0.0.1"},
                               {"other", "DNS:other.invalid"}};
    for (int i = 0; i < 2; i++) {
        sh("openssl req " EC_KEY " -keyout %s.key -out %s.csr -subj '/CN=%s'", names[i][0],
           names[i][0], i == 0 ? "localhost" : "other.invalid");
        sh("printf 'subjectAltName=%s\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage="
           "serverAuth\\n' > %s.ext",
           names[i][1], names[i][0]);
        sh("openssl x509 -req -in %s.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out %s.pem "
           "-days 2 -extfile %s.ext",
           names[i][0], names[i][0], names[i][0]);
    }
}

static void remove_certs(void)
{
    if (g_dir[0] != '\0') {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", g_dir);
    }
}

static void start_tls_server(test_server *s, const char *name)
{
    char cert[128], key[128];
    snprintf(cert, sizeof(cert), "%s/%s.pem", g_dir, name);
    snprintf(key, sizeof(key), "%s/%s.key", g_dir, name);
    const char *args[] = {"--tls-cert", cert,     "--tls-key", key, "--user",
                          "root",       "--pass", "root",      NULL};
    if (harness_start(s, "server.mjs", 0, args) != 0)
        fail_msg("cannot start the TLS test server with %s", cert);
}

typedef struct tls_case {
    const char *host; /* in the URL */
    const char *ca;   /* file in g_dir, or NULL for the system store */
    int insecure;
    surpool_err want;
    const char *reason; /* substring of the message (OpenSSL's reason) */
} tls_case;

static void run_tls_case(const test_server *s, const tls_case *tc)
{
    char url[128], ca[128];
    snprintf(url, sizeof(url), "wss://%s:%d/rpc", tc->host, s->port);
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = url;
    cfg.user = "root";
    cfg.pass = "root";
    cfg.ns = "tls";
    cfg.db = "tls";
    cfg.min_connections = 1; /* create itself connects: its error is the TLS error */
    cfg.max_connections = 2;
    cfg.connect_timeout_ms = 5000;
    if (tc->ca != NULL) {
        snprintf(ca, sizeof(ca), "%s/%s", g_dir, tc->ca);
        cfg.tls_ca_file = ca;
    }
    cfg.tls_insecure_skip_verify = tc->insecure;
    char what[256];
    snprintf(what, sizeof(what), "%s with CA %s%s", url, tc->ca != NULL ? tc->ca : "(system)",
             tc->insecure ? ", insecure" : "");
    fu_watchdog(60, what);
    surpool_pool *p = NULL;
    surpool_error err;
    memset(&err, 0, sizeof(err));
    surpool_err rc = surpool_pool_create(&cfg, &p, &err);
    if (rc != tc->want) {
        if (p != NULL)
            surpool_pool_destroy(p);
        fail_msg("%s: expected %s, got %s (%s)", what, surpool_strerror(tc->want),
                 surpool_strerror(rc), rc != SURPOOL_OK ? err.message : "");
    }
    if (rc == SURPOOL_OK) {
        surpool_conn *c = NULL;
        assert_int_equal(surpool_pool_acquire(p, 5000, &c, &err), SURPOOL_OK);
        json_t *out = NULL;
        rc = surpool_conn_query(c, "RETURN 'over tls'", NULL, &out, &err);
        if (rc != SURPOOL_OK)
            fail_msg("%s: query: %s", what, err.message);
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(out, 0), "result")), "over tls");
        json_decref(out);
        surpool_conn_release(c);
        surpool_pool_destroy(p);
    } else {
        assert_null(p);
        if (tc->reason != NULL && strstr(err.message, tc->reason) == NULL)
            fail_msg("%s: message \"%s\" lacks OpenSSL's reason \"%s\"", what, err.message,
                     tc->reason);
    }
    fu_watchdog(0, NULL);
}

static void test_tls(void **state)
{
    (void)state;
    make_certs();
    test_server good, other;
    start_tls_server(&good, "srv");
    start_tls_server(&other, "other");

    static const tls_case good_cases[] = {
        {"localhost", "ca.pem", 0, SURPOOL_OK, NULL},
        {"127.0.0.1", "ca.pem", 0, SURPOOL_OK, NULL},
        /* The system store does not know our CA. */
        {"localhost", NULL, 0, SURPOOL_ERR_TLS, "unable to get local issuer certificate"},
        /* A CA that did not sign the server's certificate. */
        {"localhost", "untrusted.pem", 0, SURPOOL_ERR_TLS,
         "unable to get local issuer certificate"},
        {"localhost", "untrusted.pem", 1, SURPOOL_OK, NULL},
    };
    for (size_t i = 0; i < sizeof(good_cases) / sizeof(good_cases[0]); i++)
        run_tls_case(&good, &good_cases[i]);

    /* A valid chain for the wrong name: other.invalid only. */
    static const tls_case other_cases[] = {
        {"localhost", "ca.pem", 0, SURPOOL_ERR_TLS, "hostname mismatch"},
        {"127.0.0.1", "ca.pem", 0, SURPOOL_ERR_TLS, "IP address mismatch"},
        {"localhost", NULL, 1, SURPOOL_OK, NULL},
        {"127.0.0.1", NULL, 1, SURPOOL_OK, NULL},
    };
    for (size_t i = 0; i < sizeof(other_cases) / sizeof(other_cases[0]); i++)
        run_tls_case(&other, &other_cases[i]);

    harness_stop(&good);
    harness_stop(&other);

    /* wss:// to a plain ws:// server: the handshake fails. */
    test_server plain;
    const char *args[] = {"--user", "root", "--pass", "root", NULL};
    if (harness_start(&plain, "server.mjs", 0, args) != 0)
        fail_msg("cannot start tests/server/server.mjs");
    tls_case to_plain = {"127.0.0.1", "ca.pem", 0, SURPOOL_ERR_TLS, NULL};
    run_tls_case(&plain, &to_plain);
    harness_stop(&plain);

    /* A CA file that does not exist: refused at create, before any connect. */
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "wss://localhost:1/rpc";
    cfg.tls_ca_file = "/nonexistent/surpool-ca.pem";
    surpool_pool *p = NULL;
    surpool_error err;
    surpool_err rc = surpool_pool_create(&cfg, &p, &err);
    if (p != NULL)
        surpool_pool_destroy(p);
    if (rc != SURPOOL_ERR_TLS)
        fail_msg("missing CA file: expected %s, got %s (%s)", surpool_strerror(SURPOOL_ERR_TLS),
                 surpool_strerror(rc), err.message);
    remove_certs();
}

/* ------------------------------------------------------------------------- */
/* (c) receive limit                                                          */
/* ------------------------------------------------------------------------- */

static void test_receive_limit(void **state)
{
    (void)state;
    test_server s;
    const char *args[] = {"--user", "root", "--pass", "root", NULL};
    if (harness_start(&s, "server.mjs", 0, args) != 0)
        fail_msg("cannot start tests/server/server.mjs");
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = s.url;
    cfg.user = "root";
    cfg.pass = "root";
    cfg.max_connections = 2;
    surpool_pool *p = NULL;
    surpool_error err;
    cfg.max_message_bytes = 1023; /* below the minimum */
    assert_int_equal(surpool_pool_create(&cfg, &p, &err), SURPOOL_ERR_INVALID_ARG);
    assert_null(p);
    cfg.max_message_bytes = 64 * 1024;
    assert_int_equal(surpool_pool_create(&cfg, &p, &err), SURPOOL_OK);
    fu_watchdog(60, "receive limit");
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(p, 5000, &c, &err), SURPOOL_OK);
    json_t *out = NULL;
    /* Just under the limit (with the envelope): fine. */
    assert_int_equal(
        surpool_conn_query(c, "RETURN string::repeat('a', 60000)", NULL, &out, &err),
        SURPOOL_OK);
    json_decref(out);
    out = NULL;
    surpool_err rc =
        surpool_conn_query(c, "RETURN string::repeat('b', 70000)", NULL, &out, &err);
    if (rc != SURPOOL_ERR_TOO_LARGE)
        fail_msg("70 kB reply, 64 KiB limit: expected %s, got %s (%s)",
                 surpool_strerror(SURPOOL_ERR_TOO_LARGE), surpool_strerror(rc), err.message);
    assert_null(out);
    surpool_conn_release(c); /* broken: replaced */
    assert_int_equal(surpool_pool_acquire(p, 5000, &c, &err), SURPOOL_OK);
    assert_int_equal(surpool_conn_query(c, "RETURN 1", NULL, &out, &err), SURPOOL_OK);
    json_decref(out);
    surpool_conn_release(c);
    fu_watchdog(0, NULL);
    surpool_pool_destroy(p);
    harness_stop(&s);
}

/* ------------------------------------------------------------------------- */
/* (d) URLs                                                                   */
/* ------------------------------------------------------------------------- */

static void test_url_rejects(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "http://127.0.0.1:8000/rpc",         /* not ws/wss */
        "ws://",                             /* no host */
        "ws:/127.0.0.1/rpc",                 /* not an authority */
        "127.0.0.1:8000",                    /* no scheme */
        "ws://127.0.0.1:0/rpc",              /* port 0 */
        "ws://127.0.0.1:65536/rpc",          /* port too big */
        "ws://127.0.0.1:80a/rpc",            /* port not a number */
        "ws://127.0.0.1/rpc#frag",           /* fragment */
        "ws://127.0.0.1/rpc?foo=bar",        /* unknown query key */
        "ws://127.0.0.1/rpc?ns=a&ns=b",      /* duplicate key */
        "ws://exa mple.com/rpc",             /* space */
        "ws://127.0.0.1/r\npc",              /* control character */
        "ws://[::1/rpc",                     /* unclosed IPv6 literal */
        "ws://256.1.1.1/rpc",                /* bad IPv4 */
        "ws://root:p%zz@127.0.0.1/rpc",      /* bad escape */
        "ws://root:S3cr3t/x@127.0.0.1/rpc",  /* unencoded '/' in the password */
        "ws://root:S3cr3t@x@127.0.0.1/rpc",  /* unencoded '@' in the password */
        "ws://root:%00S3cr3t@127.0.0.1/rpc", /* NUL in the password */
        "wss://127.0.0.1:-1/rpc",            /* negative port */
        "ws://0x7f000001:8000/rpc",          /* hex IPv4 (inet_aton form) */
        "ws://0x7f.1:8000/rpc",              /* short hex IPv4 */
        "ws://127.1:8000/rpc",               /* short IPv4 */
        "ws://2130706433:8000/rpc",          /* one 32-bit number */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        surpool_config cfg;
        surpool_config_init(&cfg);
        cfg.url = bad[i];
        surpool_pool *p = NULL;
        surpool_error err;
        memset(&err, 0, sizeof(err));
        surpool_err rc = surpool_pool_create(&cfg, &p, &err);
        if (p != NULL)
            surpool_pool_destroy(p);
        if (rc != SURPOOL_ERR_INVALID_ARG)
            fail_msg("url \"%s\": expected %s, got %s (%s)", bad[i],
                     surpool_strerror(SURPOOL_ERR_INVALID_ARG), surpool_strerror(rc),
                     err.message);
        assert_null(p);
        assert_true(strlen(err.message) > 0);
        if (strstr(err.message, "S3cr3t") != NULL)
            fail_msg("url \"%s\": the message quotes the password: %s", bad[i], err.message);
    }
    /* A path that would not fit libwebsockets' header buffer (issue 9 item 8). */
    {
        char url[5100];
        int k = snprintf(url, sizeof(url), "ws://127.0.0.1:8000/");
        memset(url + k, 'p', sizeof(url) - 1 - (size_t)k);
        url[sizeof(url) - 1] = '\0';
        surpool_config cfg;
        surpool_config_init(&cfg);
        cfg.url = url;
        surpool_pool *p = NULL;
        surpool_error err;
        surpool_err rc = surpool_pool_create(&cfg, &p, &err);
        if (p != NULL)
            surpool_pool_destroy(p);
        if (rc != SURPOOL_ERR_INVALID_ARG || strstr(err.message, "path") == NULL)
            fail_msg("5 KB path: expected %s about the path, got %s (%s)",
                     surpool_strerror(SURPOOL_ERR_INVALID_ARG), surpool_strerror(rc),
                     err.message);
    }
    /* And what it does understand (no connect: min_connections = 0). */
    static const char *const good[] = {
        "ws://127.0.0.1:8000/rpc",
        "WSS://LOCALHOST/rpc",
        "ws://[::1]:8000/rpc",
        "ws://root:S3cr3t%2Fx@127.0.0.1/rpc?ns=a&db=b",
        "ws://host-name.example/custom/path",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        surpool_config cfg;
        surpool_config_init(&cfg);
        cfg.url = good[i];
        surpool_pool *p = NULL;
        surpool_error err;
        surpool_err rc = surpool_pool_create(&cfg, &p, &err);
        if (rc != SURPOOL_OK)
            fail_msg("url \"%s\": %s (%s)", good[i], surpool_strerror(rc), err.message);
        surpool_pool_destroy(p);
    }
}

/* ------------------------------------------------------------------------- */
/* (e) Invalid UTF-8 in every string the API takes                            */
/* ------------------------------------------------------------------------- */

/* Strings each UTF-8 checker in the library used to judge differently. */
static const char *const g_bad_utf8[] = {
    "\xED\xA0\x80",     /* U+D800, a surrogate: was NOMEM in signin */
    "\xC0\x80",         /* overlong NUL */
    "\xE0\x80\xAF",     /* overlong '/' */
    "\xF4\x90\x80\x80", /* above U+10FFFF */
    "ok\xFF",           /* never valid */
    "ok\xE2\x82",       /* truncated */
    "\x80ok",           /* lone continuation */
};

/* A json_t string / key holding `bad` (jansson's *_nocheck: its checked
 * constructors already refuse these). */
static json_t *bad_str(const char *bad)
{
    return json_string_nocheck(bad);
}

static json_t *bad_key_obj(const char *bad)
{
    json_t *o = json_object();
    json_object_set_new_nocheck(o, bad, json_integer(1));
    return o;
}

typedef surpool_err (*bad_call_fn)(surpool_pool *p, surpool_conn *c, const char *bad,
                                   surpool_error *err);

static void async_never(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)code;
    (void)result;
    (void)err;
    atomic_fetch_add((atomic_int *)ud, 1);
}
static atomic_int g_async_calls;

#define BAD_CALL(name, ...)                                                                    \
    static surpool_err name(surpool_pool *p, surpool_conn *c, const char *bad,                 \
                            surpool_error *err)                                                \
    {                                                                                          \
        (void)p;                                                                               \
        (void)c;                                                                               \
        surpool_err rc_;                                                                       \
        json_t *out_ = NULL;                                                                   \
        __VA_ARGS__;                                                                           \
        json_decref(out_);                                                                     \
        return rc_;                                                                            \
    }
#define WITH_JSON(v, call)                                                                     \
    do {                                                                                       \
        json_t *j_ = (v);                                                                      \
        rc_ = call;                                                                            \
        json_decref(j_);                                                                       \
    } while (0)

BAD_CALL(bc_call_method, rc_ = surpool_conn_call(c, bad, NULL, &out_, err))
BAD_CALL(bc_call_param, WITH_JSON(json_pack("[o]", bad_str(bad)),
                                  surpool_conn_call(c, "query", j_, &out_, err)))
BAD_CALL(bc_call_key, WITH_JSON(json_pack("[s,o]", "RETURN $k", bad_key_obj(bad)),
                                surpool_conn_call(c, "query", j_, &out_, err)))
BAD_CALL(bc_query_sql, rc_ = surpool_conn_query(c, bad, NULL, &out_, err))
BAD_CALL(bc_query_var, WITH_JSON(json_pack("{s:o}", "v", bad_str(bad)),
                                 surpool_conn_query(c, "RETURN $v", j_, &out_, err)))
BAD_CALL(bc_query_key,
         WITH_JSON(bad_key_obj(bad), surpool_conn_query(c, "RETURN 1", j_, &out_, err)))
BAD_CALL(bc_use_ns, rc_ = surpool_conn_use(c, bad, "db", err))
BAD_CALL(bc_use_db, rc_ = surpool_conn_use(c, "ns", bad, err))
#define SIGNIN(field)                                                                          \
    surpool_credentials cr_ = {.user = "root", .pass = "root"};                                \
    cr_.field = bad;                                                                           \
    if (cr_.db != NULL || cr_.access != NULL)                                                  \
        cr_.ns = cr_.ns != NULL ? cr_.ns : "ns";                                               \
    if (cr_.access != NULL)                                                                    \
        cr_.db = cr_.db != NULL ? cr_.db : "db";                                               \
    rc_ = surpool_conn_signin(c, &cr_, &out_, err)
BAD_CALL(bc_signin_user, SIGNIN(user))
BAD_CALL(bc_signin_pass, SIGNIN(pass))
BAD_CALL(bc_signin_ns, SIGNIN(ns))
BAD_CALL(bc_signin_db, SIGNIN(db))
BAD_CALL(bc_signin_access, SIGNIN(access))
BAD_CALL(bc_signin_vars, surpool_credentials cr_ = {.user = "root", .pass = "root"};
         json_t *v_ = json_pack("{s:o}", "x", bad_str(bad)); cr_.vars = v_;
         rc_ = surpool_conn_signin(c, &cr_, &out_, err); json_decref(v_))
BAD_CALL(bc_signup_ns, rc_ = surpool_conn_signup(c, bad, "db", "ac", NULL, &out_, err))
BAD_CALL(bc_signup_db, rc_ = surpool_conn_signup(c, "ns", bad, "ac", NULL, &out_, err))
BAD_CALL(bc_signup_ac, rc_ = surpool_conn_signup(c, "ns", "db", bad, NULL, &out_, err))
BAD_CALL(bc_signup_vars,
         WITH_JSON(bad_key_obj(bad), surpool_conn_signup(c, "ns", "db", "ac", j_, &out_, err)))
BAD_CALL(bc_authenticate, rc_ = surpool_conn_authenticate(c, bad, err))
BAD_CALL(bc_let_name, rc_ = surpool_conn_let(c, bad, json_null(), err))
BAD_CALL(bc_let_value,
         WITH_JSON(json_pack("[o]", bad_str(bad)), surpool_conn_let(c, "v", j_, err)))
BAD_CALL(bc_unset, rc_ = surpool_conn_unset(c, bad, err))
BAD_CALL(bc_select, rc_ = surpool_conn_select(c, bad, &out_, err))
BAD_CALL(bc_create, rc_ = surpool_conn_create(c, bad, NULL, &out_, err))
BAD_CALL(bc_create_data, WITH_JSON(json_pack("{s:o}", "a", bad_str(bad)),
                                   surpool_conn_create(c, "t", j_, &out_, err)))
BAD_CALL(bc_insert,
         WITH_JSON(json_pack("{s:i}", "a", 1), surpool_conn_insert(c, bad, j_, &out_, err)))
BAD_CALL(bc_insert_data, WITH_JSON(json_pack("[o]", bad_key_obj(bad)),
                                   surpool_conn_insert(c, "t", j_, &out_, err)))
BAD_CALL(bc_update, rc_ = surpool_conn_update(c, bad, NULL, &out_, err))
BAD_CALL(bc_upsert_data,
         WITH_JSON(bad_key_obj(bad), surpool_conn_upsert(c, "t:1", j_, &out_, err)))
BAD_CALL(bc_merge_data, WITH_JSON(json_pack("{s:o}", "a", bad_str(bad)),
                                  surpool_conn_merge(c, "t:1", j_, &out_, err)))
BAD_CALL(bc_patch, WITH_JSON(json_array(), surpool_conn_patch(c, bad, j_, 0, &out_, err)))
BAD_CALL(bc_patch_ops, WITH_JSON(json_pack("[{s:s,s:s,s:o}]", "op", "add", "path", "/a",
                                           "value", bad_str(bad)),
                                 surpool_conn_patch(c, "t:1", j_, 0, &out_, err)))
BAD_CALL(bc_delete, rc_ = surpool_conn_delete(c, bad, &out_, err))
BAD_CALL(bc_relate_from, rc_ = surpool_conn_relate(c, bad, "e", "t:2", NULL, &out_, err))
BAD_CALL(bc_relate_table, rc_ = surpool_conn_relate(c, "t:1", bad, "t:2", NULL, &out_, err))
BAD_CALL(bc_relate_to, rc_ = surpool_conn_relate(c, "t:1", "e", bad, NULL, &out_, err))
BAD_CALL(bc_relate_data,
         WITH_JSON(bad_key_obj(bad), surpool_conn_relate(c, "t:1", "e", "t:2", j_, &out_, err)))
BAD_CALL(bc_run_fn, rc_ = surpool_conn_run(c, bad, NULL, NULL, &out_, err))
BAD_CALL(bc_run_version, rc_ = surpool_conn_run(c, "fn::f", bad, NULL, &out_, err))
BAD_CALL(bc_run_args, WITH_JSON(json_pack("[o]", bad_str(bad)),
                                surpool_conn_run(c, "fn::f", NULL, j_, &out_, err)))
BAD_CALL(bc_pool_query_sql, rc_ = surpool_query(p, bad, NULL, &out_, err))
BAD_CALL(bc_pool_query_var, WITH_JSON(json_pack("{s:o}", "v", bad_str(bad)),
                                      surpool_query(p, "RETURN $v", j_, &out_, err)))
BAD_CALL(bc_pool_call_method, rc_ = surpool_call(p, bad, NULL, &out_, err))
BAD_CALL(bc_pool_call_param,
         WITH_JSON(json_pack("[o]", bad_str(bad)), surpool_call(p, "query", j_, &out_, err)))
BAD_CALL(bc_pool_query_async,
         rc_ = surpool_query_async(p, bad, NULL, async_never, &g_async_calls);
         if (rc_ != SURPOOL_OK && err != NULL)
             snprintf(err->message, sizeof(err->message), "(async: no message) UTF-8"))
BAD_CALL(bc_pool_call_async,
         WITH_JSON(json_pack("[o]", bad_key_obj(bad)),
                   surpool_call_async(p, "query", j_, async_never, &g_async_calls));
         if (rc_ != SURPOOL_OK && err != NULL)
             snprintf(err->message, sizeof(err->message), "(async: no message) UTF-8"))

static const struct {
    const char *name;
    bad_call_fn fn;
    int ascii_rule; /* refused by a stricter rule of its own ([a-z_]+ and the like) */
} g_bad_calls[] = {
    {"conn_call method", bc_call_method, 1},
    {"conn_call params string", bc_call_param, 0},
    {"conn_call params key", bc_call_key, 0},
    {"conn_query sql", bc_query_sql, 0},
    {"conn_query vars string", bc_query_var, 0},
    {"conn_query vars key", bc_query_key, 0},
    {"conn_use ns", bc_use_ns, 0},
    {"conn_use db", bc_use_db, 0},
    {"conn_signin user", bc_signin_user, 0},
    {"conn_signin pass", bc_signin_pass, 0},
    {"conn_signin ns", bc_signin_ns, 0},
    {"conn_signin db", bc_signin_db, 0},
    {"conn_signin access", bc_signin_access, 0},
    {"conn_signin vars", bc_signin_vars, 0},
    {"conn_signup ns", bc_signup_ns, 0},
    {"conn_signup db", bc_signup_db, 0},
    {"conn_signup access", bc_signup_ac, 0},
    {"conn_signup vars key", bc_signup_vars, 0},
    {"conn_authenticate token", bc_authenticate, 0},
    {"conn_let name", bc_let_name, 1},
    {"conn_let value", bc_let_value, 0},
    {"conn_unset name", bc_unset, 1},
    {"conn_select thing", bc_select, 0},
    {"conn_create thing", bc_create, 0},
    {"conn_create data", bc_create_data, 0},
    {"conn_insert table", bc_insert, 0},
    {"conn_insert data key", bc_insert_data, 0},
    {"conn_update thing", bc_update, 0},
    {"conn_upsert data key", bc_upsert_data, 0},
    {"conn_merge data", bc_merge_data, 0},
    {"conn_patch thing", bc_patch, 0},
    {"conn_patch ops", bc_patch_ops, 0},
    {"conn_delete thing", bc_delete, 0},
    {"conn_relate from", bc_relate_from, 0},
    {"conn_relate table", bc_relate_table, 0},
    {"conn_relate to", bc_relate_to, 0},
    {"conn_relate data key", bc_relate_data, 0},
    {"conn_run fn", bc_run_fn, 0},
    {"conn_run version", bc_run_version, 0},
    {"conn_run args", bc_run_args, 0},
    {"surpool_query sql", bc_pool_query_sql, 0},
    {"surpool_query vars", bc_pool_query_var, 0},
    {"surpool_call method", bc_pool_call_method, 1},
    {"surpool_call params", bc_pool_call_param, 0},
    {"surpool_query_async sql", bc_pool_query_async, 0},
    {"surpool_call_async params key", bc_pool_call_async, 0},
};

static void test_invalid_utf8_inputs(void **state)
{
    (void)state;
    test_server s;
    const char *args[] = {"--user", "root", "--pass", "root", NULL};
    if (harness_start(&s, "server.mjs", 0, args) != 0)
        fail_msg("cannot start tests/server/server.mjs");
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = s.url;
    cfg.user = "root";
    cfg.pass = "root";
    cfg.ns = "utf8";
    cfg.db = "utf8";
    cfg.max_connections = 4;
    surpool_pool *p = NULL;
    surpool_error err;
    assert_int_equal(surpool_pool_create(&cfg, &p, &err), SURPOOL_OK);
    fu_watchdog(120, "invalid UTF-8 inputs");
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(p, 10000, &c, &err), SURPOOL_OK);
    /* Warm the lane up so that its connections are not counted below. */
    json_t *out = NULL;
    assert_int_equal(surpool_query(p, "RETURN 1", NULL, &out, &err), SURPOOL_OK);
    json_decref(out);

    for (size_t i = 0; i < sizeof(g_bad_calls) / sizeof(g_bad_calls[0]); i++) {
        for (size_t k = 0; k < sizeof(g_bad_utf8) / sizeof(g_bad_utf8[0]); k++) {
            surpool_stats before, after;
            surpool_pool_stats(p, &before);
            memset(&err, 0, sizeof(err));
            surpool_err rc = g_bad_calls[i].fn(p, c, g_bad_utf8[k], &err);
            surpool_pool_stats(p, &after);
            if (rc != SURPOOL_ERR_INVALID_ARG)
                fail_msg("%s with bad string #%zu: expected %s, got %s (%s)",
                         g_bad_calls[i].name, k, surpool_strerror(SURPOOL_ERR_INVALID_ARG),
                         surpool_strerror(rc), err.message);
            if (!g_bad_calls[i].ascii_rule && strstr(err.message, "UTF-8") == NULL)
                fail_msg("%s with bad string #%zu: the message does not say UTF-8: %s",
                         g_bad_calls[i].name, k, err.message);
            /* Nothing was sent: no request completed, none went to the lane. */
            if (after.requests != before.requests ||
                after.lane_requests != before.lane_requests)
                fail_msg("%s with bad string #%zu: a request was sent", g_bad_calls[i].name, k);
        }
    }
    /* The lease is as good as before: nothing half-sent broke it. */
    assert_int_equal(surpool_conn_ping(c, &err), SURPOOL_OK);
    surpool_conn_release(c);
    assert_int_equal(atomic_load(&g_async_calls), 0); /* refused: no callback */
    fu_watchdog(0, NULL);
    surpool_pool_destroy(p);

    /* Config strings: refused at create, naming the field. */
    static const char *const fields[] = {"ns",     "db",    "user",     "pass",
                                         "access", "token", "init_sql", "signin_params"};
    for (size_t f = 0; f < sizeof(fields) / sizeof(fields[0]); f++) {
        for (size_t k = 0; k < sizeof(g_bad_utf8) / sizeof(g_bad_utf8[0]); k++) {
            const char *bad = g_bad_utf8[k];
            surpool_config_init(&cfg);
            cfg.url = s.url;
            cfg.lazy_start = 1;
            json_t *sp = NULL;
            switch (f) {
            case 0: cfg.ns = bad; break;
            case 1: cfg.ns = "n", cfg.db = bad; break;
            case 2: cfg.user = bad, cfg.pass = "p"; break;
            case 3: cfg.user = "u", cfg.pass = bad; break;
            case 4:
                cfg.user = "u", cfg.pass = "p", cfg.ns = "n", cfg.db = "d", cfg.access = bad;
                break;
            case 5: cfg.token = bad; break;
            case 6: cfg.init_sql = bad; break;
            default:
                sp = json_pack("{s:s,s:o}", "user", "u", "pass", bad_str(bad));
                cfg.signin_params = sp;
                break;
            }
            p = NULL;
            memset(&err, 0, sizeof(err));
            surpool_err rc = surpool_pool_create(&cfg, &p, &err);
            if (p != NULL)
                surpool_pool_destroy(p);
            json_decref(sp);
            if (rc != SURPOOL_ERR_INVALID_ARG || strstr(err.message, fields[f]) == NULL ||
                strstr(err.message, "UTF-8") == NULL)
                fail_msg("config.%s with bad string #%zu: expected %s naming the field, got "
                         "%s (%s)",
                         fields[f], k, surpool_strerror(SURPOOL_ERR_INVALID_ARG),
                         surpool_strerror(rc), err.message);
        }
    }
    harness_stop(&s);
}

int main(void)
{
    if (getenv("SURPOOL_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("SURPOOL_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_secrets_never_logged, setup),
        cmocka_unit_test_setup(test_tls, setup),
        cmocka_unit_test_setup(test_receive_limit, setup),
        cmocka_unit_test_setup(test_url_rejects, setup),
        cmocka_unit_test_setup(test_invalid_utf8_inputs, setup),
    };
    return cmocka_run_group_tests_name("security", tests, NULL, NULL);
}
