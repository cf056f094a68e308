/*
 * Unit tests for src/url.c: a table of good and bad URLs, allocation failures,
 * and the promise that a password never appears in a message and is wiped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "url.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Every password in the table contains SECRET (possibly split by a delimiter);
 * no message may contain either half. */
#define SECRET_A "S3C"
#define SECRET_B "R3T"

struct url_case {
    const char *url;
    surpool_err rc;
    int tls;
    const char *host;
    int port;
    const char *path;
    const char *user;
    const char *pass;
    const char *ns;
    const char *db;
    const char *ac;
    const char *msg_sub; /* bad rows: expected substring of the message */
};

#define GOOD(u, tls, host, port, path, user, pass, ns, db, ac)                                 \
    {                                                                                          \
        u, SURPOOL_OK, tls, host, port, path, user, pass, ns, db, ac, NULL                     \
    }
#define BAD(u, sub)                                                                            \
    {                                                                                          \
        u, SURPOOL_ERR_INVALID_ARG, 0, NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, sub        \
    }

static const struct url_case url_cases[] = {
    /* ---- good ---- */
    GOOD("ws://localhost:8000/rpc", 0, "localhost", 8000, "/rpc", NULL, NULL, NULL, NULL, NULL),
    GOOD("ws://localhost", 0, "localhost", 80, "/rpc", NULL, NULL, NULL, NULL, NULL),
    GOOD("wss://db.example.com", 1, "db.example.com", 443, "/rpc", NULL, NULL, NULL, NULL,
         NULL),
    GOOD("WSS://Example.COM:8443/rpc", 1, "Example.COM", 8443, "/rpc", NULL, NULL, NULL, NULL,
         NULL),
    GOOD("Ws://h", 0, "h", 80, "/rpc", NULL, NULL, NULL, NULL, NULL),
    GOOD("ws://127.0.0.1:8000", 0, "127.0.0.1", 8000, "/rpc", NULL, NULL, NULL, NULL, NULL),
    GOOD("ws://0.0.0.0:1", 0, "0.0.0.0", 1, "/rpc", NULL, NULL, NULL, NULL, NULL),
    GOOD("ws://255.255.255.255:65535", 0, "255.255.255.255", 65535, "/rpc", NULL, NULL, NULL,
         NULL, NULL),
    GOOD("ws://[::1]:8000/rpc", 0, "::1", 8000, "/rpc", NULL, NULL, NULL, NULL, NULL),
    /* names that merely contain digits or hex are names */
    GOOD("ws://0x7f.example", 0, "0x7f.example", 80, "/rpc", NULL, NULL, NULL, NULL, NULL),
    GOOD("ws://1e100.net", 0, "1e100.net", 80, "/rpc", NULL, NULL, NULL, NULL, NULL),
    GOOD("ws://deadbeef", 0, "deadbeef", 80, "/rpc", NULL, NULL, NULL, NULL, NULL),
    GOOD("ws://0xg", 0, "0xg", 80, "/rpc", NULL, NULL, NULL, NULL, NULL),
    GOOD("ws://h.1x", 0, "h.1x", 80, "/rpc", NULL, NULL, NULL, NULL, NULL),
    GOOD("ws://[::1]", 0, "::1", 80, "/rpc", NULL, NULL, NULL, NULL, NULL),
    GOOD("ws://[::]", 0, "::", 80, "/rpc", NULL, NULL, NULL, NULL, NULL),
    GOOD("wss://[2001:DB8::8a2e:370:7334]/", 1, "2001:DB8::8a2e:370:7334", 443, "/", NULL, NULL,
         NULL, NULL, NULL),
    GOOD("ws://[::ffff:192.168.0.1]:1", 0, "::ffff:192.168.0.1", 1, "/rpc", NULL, NULL, NULL,
         NULL, NULL),
    GOOD("ws://[1:2:3:4:5:6:7:8]:65535", 0, "1:2:3:4:5:6:7:8", 65535, "/rpc", NULL, NULL, NULL,
         NULL, NULL),
    GOOD("ws://[1::]", 0, "1::", 80, "/rpc", NULL, NULL, NULL, NULL, NULL),
    GOOD("ws://[1:2:3:4:5:6:1.2.3.4]", 0, "1:2:3:4:5:6:1.2.3.4", 80, "/rpc", NULL, NULL, NULL,
         NULL, NULL),
    GOOD("ws://root:S3CR3T@localhost:8000/rpc", 0, "localhost", 8000, "/rpc", "root", "S3CR3T",
         NULL, NULL, NULL),
    GOOD("ws://root@localhost", 0, "localhost", 80, "/rpc", "root", NULL, NULL, NULL, NULL),
    GOOD("ws://us%40er:S3C%3A%2F%3F%23%25R3T@h", 0, "h", 80, "/rpc", "us@er", "S3C:/?#%R3T",
         NULL, NULL, NULL),
    GOOD("ws://u:S3C:R3T@h", 0, "h", 80, "/rpc", "u", "S3C:R3T", NULL, NULL, NULL),
    GOOD("ws://u:S3C+R3T@h", 0, "h", 80, "/rpc", "u", "S3C+R3T", NULL, NULL, NULL),
    GOOD("ws://u:%C3%A9S3CR3T@h", 0, "h", 80, "/rpc", "u", "\xc3\xa9S3CR3T", NULL, NULL, NULL),
    GOOD("ws://u:\xc3\xa9S3CR3T@h", 0, "h", 80, "/rpc", "u", "\xc3\xa9S3CR3T", NULL, NULL,
         NULL),
    GOOD("ws://h/rpc?ns=test&db=test", 0, "h", 80, "/rpc", NULL, NULL, "test", "test", NULL),
    GOOD("ws://h?ns=a&db=b&ac=user", 0, "h", 80, "/rpc", NULL, NULL, "a", "b", "user"),
    GOOD("ws://h/rpc?ac=x&db=y&ns=z", 0, "h", 80, "/rpc", NULL, NULL, "z", "y", "x"),
    GOOD("ws://h/rpc?db=x%20y&ns=a+b", 0, "h", 80, "/rpc", NULL, NULL, "a+b", "x y", NULL),
    GOOD("ws://h/?ns=%C2%B5", 0, "h", 80, "/", NULL, NULL, "\xc2\xb5", NULL, NULL),
    GOOD("ws://h/rpc?ns=\xc2\xb5", 0, "h", 80, "/rpc", NULL, NULL, "\xc2\xb5", NULL, NULL),
    GOOD("ws://h?ns=a=b", 0, "h", 80, "/rpc", NULL, NULL, "a=b", NULL, NULL),
    GOOD("ws://h/rpc?", 0, "h", 80, "/rpc", NULL, NULL, NULL, NULL, NULL),
    GOOD("ws://my_db-1.local.:8000", 0, "my_db-1.local.", 8000, "/rpc", NULL, NULL, NULL, NULL,
         NULL),
    GOOD("ws://h/a/b%2Fc/rpc", 0, "h", 80, "/a/b%2Fc/rpc", NULL, NULL, NULL, NULL, NULL),
    GOOD("ws://h/a:b%40c;d=e,f!$&'()*+~", 0, "h", 80, "/a:b%40c;d=e,f!$&'()*+~", NULL, NULL,
         NULL, NULL, NULL),
    GOOD("ws://h:08000", 0, "h", 8000, "/rpc", NULL, NULL, NULL, NULL, NULL),
    GOOD("wss://u:S3CR3T@[::1]:8000/rpc?ns=n&db=d&ac=a", 1, "::1", 8000, "/rpc", "u", "S3CR3T",
         "n", "d", "a"),
    GOOD("ws://123.example.com", 0, "123.example.com", 80, "/rpc", NULL, NULL, NULL, NULL,
         NULL),

    /* ---- bad: scheme and structure ---- */
    BAD(NULL, "empty"),
    BAD("", "empty"),
    BAD("http://localhost:8000", "ws://"),
    BAD("localhost:8000", "ws://"),
    BAD("ws:/localhost", "ws://"),
    BAD("ws:localhost", "ws://"),
    BAD("wss:", "ws://"),
    BAD("ws://", "empty host"),
    BAD("wss:///rpc", "empty host"),
    BAD("ws://?ns=a", "empty host"),
    BAD("ws://:8000", "empty host"),
    BAD("ws://u:S3CR3T@", "empty host"),
    BAD("ws://u:S3CR3T@/rpc", "empty host"),
    /* ---- bad: port ---- */
    BAD("ws://h:", "empty port"),
    BAD("ws://h:0", "between 1 and 65535"),
    BAD("ws://h:00", "between 1 and 65535"),
    BAD("ws://h:65536", "between 1 and 65535"),
    BAD("ws://h:99999999999999999999", "between 1 and 65535"),
    BAD("ws://h:+80", "decimal"),
    BAD("ws://h:-1", "decimal"),
    BAD("ws://h:80a", "decimal"),
    BAD("ws://h:0x50", "decimal"),
    BAD("ws://h:8000:9000", "decimal"),
    /* ---- bad: characters, fragment ---- */
    BAD("ws://h /rpc", "space"),
    BAD("ws://h/r\tpc", "control"),
    BAD("ws://h/rpc\x7f", "control"),
    BAD("ws://h/rpc\n", "control"),
    BAD("ws://h/rpc#frag", "fragment"),
    BAD("ws://h/rpc?ns=a#x", "fragment"),
    BAD("ws://h#", "fragment"),
    /* ---- bad: query ---- */
    BAD("ws://h/rpc?foo=1", "unknown query parameter"),
    BAD("ws://h/rpc?NS=a", "unknown query parameter"),
    BAD("ws://h/rpc?sc=a", "unknown query parameter"),
    BAD("ws://h/rpc?n%73=a", "unknown query parameter"),
    BAD("ws://h/rpc?ns=a&ns=b", "twice"),
    BAD("ws://h/rpc?db=a&ns=n&db=a", "twice"),
    BAD("ws://h/rpc?ns=", "empty"),
    BAD("ws://h/rpc?ns=a&db=", "empty"),
    BAD("ws://h/rpc?ns", "without '=value'"),
    BAD("ws://h/rpc?=a", "unknown query parameter"),
    BAD("ws://h/rpc?ns=a&", "stray"),
    BAD("ws://h/rpc?&ns=a", "stray"),
    BAD("ws://h/rpc?ns=a&&db=b", "stray"),
    BAD("ws://h?ns=%00", "NUL"),
    BAD("ws://h?ns=%zz", "percent-escape"),
    BAD("ws://h?ns=%4", "percent-escape"),
    BAD("ws://h?ns=%", "percent-escape"),
    BAD("ws://h?ns=%ff", "UTF-8"),
    BAD("ws://h?db=%ED%A0%80", "UTF-8"), /* an encoded surrogate */
    BAD("ws://h?ac=%C0%AF", "UTF-8"),    /* overlong '/' */
    /* ---- bad: user info (the password must never show up) ---- */
    BAD("ws://u%00:S3CR3T@h", "NUL"),
    BAD("ws://u:S3C%00R3T@h", "NUL"),
    BAD("ws://u:S3C%R3T@h", "percent-escape"),
    BAD("ws://u:S3C%fR3T@h", "percent-escape"),
    BAD("ws://u:S3C%ffR3T@h", "UTF-8"),
    BAD("ws://u:S3C\xffR3T@h", "UTF-8"),
    BAD("ws://:S3CR3T@h", "empty user"),
    BAD("ws://u:@h", "empty password"),
    BAD("ws://@h", "empty user"),
    BAD("ws://a@S3C@R3T", "more than one '@'"),
    BAD("ws://root:S3C/R3T@h", "percent-encode"),
    BAD("ws://root:S3C?R3T@h", "percent-encode"),
    BAD("ws://root:S3C#R3T@h", "fragment"),
    BAD("ws://root:S3C R3T@h", "space"),
    BAD("ws://S3C/R3T@h", "percent-encode"),
    /* ---- bad: IPv6 ---- */
    BAD("ws://[::1", "closing ']'"),
    BAD("ws://[::1]x", "after the IPv6"),
    BAD("ws://[::1]:", "empty port"),
    BAD("ws://[::1]:x", "decimal"),
    BAD("ws://[]", "IPv6"),
    BAD("ws://[1:2:3:4:5:6:7:8:9]", "IPv6"),
    BAD("ws://[1:2:3:4:5:6:7]", "IPv6"),
    BAD("ws://[1:2:3:4::5:6:7:8]", "IPv6"),
    BAD("ws://[::1::2]", "IPv6"),
    BAD("ws://[:1]", "IPv6"),
    BAD("ws://[1:]", "IPv6"),
    BAD("ws://[1:::2]", "IPv6"),
    BAD("ws://[fe80::1%25eth0]", "zone"),
    BAD("ws://[12345::]", "IPv6"),
    BAD("ws://[g::1]", "IPv6"),
    BAD("ws://[::1.2.3]", "IPv6"),
    BAD("ws://[::1.2.3.4:5]", "IPv6"),
    BAD("ws://[localhost]", "IPv6"),
    BAD("ws://::1", "empty host"),
    /* ---- bad: IPv4 and names ---- */
    BAD("ws://1.2.3", "IPv4"),
    BAD("ws://256.1.1.1", "IPv4"),
    BAD("ws://01.2.3.4", "IPv4"),
    BAD("ws://1.2.3.4.5", "IPv4"),
    BAD("ws://1.2.3.4.", "IPv4"),
    BAD("ws://12345", "IPv4"),
    /* hex, octal and short forms: every host whose last label is a number must
     * be a strict dotted quad, or a resolver reads it the inet_aton way */
    BAD("ws://127.1", "IPv4"),
    BAD("ws://0x7f000001", "IPv4"),
    BAD("ws://0X7F000001", "IPv4"),
    BAD("ws://0x7f.1", "IPv4"),
    BAD("ws://0x7f.0.0.1", "IPv4"),
    BAD("ws://127.0.0.0x1", "IPv4"),
    BAD("ws://0177.0.0.1", "IPv4"),
    BAD("ws://0x", "IPv4"),
    BAD("ws://0x.", "IPv4"),
    BAD("ws://2130706433", "IPv4"),
    BAD("ws://2130706433:8000/rpc", "IPv4"),
    BAD("ws://example.123", "IPv4"),
    BAD("ws://example.0x1f", "IPv4"),
    BAD("ws://0x7f000001.", "IPv4"),
    BAD("ws://h..x", "host name"),
    BAD("ws://.h", "host name"),
    BAD("ws://h..", "host name"),
    BAD("ws://.", "host name"),
    BAD("ws://-h", "host name"),
    BAD("ws://h-.x", "host name"),
    BAD("ws://ho%73t", "host name"),
    BAD("ws://h!/rpc", "host name"),
    BAD("ws://h\xc3\xa9", "host name"),
    /* ---- bad: path ---- */
    BAD("ws://h/r\"pc", "path"),
    BAD("ws://h/r\\pc", "path"),
    BAD("ws://h/r{pc}", "path"),
    BAD("ws://h/r%zpc", "percent-escape"),
    BAD("ws://h/rpc%", "percent-escape"),
    BAD("ws://h/rpc%4", "percent-escape"),
    BAD("ws://h/\xc3\xa9", "path"),
    BAD("ws://h/a@b", "'@' in the path"),
};

static void assert_str_or_null(const char *got, const char *want, const char *url)
{
    if (want == NULL && got == NULL)
        return;
    if (want == NULL || got == NULL || strcmp(got, want) != 0)
        fail_msg("%s: got '%s', want '%s'", url, got ? got : "(null)", want ? want : "(null)");
}

static int is_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        if (b[i] != 0)
            return 0;
    }
    return 1;
}

static void check_url_case(const struct url_case *c, int with_err)
{
    surpool__url u;
    surpool_error err;
    memset(&u, 0x5A, sizeof(u));
    memset(&err, 0x5A, sizeof(err));
    surpool_err rc = surpool__url_parse(c->url, &u, with_err ? &err : NULL);
    if (rc != c->rc)
        fail_msg("%s: rc %d, want %d (%s)", c->url ? c->url : "(null)", rc, c->rc,
                 with_err ? err.message : "");
    if (rc != SURPOOL_OK) {
        assert_true(is_zero(&u, sizeof(u)));
        if (with_err) {
            assert_int_equal(err.code, rc);
            assert_true(strlen(err.message) > 0);
            if (strstr(err.message, c->msg_sub) == NULL)
                fail_msg("%s: message '%s' lacks '%s'", c->url ? c->url : "(null)", err.message,
                         c->msg_sub);
            if (strstr(err.message, SECRET_A) != NULL || strstr(err.message, SECRET_B) != NULL)
                fail_msg("%s: message leaks the password: '%s'", c->url, err.message);
        }
        return;
    }
    assert_int_equal(u.tls, c->tls);
    assert_str_or_null(u.host, c->host, c->url);
    assert_int_equal(u.port, c->port);
    assert_str_or_null(u.path, c->path, c->url);
    assert_str_or_null(u.user, c->user, c->url);
    assert_str_or_null(u.pass, c->pass, c->url);
    assert_str_or_null(u.ns, c->ns, c->url);
    assert_str_or_null(u.db, c->db, c->url);
    assert_str_or_null(u.access, c->ac, c->url);
    surpool__url_free(&u);
    assert_true(is_zero(&u, sizeof(u)));
}

static void test_url_table(void **state)
{
    (void)state;
    size_t good = 0;
    for (size_t i = 0; i < ARRAY_LEN(url_cases); i++) {
        check_url_case(&url_cases[i], 1);
        check_url_case(&url_cases[i], 0);
        good += url_cases[i].rc == SURPOOL_OK;
    }
    assert_true(good >= 20);
    assert_true(ARRAY_LEN(url_cases) - good >= 40);
}

static void test_url_args(void **state)
{
    (void)state;
    surpool_error err;
    assert_int_equal(surpool__url_parse("ws://h", NULL, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool__url_parse("ws://h", NULL, NULL), SURPOOL_ERR_INVALID_ARG);
    surpool__url_free(NULL);
    surpool__url u;
    assert_int_equal(surpool__url_parse("ws://u:p@h", &u, NULL), SURPOOL_OK);
    surpool__url_free(&u);
    surpool__url_free(&u); /* zeroed: a second free is harmless */
}

/* Host name limits: 63-byte labels, 253-byte names. */
static void test_url_host_limits(void **state)
{
    (void)state;
    char url[400];
    char label[70];
    surpool__url u;

    memset(label, 'a', 63);
    label[63] = '\0';
    snprintf(url, sizeof(url), "ws://%s.example", label);
    assert_int_equal(surpool__url_parse(url, &u, NULL), SURPOOL_OK);
    surpool__url_free(&u);
    snprintf(url, sizeof(url), "ws://%sa.example", label);
    assert_int_equal(surpool__url_parse(url, &u, NULL), SURPOOL_ERR_INVALID_ARG);

    /* 4 labels of 63 + 3 dots = 255; trim to exactly 253, then 254. */
    char host[300];
    snprintf(host, sizeof(host), "%s.%s.%s.%s", label, label, label, label);
    host[253] = '\0';
    assert_int_not_equal(host[252], '.');
    snprintf(url, sizeof(url), "ws://%s:1", host);
    assert_int_equal(surpool__url_parse(url, &u, NULL), SURPOOL_OK);
    assert_int_equal(strlen(u.host), 253);
    surpool__url_free(&u);
    snprintf(url, sizeof(url), "ws://%s.:1", host); /* trailing dot is free */
    assert_int_equal(surpool__url_parse(url, &u, NULL), SURPOOL_OK);
    surpool__url_free(&u);
    snprintf(host, sizeof(host), "%s.%s.%s.%s", label, label, label, label);
    host[254] = '\0';
    snprintf(url, sizeof(url), "ws://%s:1", host);
    assert_int_equal(surpool__url_parse(url, &u, NULL), SURPOOL_ERR_INVALID_ARG);
}

/* The path goes into the HTTP upgrade request, which libwebsockets builds in a
 * 4096-byte header buffer: longer than SURPOOL__URL_PATH_MAX is refused here,
 * before it can reach libwebsockets (issue 9 item 8). */
static void test_url_path_limit(void **state)
{
    (void)state;
    size_t cap = SURPOOL__URL_PATH_MAX + 64;
    char *url = malloc(cap);
    assert_non_null(url);
    surpool__url u;
    surpool_error err;
    for (size_t n = SURPOOL__URL_PATH_MAX - 1; n <= SURPOOL__URL_PATH_MAX + 1; n++) {
        int k = snprintf(url, cap, "ws://h/");
        memset(url + k, 'p', n - 1); /* the '/' counts */
        url[k + n - 1] = '\0';
        surpool_err rc = surpool__url_parse(url, &u, &err);
        if (n <= SURPOOL__URL_PATH_MAX) {
            assert_int_equal(rc, SURPOOL_OK);
            assert_int_equal(strlen(u.path), n);
            surpool__url_free(&u);
        } else {
            assert_int_equal(rc, SURPOOL_ERR_INVALID_ARG);
            assert_non_null(strstr(err.message, "path"));
            assert_non_null(strstr(err.message, "limit"));
        }
    }
    /* The query does not count: it is ours, not sent. */
    int k = snprintf(url, cap, "ws://h/rpc?ns=");
    memset(url + k, 'n', SURPOOL__URL_PATH_MAX);
    url[k + SURPOOL__URL_PATH_MAX] = '\0';
    assert_int_equal(surpool__url_parse(url, &u, &err), SURPOOL_OK);
    surpool__url_free(&u);
    free(url);
}

/* ---- allocator hooks ------------------------------------------------------ */

static long g_fail_at = -1;
static long g_calls;
static const char *g_watch; /* a buffer whose contents free() must find wiped */
static size_t g_watch_len;
static int g_watch_seen;

static void *failing_malloc(size_t n)
{
    if (g_fail_at >= 0 && g_calls++ == g_fail_at)
        return NULL;
    return malloc(n);
}

static void *failing_realloc(void *p, size_t n)
{
    if (g_fail_at >= 0 && g_calls++ == g_fail_at)
        return NULL;
    return realloc(p, n);
}

static void watching_free(void *p)
{
    if (p != NULL && p == g_watch) {
        g_watch_seen = 1;
        assert_true(is_zero(p, g_watch_len));
    }
    free(p);
}

static int restore_allocator(void **state)
{
    (void)state;
    g_fail_at = -1;
    g_watch = NULL;
    surpool_set_allocator(NULL, NULL, NULL);
    return 0;
}

/* Fail each allocation in turn: NOMEM, *out zeroed, nothing leaked (ASan). */
static void test_url_nomem(void **state)
{
    (void)state;
    const char *url = "wss://us%40er:S3C%40R3T@[::1]:8000/x/rpc?ns=a&db=b&ac=c";
    surpool_set_allocator(failing_malloc, failing_realloc, free);
    long n;
    for (n = 0;; n++) {
        g_fail_at = n;
        g_calls = 0;
        surpool__url u;
        surpool_error err;
        surpool_err rc = surpool__url_parse(url, &u, &err);
        if (rc == SURPOOL_OK) {
            assert_string_equal(u.pass, "S3C@R3T");
            surpool__url_free(&u);
            break;
        }
        assert_int_equal(rc, SURPOOL_ERR_NOMEM);
        assert_true(is_zero(&u, sizeof(u)));
        assert_null(strstr(err.message, SECRET_A));
    }
    assert_int_equal(n, 7); /* user, pass, host, path, ns, db, ac */
}

/* surpool__url_free wipes the password before freeing it. */
static void test_url_pass_wiped(void **state)
{
    (void)state;
    surpool_set_allocator(malloc, realloc, watching_free);
    surpool__url u;
    assert_int_equal(surpool__url_parse("ws://root:S3CR3T@h", &u, NULL), SURPOOL_OK);
    g_watch = u.pass;
    g_watch_len = strlen(u.pass);
    g_watch_seen = 0;
    surpool__url_free(&u);
    assert_true(g_watch_seen);
    assert_null(u.pass);
}

/* Host lists ("ws://h1:p1,h2:p2/rpc", as libpq): one scheme, user info, path
 * and query for every host; each element checked as a single host is. */
static void test_url_host_list(void **state)
{
    (void)state;
    surpool__url *u = NULL;
    int n = 0;
    surpool_error err;
    assert_int_equal(surpool__url_parse_list("wss://root:S3C%2CR3T@a.example:8000,[::1],"
                                             "10.0.0.2:9/x/rpc?ns=n&db=d",
                                             &u, &n, &err),
                     SURPOOL_OK);
    assert_int_equal(n, 3);
    const char *hosts[] = {"a.example", "::1", "10.0.0.2"};
    int ports[] = {8000, 443, 9};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(u[i].tls, 1);
        assert_string_equal(u[i].host, hosts[i]);
        assert_int_equal(u[i].port, ports[i]);
        assert_string_equal(u[i].path, "/x/rpc");
        assert_string_equal(u[i].user, "root");
        assert_string_equal(u[i].pass, "S3C,R3T");
        assert_string_equal(u[i].ns, "n");
        assert_string_equal(u[i].db, "d");
    }
    surpool__url_free_list(u, n);
    /* One host is a list of one; an unencoded ',' in the password is fine
     * (the list starts after the '@'). */
    assert_int_equal(surpool__url_parse_list("ws://u:a,b@h:1", &u, &n, &err), SURPOOL_OK);
    assert_int_equal(n, 1);
    assert_string_equal(u[0].pass, "a,b");
    surpool__url_free_list(u, n);
    /* The same host in another case is the same node. */
    surpool__url x, y;
    assert_int_equal(surpool__url_parse("ws://Node1:8000", &x, NULL), SURPOOL_OK);
    assert_int_equal(surpool__url_parse("ws://node1:8000/other", &y, NULL), SURPOOL_OK);
    assert_true(surpool__url_same_endpoint(&x, &y));
    y.port = 8001;
    assert_false(surpool__url_same_endpoint(&x, &y));
    surpool__url_free(&x);
    surpool__url_free(&y);

    const struct {
        const char *url, *msg;
    } bad[] = {
        {"ws://a:1,,b:2/rpc", "host 2 of the host list is empty"},
        {"ws://,a:1/rpc", "host 1 of the host list is empty"},
        {"ws://a:1,/rpc", "host 2 of the host list is empty"},
        {"ws://u:" SECRET_A "@a:1,b:2,a:1/rpc", "host 3 of the host list repeats host 1"},
        {"ws://a,A/rpc", "repeats host 1"},
        {"ws://a:1,b:0/rpc", "host 2 of the host list: invalid URL: the port"},
        {"ws://a:1,b c/rpc", "space"},
        {"ws://a:1,0x7f.1/rpc", "host 2 of the host list: invalid URL: malformed IPv4"},
        {"http://a,b", "ws:// or wss://"},
        {"", "URL is empty"},
        /* The same node written two ways (review of issue 16): an IPv6
         * address in another text form, a name with its root '.'. */
        {"ws://[::1]:8,[0:0:0:0:0:0:0:1]:8/rpc", "host 2 of the host list repeats host 1"},
        {"ws://[2001:db8::1],[2001:DB8:0::1]", "repeats host 1"},
        {"ws://db.example.,DB.example/rpc", "repeats host 1"},
        /* Offsets are the caller's string's, not a rebuilt one's. */
        {"ws://a, b/rpc", "offset 7"},
        {"ws://a,b/rp c", "offset 11"},
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        u = NULL;
        n = -1;
        memset(&err, 0, sizeof(err));
        assert_int_equal(surpool__url_parse_list(bad[i].url, &u, &n, &err),
                         SURPOOL_ERR_INVALID_ARG);
        assert_null(u);
        assert_int_equal(n, 0);
        if (strstr(err.message, bad[i].msg) == NULL)
            fail_msg("'%s': message '%s' lacks '%s'", bad[i].url, err.message, bad[i].msg);
        assert_null(strstr(err.message, SECRET_A));
    }
    /* A mistake in a part every host shares (user info, path, query) is not
     * blamed on host 1: the message names no host. */
    const struct {
        const char *url, *msg;
    } shared[] = {
        {"ws://a,b?foo=1", "unknown query parameter"},
        {"ws://a,b/rpc?ns=x&ns=y", "given twice"},
        {"ws://a,b/p@x", "'@' in the path"},
        {"ws://a,b#frag", "fragments"},
        {"ws://@a,b", "empty user name"},
        {"ws://u:@a,b", "empty password"},
        {"ws://a,b/rpc/%zz", "percent-escape in the path"},
    };
    for (size_t i = 0; i < ARRAY_LEN(shared); i++) {
        memset(&err, 0, sizeof(err));
        assert_int_equal(surpool__url_parse_list(shared[i].url, &u, &n, &err),
                         SURPOOL_ERR_INVALID_ARG);
        if (strstr(err.message, shared[i].msg) == NULL || strstr(err.message, "host ") != NULL)
            fail_msg("'%s': message '%s' lacks '%s' or blames a host", shared[i].url,
                     err.message, shared[i].msg);
    }
    /* Credentials go before the first host: in "a:1,u:p@b:2" everything
     * before the '@' is user info (user "a", password "1,u:p"), as in a
     * single-host URL, where a ',' in a password needs no encoding. */
    assert_int_equal(surpool__url_parse_list("ws://a:1,u:p@b:2,c:3/rpc", &u, &n, &err),
                     SURPOOL_OK);
    assert_int_equal(n, 2);
    assert_string_equal(u[0].user, "a");
    assert_string_equal(u[0].host, "b");
    surpool__url_free_list(u, n);
    /* At most SURPOOL_MAX_ENDPOINTS hosts. */
    char big[2048];
    size_t off = (size_t)snprintf(big, sizeof(big), "ws://");
    for (int i = 0; i <= SURPOOL_MAX_ENDPOINTS; i++)
        off += (size_t)snprintf(big + off, sizeof(big) - off, "%sh%d", i ? "," : "", i);
    assert_int_equal(surpool__url_parse_list(big, &u, &n, &err), SURPOOL_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "the limit is"));
    big[off - 4] = '\0'; /* drop ",h32": exactly the limit */
    assert_int_equal(surpool__url_parse_list(big, &u, &n, &err), SURPOOL_OK);
    assert_int_equal(n, SURPOOL_MAX_ENDPOINTS);
    surpool__url_free_list(u, n);
    assert_int_equal(surpool__url_parse_list("ws://h", NULL, &n, &err),
                     SURPOOL_ERR_INVALID_ARG);
    surpool__url_free_list(NULL, 3);
}

/* Every allocation of a list parse failing in turn: NOMEM, nothing leaked. */
static void test_url_host_list_nomem(void **state)
{
    (void)state;
    surpool_set_allocator(failing_malloc, failing_realloc, free);
    for (long n = 0;; n++) {
        g_fail_at = n;
        g_calls = 0;
        surpool__url *u = NULL;
        int cnt = 0;
        surpool_err rc = surpool__url_parse_list("ws://u:p@a:1,b:2,c:3/rpc", &u, &cnt, NULL);
        if (rc == SURPOOL_OK) {
            surpool__url_free_list(u, cnt);
            break;
        }
        assert_int_equal(rc, SURPOOL_ERR_NOMEM);
        assert_null(u);
        assert_true(n < 100);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_url_host_list, restore_allocator),
        cmocka_unit_test_teardown(test_url_host_list_nomem, restore_allocator),
        cmocka_unit_test_teardown(test_url_table, restore_allocator),
        cmocka_unit_test_teardown(test_url_args, restore_allocator),
        cmocka_unit_test_teardown(test_url_host_limits, restore_allocator),
        cmocka_unit_test_teardown(test_url_path_limit, restore_allocator),
        cmocka_unit_test_teardown(test_url_nomem, restore_allocator),
        cmocka_unit_test_teardown(test_url_pass_wiped, restore_allocator),
    };
    return cmocka_run_group_tests_name("url", tests, NULL, NULL);
}
