/*
 * Sessions (surpool_session_*, docs/sessions.md) against the real SurrealDB
 * 3.0 core behind our test server, in the wire format SURPOOL_TEST_WIRE
 * names (json or cbor; tests/CMakeLists.txt runs the program once per
 * format). With SURPOOL_TEST_CORE=2 the server fronts the 2.x core, which has
 * no sessions: only the test that says so runs.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fake_transport.h"
#include "harness.h"
#include "lane.h"
#include "pool.h"
#include "testkit.h"

static test_server g_server;
static surpool_wire_format g_wire = SURPOOL_WIRE_JSON;

static int group_setup(void **state)
{
    (void)state;
    return harness_start_root(&g_server);
}

static int group_teardown(void **state)
{
    (void)state;
    harness_stop(&g_server);
    return 0;
}

/* A pool whose lane has `sockets` sockets (and one more connection for leases). */
static surpool_pool *make_pool(int sockets)
{
    surpool_config cfg;
    harness_root_config(&cfg, g_server.url, "sess");
    cfg.shared_connections = sockets;
    cfg.max_connections = sockets + 1;
    return tk_pool_create(&cfg);
}

static void must(surpool_err rc, const surpool_error *err, const char *what)
{
    if (rc != SURPOOL_OK)
        fail_msg("%s: %s (%s)", what, err->message, surpool_err_name(rc));
}

/* A root token, signed in on a lease (one password check for the test). */
static char *root_token(surpool_pool *p)
{
    surpool_conn *c = NULL;
    surpool_error err;
    must(tk_acquire(p, 30000, &c, &err), &err, "acquire");
    surpool_credentials cred = {0};
    cred.user = "root";
    cred.pass = "root";
    json_t *tok = NULL;
    must(surpool_conn_signin(c, &cred, &tok, &err), &err, "signin on a lease");
    tk_release(c);
    char *t = strdup(json_string_value(tok));
    json_decref(tok);
    return t;
}

static surpool_session *open_token(surpool_pool *p, const char *token)
{
    surpool_session_options o;
    surpool_session_options_init(&o);
    o.token = token;
    o.ns = "test";
    o.db = "sess";
    surpool_session *s = NULL;
    surpool_error err;
    must(surpool_session_open(p, &o, &s, &err), &err, "session open");
    return s;
}

/* The result of `sql`'s only statement, checked; a new reference. */
static json_t *one(surpool_session *s, const char *sql)
{
    json_t *out = NULL, *r = NULL;
    surpool_error err;
    must(surpool_session_query(s, sql, NULL, &out, &err), &err, sql);
    must(surpool_query_result(out, 0, &r, &err), &err, sql);
    json_decref(out);
    return r;
}

static long stat_of(const char *key)
{
    long v = harness_stat(&g_server, key);
    if (v < 0)
        fail_msg("GET /stats: no %s", key);
    return v;
}

/* A variable set in one session is invisible to another on the same socket. */
static void test_isolation(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(1);
    char *token = root_token(p);
    surpool_session *a = open_token(p, token), *b = open_token(p, token);
    int counts[4];
    assert_int_equal(surpool__lane_socket_sessions(surpool__pool_lane(p), counts, 4), 1);
    assert_int_equal(counts[0], 2); /* both on the one socket */
    surpool_error err;
    json_t *v = json_string("only a");
    must(surpool_session_let(a, "who", v, &err), &err, "let in a");
    json_decref(v);
    json_t *ra = one(a, "RETURN $who"), *rb = one(b, "RETURN $who");
    assert_string_equal(json_string_value(ra), "only a");
    assert_true(json_is_null(rb) ||
                surpool_value_type_of(rb) == SURPOOL_VALUE_NONE); /* unset */
    json_decref(ra);
    json_decref(rb);
    /* ns/db are per session too. */
    must(surpool_session_use(b, "other", "place", &err), &err, "use in b");
    json_t *da = one(a, "RETURN session::db()"), *db = one(b, "RETURN session::db()");
    assert_string_equal(json_string_value(da), "sess");
    assert_string_equal(json_string_value(db), "place");
    json_decref(da);
    json_decref(db);
    /* Refused up front: state that cannot move to another socket. */
    assert_int_equal(surpool_session_call(a, "begin", NULL, NULL, &err),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_session_call(a, "live", NULL, NULL, &err),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_session_call(a, "let", NULL, NULL, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_session_query(NULL, "RETURN 1", NULL, NULL, &err),
                     SURPOOL_ERR_INVALID_ARG);
    surpool_session_close(a);
    surpool_session_close(b);
    free(token);
    tk_pool_destroy(p);
}

/* Record users side by side on one socket each see only their own rows; a
 * wrong password is AUTH for that session only. */
static void test_record_users(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(1);
    json_t *out = NULL;
    surpool_error err;
    must(surpool_query(p,
                       "DEFINE ACCESS OVERWRITE acct ON DATABASE TYPE RECORD "
                       "SIGNUP (CREATE user SET name = $name, pass = $pass) "
                       "SIGNIN (SELECT * FROM user WHERE name = $name AND pass = $pass) "
                       "DURATION FOR TOKEN 1h, FOR SESSION 1h;"
                       "DEFINE TABLE OVERWRITE note SCHEMALESS PERMISSIONS FOR select, create "
                       "WHERE owner = $auth;",
                       NULL, &out, &err),
         &err, "define access");
    must(surpool_query_check(out, &err), &err, "define access statements");
    json_decref(out);

    surpool_session *u[2];
    const char *names[2] = {"alice", "bob"};
    for (int i = 0; i < 2; i++) {
        surpool_session_options o;
        surpool_session_options_init(&o);
        o.ns = "test";
        o.db = "sess";
        o.signup_access = "acct";
        json_t *vars = json_pack("{s:s, s:s}", "name", names[i], "pass", "secret");
        o.signup_vars = vars;
        must(surpool_session_open(p, &o, &u[i], &err), &err, "signup session");
        json_decref(vars);
        char sql[128];
        snprintf(sql, sizeof(sql), "CREATE note SET owner = $auth, text = '%s note'", names[i]);
        json_decref(one(u[i], sql));
    }
    for (int i = 0; i < 2; i++) {
        json_t *rows = one(u[i], "SELECT text FROM note");
        assert_int_equal(json_array_size(rows), 1);
        char want[32];
        snprintf(want, sizeof(want), "%s note", names[i]);
        assert_string_equal(json_string_value(json_object_get(json_array_get(rows, 0), "text")),
                            want);
        json_decref(rows);
    }
    /* Wrong password: AUTH, nothing left open, the others unaffected. */
    long before = stat_of("clientSessions");
    surpool_credentials bad = {0};
    bad.ns = "test";
    bad.db = "sess";
    bad.access = "acct";
    json_t *vars = json_pack("{s:s, s:s}", "name", "alice", "pass", "wrong");
    bad.vars = vars;
    surpool_session_options o;
    surpool_session_options_init(&o);
    o.signin = &bad;
    surpool_session *s = NULL;
    assert_int_equal(surpool_session_open(p, &o, &s, &err), SURPOOL_ERR_AUTH);
    assert_null(s);
    json_decref(vars);
    assert_int_equal(stat_of("clientSessions"), before);
    json_t *rows = one(u[1], "SELECT text FROM note");
    assert_int_equal(json_array_size(rows), 1);
    json_decref(rows);
    surpool_session_close(u[0]);
    surpool_session_close(u[1]);
    tk_pool_destroy(p);
}

/* ---- many sessions, concurrent queries -------------------------------- */

typedef struct {
    surpool_pool *pool;
    const char *token;
    surpool_session **s;
    int from, to;
    int failures;
    char why[320];
} many_arg;

static void *many_worker(void *arg)
{
    many_arg *a = arg;
    surpool_error err;
    for (int i = a->from; i < a->to && a->failures == 0; i++) {
        surpool_session_options o;
        surpool_session_options_init(&o);
        o.token = a->token;
        o.ns = "test";
        o.db = "sess";
        json_t *v = json_integer(i);
        if (surpool_session_open(a->pool, &o, &a->s[i], &err) != SURPOOL_OK ||
            surpool_session_let(a->s[i], "v", v, &err) != SURPOOL_OK) {
            snprintf(a->why, sizeof(a->why), "session %d: %s", i, err.message);
            a->failures++;
        }
        json_decref(v);
    }
    for (int round = 0; round < 2 && a->failures == 0; round++) {
        for (int i = a->from; i < a->to; i++) {
            json_t *out = NULL, *r = NULL;
            if (surpool_session_query(a->s[i], "RETURN $v", NULL, &out, &err) != SURPOOL_OK ||
                surpool_query_result(out, 0, &r, &err) != SURPOOL_OK) {
                snprintf(a->why, sizeof(a->why), "query %d: %s", i, err.message);
                a->failures++;
            } else if (json_integer_value(r) != i) {
                snprintf(a->why, sizeof(a->why), "session %d saw $v = %lld", i,
                         (long long)json_integer_value(r));
                a->failures++;
            }
            json_decref(r);
            json_decref(out);
        }
    }
    return NULL;
}

static void test_many_sessions(void **state)
{
    (void)state;
    enum { THREADS = 8 };
    const int n = TK_SANITIZED ? 200 : 1000;
    surpool_pool *p = make_pool(4);
    char *token = root_token(p);
    /* The lane grows by a socket when a session binds where every socket
     * already carries one; the acquirer connects it meanwhile, and sessions
     * opened faster than that all bind to the sockets already there (with
     * the acquirer slowed by 300 ms, the 4th socket came after all of them
     * and carried none). Grow the lane to its 4 sockets first, with sessions
     * of its own, closed again before the workers start. */
    surpool_session *warm[16];
    int nwarm = 0, counts[8];
    int64_t warm_end = tk_now_ms() + 20000 * TK_SLOW;
    for (;;) {
        int sockets = surpool__lane_socket_sessions(surpool__pool_lane(p), counts, 8);
        if (sockets >= 4)
            break;
        if (tk_now_ms() > warm_end || nwarm == 16)
            fail_msg("the lane has %d sockets after %d sessions, not 4", sockets, nwarm);
        warm[nwarm++] = open_token(p, token);
        int grew;
        TK_POLL(grew, surpool__lane_socket_sessions(surpool__pool_lane(p), counts, 8) > sockets,
                200);
        (void)grew; /* not yet: the next session asks again */
    }
    for (int i = 0; i < nwarm; i++)
        surpool_session_close(warm[i]);
    surpool_session **s = calloc((size_t)n, sizeof(*s));
    many_arg args[THREADS];
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) {
        args[t] = (many_arg){p, token, s, n * t / THREADS, n * (t + 1) / THREADS, 0, ""};
        assert_int_equal(pthread_create(&th[t], NULL, many_worker, &args[t]), 0);
    }
    for (int t = 0; t < THREADS; t++)
        JOIN_OR_FAIL(th[t], 60 * TK_SLOW, "a session worker");
    for (int t = 0; t < THREADS; t++)
        if (args[t].failures > 0)
            fail_msg("%s", args[t].why);
    /* Spread: every lane socket carries some. */
    int total = 0;
    int ns = surpool__lane_socket_sessions(surpool__pool_lane(p), counts, 8);
    assert_int_equal(ns, 4);
    for (int i = 0; i < ns; i++) {
        assert_true(counts[i] > 0);
        total += counts[i];
    }
    assert_int_equal(total, n);
    assert_int_equal(stat_of("clientSessions"), n);
    for (int i = 0; i < n; i++)
        surpool_session_close(s[i]);
    assert_int_equal(stat_of("clientSessions"), 0); /* close detaches on the server */
    free(s);
    free(token);
    tk_pool_destroy(p);
}

/* ---- the socket dies --------------------------------------------------- */

typedef struct {
    surpool_session *s;
    surpool_err rc;
} inflight_arg;

static void *inflight_worker(void *arg)
{
    inflight_arg *a = arg;
    surpool_error err;
    a->rc = surpool_session_query(a->s, "sleep(3s); RETURN 1", NULL, NULL, &err);
    return NULL;
}

/* Every lane socket is killed: a call in flight gets DISCONNECTED; the next
 * call rebuilds the session elsewhere (auth, ns/db, variables), and a
 * session whose token expired meanwhile signs in again. */
static void test_socket_killed(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(2);
    json_t *out = NULL;
    surpool_error err;
    must(surpool_query(p,
                       "DEFINE ACCESS OVERWRITE brief ON DATABASE TYPE RECORD "
                       "SIGNUP (CREATE buser SET name = $name, pass = $pass) "
                       "SIGNIN (SELECT * FROM buser WHERE name = $name AND pass = $pass) "
                       "DURATION FOR TOKEN 1s, FOR SESSION 1h;"
                       "DEFINE TABLE OVERWRITE buser SCHEMALESS PERMISSIONS FOR select "
                       "WHERE id = $auth;",
                       NULL, &out, &err),
         &err, "define access");
    must(surpool_query_check(out, &err), &err, "define access statement");
    json_decref(out);
    char *token = root_token(p);
    surpool_session *a = open_token(p, token), *b = open_token(p, token);
    surpool_session_options o;
    surpool_session_options_init(&o);
    o.ns = "test";
    o.db = "sess";
    o.signup_access = "brief";
    json_t *vars = json_pack("{s:s, s:s}", "name", "carol", "pass", "pw");
    o.signup_vars = vars;
    surpool_session *c = NULL;
    must(surpool_session_open(p, &o, &c, &err), &err, "record session");
    json_decref(vars);
    json_t *v = json_string("kept");
    must(surpool_session_let(a, "x", v, &err), &err, "let a");
    must(surpool_session_let(c, "x", v, &err), &err, "let c");
    json_decref(v);
    must(surpool_session_use(b, "test", "elsewhere", &err), &err, "use b");

    inflight_arg ia = {a, SURPOOL_OK};
    pthread_t th;
    long req0 = stat_of("requests");
    assert_int_equal(pthread_create(&th, NULL, inflight_worker, &ia), 0);
    /* The sleep is running once the server counts the request. */
    WAIT_UNTIL(stat_of("requests") > req0, 10000);
    tk_sleep_ms(1500); /* also lets c's 1 s token expire */
    long signins = stat_of("signins");
    assert_int_equal(harness_control(&g_server, "{\"dropAll\":true}"), 0);
    JOIN_OR_FAIL(th, 30 * TK_SLOW, "the call in flight on the killed socket");
    assert_int_equal(ia.rc, SURPOOL_ERR_DISCONNECTED);

    json_t *ra = one(a, "RETURN $x"), *rb = one(b, "RETURN session::db()");
    assert_string_equal(json_string_value(ra), "kept");
    assert_string_equal(json_string_value(rb), "elsewhere");
    json_decref(ra);
    json_decref(rb);
    json_t *rc = one(c, "RETURN [$x, $auth.name]");
    assert_string_equal(json_string_value(json_array_get(rc, 0)), "kept");
    assert_string_equal(json_string_value(json_array_get(rc, 1)), "carol");
    json_decref(rc);
    assert_true(stat_of("signins") > signins); /* c signed in again: its token expired */
    /* The killed sockets' sessions are gone on the server; the rebuilt ones count. */
    WAIT_UNTIL(stat_of("clientSessions") == 3, 10000);
    surpool_session_close(a);
    surpool_session_close(b);
    surpool_session_close(c);
    assert_int_equal(stat_of("clientSessions"), 0);
    free(token);
    tk_pool_destroy(p);
}

/* A session past its server-side expiry: the call refused for it (it did
 * not run) goes out again once the session re-authenticated with its token. */
static void test_session_expired(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(1);
    json_t *out = NULL;
    surpool_error err;
    must(surpool_query(p,
                       "DEFINE ACCESS OVERWRITE shortsess ON DATABASE TYPE RECORD "
                       "SIGNUP (CREATE suser SET name = $name) "
                       "SIGNIN (SELECT * FROM suser WHERE name = $name) "
                       "DURATION FOR TOKEN 1h, FOR SESSION 1s;",
                       NULL, &out, &err),
         &err, "define access");
    must(surpool_query_check(out, &err), &err, "define access statement");
    json_decref(out);
    surpool_session_options o;
    surpool_session_options_init(&o);
    o.ns = "test";
    o.db = "sess";
    o.signup_access = "shortsess";
    json_t *vars = json_pack("{s:s}", "name", "dave");
    o.signup_vars = vars;
    surpool_session *s = NULL;
    must(surpool_session_open(p, &o, &s, &err), &err, "record session");
    json_decref(vars);
    tk_sleep_ms(2500); /* its session (1 s, whole seconds) expires; its token (1 h) not */
    long auths = stat_of("authenticates");
    json_t *r = one(s, "RETURN 7");
    assert_int_equal(json_integer_value(r), 7);
    json_decref(r);
    assert_true(stat_of("authenticates") > auths); /* renewed with its token */
    surpool_session_close(s);
    tk_pool_destroy(p);
}

/* Destroying the pool with sessions open: they stay valid handles, calls on
 * them are CLOSED, close only frees (ASan checks nothing leaks or dangles). */
static void test_destroy_with_open_sessions(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(1);
    char *token = root_token(p);
    surpool_session *a = open_token(p, token), *b = open_token(p, token);
    json_t *v = json_integer(1);
    surpool_error err;
    must(surpool_session_let(a, "x", v, &err), &err, "let");
    json_decref(v);
    tk_pool_destroy(p);
    assert_int_equal(surpool_session_query(a, "RETURN 1", NULL, NULL, &err),
                     SURPOOL_ERR_CLOSED);
    surpool_session_close(a);
    surpool_session_close(b);
    WAIT_UNTIL(stat_of("clientSessions") == 0, 10000); /* the sockets closed */
    free(token);
}

/* Bad input is a clear INVALID_ARG, nothing sent, nothing left open. */
static void test_bad_input(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(1);
    surpool_session *s = (surpool_session *)0x1;
    surpool_error err;
    assert_int_equal(surpool_session_open(NULL, NULL, &s, &err), SURPOOL_ERR_INVALID_ARG);
    assert_null(s);
    assert_int_equal(surpool_session_open(p, NULL, NULL, &err), SURPOOL_ERR_INVALID_ARG);
    surpool_session_options o;
    surpool_session_options_init(&o);
    o.db = "only-db";
    assert_int_equal(surpool_session_open(p, &o, &s, &err), SURPOOL_ERR_INVALID_ARG);
    surpool_session_options_init(&o);
    surpool_credentials cred = {0};
    cred.user = "root";
    cred.pass = "root";
    o.signin = &cred;
    o.token = "also-a-token";
    assert_int_equal(surpool_session_open(p, &o, &s, &err), SURPOOL_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "at most one"));
    surpool_session_options_init(&o);
    o.signup_access = "acct"; /* signup needs ns and db */
    assert_int_equal(surpool_session_open(p, &o, &s, &err), SURPOOL_ERR_INVALID_ARG);
    assert_null(s);
    /* Not UTF-8: a bad argument before anything is sent (it was "out of
     * memory" from the rebuild, after attaching). */
    static const char *const bad[] = {"\xff", "ab\xc3\x28", "\xed\xa0\x80"};
    for (int i = 0; i < 3; i++) {
        for (int field = 0; field < 3; field++) {
            surpool_session_options_init(&o);
            o.ns = field == 0 ? bad[i] : "test";
            o.db = field == 1 ? bad[i] : "sess";
            o.token = field == 2 ? bad[i] : NULL;
            surpool_err brc = surpool_session_open(p, &o, &s, &err);
            if (brc != SURPOOL_ERR_INVALID_ARG || strstr(err.message, "UTF-8") == NULL)
                fail_msg("bad UTF-8 in field %d: %s: %s", field, surpool_err_name(brc),
                         err.message);
            assert_null(s);
        }
    }
    surpool_credentials badcred = {0};
    badcred.user = "root";
    badcred.pass = "pa\xffss";
    surpool_session_options_init(&o);
    o.signin = &badcred;
    assert_int_equal(surpool_session_open(p, &o, &s, &err), SURPOOL_ERR_INVALID_ARG);
    assert_null(strstr(err.message, "pa\xffss")); /* never echoed */
    surpool_session_options_init(&o);
    o.ns = "test";
    o.db = "sess";
    o.signup_access = "ac\xc3";
    assert_int_equal(surpool_session_open(p, &o, &s, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(stat_of("clientSessions"), 0);
    must(surpool_session_open(p, NULL, &s, &err), &err, "anonymous session");
    assert_int_equal(surpool_session_let(s, "n\xff", json_true(), &err),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_session_use(s, "test", "d\xff", &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_session_signin(s, &badcred, NULL, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(strlen(surpool_session_id(s)), 36);
    assert_int_equal(surpool_session_let(s, "", NULL, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_session_use(s, NULL, "db", &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_session_authenticate(s, "", &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_session_call(s, "reset", NULL, NULL, &err),
                     SURPOOL_ERR_INVALID_ARG);
    json_t *notarray = json_object();
    assert_int_equal(surpool_session_call(s, "query", notarray, NULL, &err),
                     SURPOOL_ERR_INVALID_ARG);
    json_decref(notarray);
    /* Anonymous: the test server refuses queries until it signs in (as a
     * real server started with credentials). */
    assert_int_equal(surpool_session_query(s, "RETURN 1", NULL, NULL, &err), SURPOOL_ERR_AUTH);
    must(surpool_session_signin(s, &cred, NULL, &err), &err, "signin in the session");
    json_t *r = one(s, "RETURN 1");
    assert_int_equal(json_integer_value(r), 1);
    json_decref(r);
    surpool_session_close(s);
    surpool_session_close(NULL);
    assert_int_equal(stat_of("clientSessions"), 0);
    tk_pool_destroy(p);
}

/* No lane: sessions cannot open. */
static void test_needs_lane(void **state)
{
    (void)state;
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = g_server.url;
    cfg.user = "root";
    cfg.pass = "root";
    cfg.shared_connections = 0;
    surpool_pool *p = NULL;
    surpool_error err;
    must(surpool_pool_create(&cfg, &p, &err), &err, "pool create");
    tk_pool_track(p);
    surpool_session *s = NULL;
    assert_int_equal(surpool_session_open(p, NULL, &s, &err), SURPOOL_ERR_INVALID_ARG);
    assert_null(s);
    tk_pool_destroy(p);
}

/* SurrealDB 2.x has no sessions. */
static void test_2x_unsupported(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(1);
    surpool_session *s = NULL;
    surpool_error err;
    assert_int_equal(surpool_session_open(p, NULL, &s, &err), SURPOOL_ERR_UNSUPPORTED);
    assert_null(s);
    json_t *out = NULL;
    must(surpool_query(p, "RETURN 1", NULL, &out, &err), &err, "the lane still works");
    json_decref(out);
    tk_pool_destroy(p);
}

/* ---- hostile and dying sockets, on the fake transport (no server) ---- */

static atomic_int g_attach_mode; /* 0: null; 1: an error; 2: a garbage result */
static atomic_int g_lets_since_attach, g_attaches;

static json_t *sess_responder(void *ud, json_int_t id, const char *method, json_t *params)
{
    if (strcmp(method, "attach") == 0) {
        atomic_fetch_add(&g_attaches, 1);
        atomic_store(&g_lets_since_attach, 0);
        int mode = atomic_load(&g_attach_mode);
        if (mode == 1)
            return json_pack("{s:I, s:{s:i, s:s}}", "id", id, "error", "code", -32000,
                             "message", "attach refused");
        if (mode == 2)
            return json_pack("{s:I, s:{s:[i, s, {}]}}", "id", id, "result", "garbage", 1, "x");
        return json_pack("{s:I, s:n}", "id", id, "result");
    }
    if (strcmp(method, "detach") == 0)
        return json_pack("{s:I, s:n}", "id", id, "result");
    if (strcmp(method, "let") == 0)
        atomic_fetch_add(&g_lets_since_attach, 1);
    return fake_default_responder(ud, id, method, params);
}

static int sessions_on_sockets(surpool_pool *p)
{
    int counts[8], sum = 0;
    int n = surpool__lane_socket_sessions(surpool__pool_lane(p), counts, 8);
    for (int i = 0; i < n; i++)
        sum += counts[i];
    return sum;
}

#define FAKE_VARS 10

static void test_fake_hostile_and_dying(void **state)
{
    (void)state;
    static fake_settings fs;
    fake_settings_init(&fs);
    fs.responder = sess_responder;
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.shared_connections = 2;
    cfg.max_connections = 3;
    cfg.request_timeout_ms = 5000;
    cfg.reconnect_backoff_min_ms = 1;
    cfg.reconnect_backoff_max_ms = 4;
    cfg.breaker_threshold = 0;
    surpool_pool *p = NULL;
    surpool_error err;
    if (surpool__pool_create_with(&cfg, &fake_transport_ops, &fs, &p, &err) != SURPOOL_OK)
        fail_msg("create: %s", err.message);
    tk_pool_track(p);
    surpool_session_options o;
    surpool_session_options_init(&o);
    o.token = "fake-token";
    o.ns = "a";
    o.db = "b";
    surpool_session *s = (surpool_session *)0x1;

    /* The server refuses attach: a clear error, nothing left counted. */
    atomic_store(&g_attach_mode, 1);
    assert_int_equal(surpool_session_open(p, &o, &s, &err), SURPOOL_ERR_SERVER);
    assert_null(s);
    assert_non_null(strstr(err.message, "attach refused"));
    assert_int_equal(sessions_on_sockets(p), 0);

    /* A garbage attach result is not read: the session works. */
    atomic_store(&g_attach_mode, 2);
    must(surpool_session_open(p, &o, &s, &err), &err, "open (garbage attach result)");
    atomic_store(&g_attach_mode, 0);
    for (int i = 0; i < FAKE_VARS; i++) {
        char name[16];
        snprintf(name, sizeof(name), "v%d", i);
        json_t *v = json_integer(i);
        must(surpool_session_let(s, name, v, &err), &err, "let");
        json_decref(v);
    }
    assert_int_equal(sessions_on_sockets(p), 1);

    /* Sockets die, and keep dying during the rebuilds (attach, authenticate,
     * use, the lets): every call ends with OK or DISCONNECTED, never worse. */
    fake_kill_all(p->transport);
    atomic_store(&fs.drop_every, 17);
    int ok = 0, disconnected = 0;
    for (int i = 0; i < 30; i++) {
        surpool_err rc = surpool_session_query(s, "RETURN 1", NULL, NULL, &err);
        if (rc == SURPOOL_OK)
            ok++;
        else if (rc == SURPOOL_ERR_DISCONNECTED)
            disconnected++;
        else
            fail_msg("call %d while sockets die: %s (%s)", i, surpool_err_name(rc),
                     err.message);
    }
    assert_true(disconnected > 0); /* (the failures were real) */
    atomic_store(&fs.drop_every, 0);
    must(surpool_session_query(s, "RETURN 1", NULL, NULL, &err), &err, "after the deaths");
    /* The last attach was followed by every variable, and the session counts
     * once, on one socket. */
    assert_int_equal(atomic_load(&g_lets_since_attach), FAKE_VARS);
    WAIT_UNTIL(sessions_on_sockets(p) == 1, 10000);
    surpool_session_close(s);
    assert_int_equal(sessions_on_sockets(p), 0);
    fprintf(stderr, "# %d calls ok, %d disconnected, %d attaches\n", ok, disconnected,
            atomic_load(&g_attaches));
    tk_pool_destroy(p);
}

/* The session's let and unset check their arguments as surpool_conn_let and
 * surpool_conn_unset do: a name `let` would not take, or a value whose
 * strings are not UTF-8, is INVALID_ARG, and the session still works. */
static void test_let_checked_as_lease(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(1);
    char *tok = root_token(p);
    surpool_session *s = open_token(p, tok);
    surpool_error err;
    static const char *const names[] = {"a b", "$x", "1x", "a-b"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        surpool_err rc = surpool_session_let(s, names[i], json_true(), &err);
        if (rc != SURPOOL_ERR_INVALID_ARG)
            fail_msg("let '%s': %s: %s", names[i], surpool_err_name(rc), err.message);
        rc = surpool_session_unset(s, names[i], &err);
        if (rc != SURPOOL_ERR_INVALID_ARG)
            fail_msg("unset '%s': %s: %s", names[i], surpool_err_name(rc), err.message);
    }
    json_t *bad = json_stringn_nocheck("\xff", 1);
    assert_int_equal(surpool_session_let(s, "v", bad, &err), SURPOOL_ERR_INVALID_ARG);
    json_decref(bad);
    json_t *seven = json_integer(7);
    must(surpool_session_let(s, "ok_1", seven, &err), &err, "let ok_1");
    json_decref(seven);
    json_t *r = one(s, "RETURN $ok_1");
    assert_int_equal(json_integer_value(r), 7);
    json_decref(r);
    surpool_session_close(s);
    free(tok);
    tk_pool_destroy(p);
}

int main(void)
{
    g_wire = harness_wire();
    if (harness_core_major() == 2) {
        const struct CMUnitTest tests2[] = {
            cmocka_unit_test_teardown(test_2x_unsupported, tk_teardown),
        };
        return cmocka_run_group_tests_name("session-core2", tests2, group_setup,
                                           group_teardown);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_fake_hostile_and_dying, tk_teardown),
        cmocka_unit_test_teardown(test_isolation, tk_teardown),
        cmocka_unit_test_teardown(test_record_users, tk_teardown),
        cmocka_unit_test_teardown(test_many_sessions, tk_teardown),
        cmocka_unit_test_teardown(test_socket_killed, tk_teardown),
        cmocka_unit_test_teardown(test_session_expired, tk_teardown),
        cmocka_unit_test_teardown(test_destroy_with_open_sessions, tk_teardown),
        cmocka_unit_test_teardown(test_bad_input, tk_teardown),
        cmocka_unit_test_teardown(test_needs_lane, tk_teardown),
        cmocka_unit_test_teardown(test_let_checked_as_lease, tk_teardown),
    };
    return cmocka_run_group_tests_name(g_wire == SURPOOL_WIRE_CBOR ? "session-cbor"
                                                                   : "session-json",
                                       tests, group_setup, group_teardown);
}
