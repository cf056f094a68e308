/*
 * "Fail the Nth allocation" (as jansson's and curl's torture tests do).
 *
 * A counting allocator is installed for surpool (surpool_set_allocator) and for
 * jansson (json_set_alloc_funcs). For N = 1, 2, 3, ... the Nth allocation
 * fails, and one session runs:
 *
 *   create (min_connections 1: opens a connection, signs in, selects ns/db)
 *   acquire #1 (the idle connection)      query on it
 *   acquire #2 (opens a second connection) let on it (session change: dirty)
 *   release #2 (the dirty lease is reset: reset + signin + use)
 *   release #1      surpool_query (the shared lane)      destroy
 *
 * until a whole run completes without a failure being injected. The rules,
 * for the step during which the failure was injected:
 *   - create, query, let: SURPOOL_ERR_NOMEM exactly (and nothing is returned);
 *   - acquire: SURPOOL_OK or SURPOOL_ERR_NOMEM. A connect that fails is
 *     retried by the pool's connector after the backoff (1-4 ms here, acquire
 *     timeout 5 s), so OK is right, and then stats.connect_failures counts it;
 *     NOMEM only if the acquire itself could not allocate;
 *   - surpool_query: OK or NOMEM (the lane also retries opening its connection);
 *   - release, destroy: they return nothing; the failure must be absorbed (a
 *     dirty lease that cannot be reset is closed instead: stats.destroyed);
 *   - a step during which nothing was injected behaves as in a clean run
 *     (OK), except one that depends on an earlier step that failed (skipped).
 * After every run, no matter where it failed: every surpool allocation and
 * every jansson allocation has been freed (live counts back to 0), and the
 * transport holds no connection. ASan checks the rest (use after free, leaks
 * of allocations made with plain malloc).
 *
 * Part 1 runs on the fake transport (tests/fake_transport.c; its own
 * allocations are not the library's and are never failed). Part 2 runs the
 * same sequence on the real transport against the real server: there the
 * transport's service thread allocates too (receive buffers, decoding), so a
 * failure injected on it may also end the call it was serving with
 * SURPOOL_ERR_NOMEM; the rules above are otherwise the same.
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
#include <unistd.h>

#include <cmocka.h>
#include <execinfo.h>

#include "fake_transport.h"
#include "fault_util.h"
#include "harness.h"
#include "live.h"
#include "pool.h"
#include "raw.h"
#include "testkit.h"

/* ------------------------------------------------------------------------- */
/* The counting allocator                                                     */
/* ------------------------------------------------------------------------- */

static atomic_long g_count;            /* allocations counted since the run started */
static atomic_long g_fail_at;          /* fail the allocation with this number; 0 never */
static atomic_int g_injected;          /* failures injected in this run */
static atomic_int g_injected_off_main; /* ... on a thread other than the test's */
static atomic_long g_live_sp;          /* surpool allocations not yet freed */
static atomic_long g_live_js;          /* jansson allocations not yet freed */
static _Thread_local int t_suppress;   /* inside the fake transport: not counted */
static _Thread_local int t_main;       /* the test's own thread */
static int g_trace;                    /* SURPOOL_ALLOC_TRACE set */

static int should_fail(void)
{
    if (t_suppress)
        return 0;
    long n = atomic_fetch_add(&g_count, 1) + 1;
    if (n != atomic_load(&g_fail_at))
        return 0;
    atomic_fetch_add(&g_injected, 1);
    if (!t_main)
        atomic_fetch_add(&g_injected_off_main, 1);
    if (g_trace) {
        /* SURPOOL_ALLOC_TRACE=1: where each failure is injected (resolve the
         * addresses with addr2line -f -e test_alloc). */
        void *frames[24];
        int k = backtrace(frames, 24);
        char line[64];
        int len = snprintf(line, sizeof(line), "# N=%ld injected here:\n", n);
        ssize_t ignored = write(STDERR_FILENO, line, (size_t)len);
        (void)ignored;
        backtrace_symbols_fd(frames, k, STDERR_FILENO);
    }
    return 1;
}

static void *sp_malloc(size_t n)
{
    if (should_fail())
        return NULL;
    void *p = malloc(n);
    if (p != NULL)
        atomic_fetch_add(&g_live_sp, 1);
    return p;
}

static void *sp_realloc(void *p, size_t n)
{
    if (should_fail())
        return NULL;
    void *q = realloc(p, n);
    if (p == NULL && q != NULL)
        atomic_fetch_add(&g_live_sp, 1);
    return q;
}

static void sp_free(void *p)
{
    if (p != NULL)
        atomic_fetch_sub(&g_live_sp, 1);
    free(p);
}

static void *js_malloc(size_t n)
{
    if (should_fail())
        return NULL;
    void *p = malloc(n);
    if (p != NULL)
        atomic_fetch_add(&g_live_js, 1);
    return p;
}

static void js_free(void *p)
{
    if (p != NULL)
        atomic_fetch_sub(&g_live_js, 1);
    free(p);
}

static void arm(long n)
{
    atomic_store(&g_count, 0);
    atomic_store(&g_injected, 0);
    atomic_store(&g_injected_off_main, 0);
    atomic_store(&g_fail_at, n);
}

/* ------------------------------------------------------------------------- */
/* The fake transport, wrapped so that its own allocations are never failed   */
/* (it is test code standing in for the network, not the library). The        */
/* library's completion callback is called with counting back on.             */
/* ------------------------------------------------------------------------- */

#define MAX_WRAPPED 256
static pthread_mutex_t g_wrap_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    surpool__treq *req;
    surpool__treq_done_fn done;
} g_wrapped[MAX_WRAPPED];

static void wrapped_done(surpool__treq *req)
{
    surpool__treq_done_fn done = NULL;
    pthread_mutex_lock(&g_wrap_mu);
    for (int i = 0; i < MAX_WRAPPED; i++) {
        if (g_wrapped[i].req == req) {
            done = g_wrapped[i].done;
            g_wrapped[i].req = NULL;
            break;
        }
    }
    pthread_mutex_unlock(&g_wrap_mu);
    req->done = done;
    int saved = t_suppress;
    t_suppress = 0;
    done(req);
    t_suppress = saved;
}

static int wrap_req(surpool__treq *req)
{
    pthread_mutex_lock(&g_wrap_mu);
    for (int i = 0; i < MAX_WRAPPED; i++) {
        if (g_wrapped[i].req == NULL) {
            g_wrapped[i].req = req;
            g_wrapped[i].done = req->done;
            req->done = wrapped_done;
            pthread_mutex_unlock(&g_wrap_mu);
            return 0;
        }
    }
    pthread_mutex_unlock(&g_wrap_mu);
    return -1;
}

static void unwrap_req(surpool__treq *req)
{
    pthread_mutex_lock(&g_wrap_mu);
    for (int i = 0; i < MAX_WRAPPED; i++) {
        if (g_wrapped[i].req == req) {
            req->done = g_wrapped[i].done;
            g_wrapped[i].req = NULL;
            break;
        }
    }
    pthread_mutex_unlock(&g_wrap_mu);
}

static surpool_err w_create(const surpool__tconfig *cfg, void *arg, surpool__transport **out,
                            surpool_error *err)
{
    t_suppress++;
    surpool_err rc = fake_transport_ops.create(cfg, arg, out, err);
    t_suppress--;
    return rc;
}

static void w_destroy(surpool__transport *t)
{
    t_suppress++;
    fake_transport_ops.destroy(t);
    t_suppress--;
}

static surpool_err w_open(surpool__transport *t, const surpool__url *ep, int64_t deadline_ns,
                          const surpool__tconn_events *ev, surpool__tconn **out,
                          surpool_error *err)
{
    t_suppress++;
    surpool_err rc = fake_transport_ops.open(t, ep, deadline_ns, ev, out, err);
    t_suppress--;
    return rc;
}

static surpool_err w_submit(surpool__tconn *c, surpool__treq *req)
{
    if (wrap_req(req) != 0)
        return SURPOOL_ERR_NOMEM;
    t_suppress++;
    surpool_err rc = fake_transport_ops.submit(c, req);
    t_suppress--;
    if (rc != SURPOOL_OK)
        unwrap_req(req); /* done() will not be called */
    return rc;
}

static int w_cancel(surpool__tconn *c, surpool__treq *req)
{
    int r = fake_transport_ops.cancel(c, req);
    if (r)
        unwrap_req(req);
    return r;
}

static int w_alive(surpool__tconn *c)
{
    return fake_transport_ops.alive(c);
}

static void w_close(surpool__tconn *c)
{
    t_suppress++;
    fake_transport_ops.close(c);
    t_suppress--;
}

static surpool__transport_ops g_wrapped_ops; /* filled in main() */

/* ------------------------------------------------------------------------- */
/* One session                                                                */
/* ------------------------------------------------------------------------- */

enum { S_CREATE, S_ACQ1, S_QUERY, S_ACQ2, S_LET, S_REL2, S_REL1, S_POOLQ, S_DESTROY, S_COUNT };
static const char *const g_step_names[S_COUNT] = {
    "create",     "acquire #1",    "query",  "acquire #2", "let", "release #2 (reset)",
    "release #1", "surpool_query", "destroy"};

typedef struct outcome {
    surpool_err rc[S_COUNT];
    int ran[S_COUNT];
    int injected[S_COUNT];          /* failures injected during the step */
    int injected_off_main[S_COUNT]; /* ... on a library thread (connector, service) */
    char msg[S_COUNT][256];
    uint64_t destroyed_at_rel2;
} outcome;

typedef struct session_env {
    fake_settings fs; /* fake transport only */
    int real;         /* 1: the real transport */
    char url[128];
} session_env;

static void trace_log(void *ud, surpool_log_level level, const char *msg)
{
    (void)ud;
    fprintf(stderr, "# log %d: %s\n", (int)level, msg);
}

static void session_config(surpool_config *cfg, session_env *env)
{
    surpool_config_init(cfg);
    cfg->url = env->url;
    cfg->user = "root";
    cfg->pass = "root";
    cfg->ns = "alloc";
    cfg->db = "alloc";
    cfg->min_connections = 1;
    cfg->max_connections = 4;
    cfg->acquire_timeout_ms = 5000;
    cfg->connect_timeout_ms = 5000;
    cfg->request_timeout_ms = 5000;
    cfg->reconnect_backoff_min_ms = 1;
    cfg->reconnect_backoff_max_ms = 4;
    cfg->breaker_threshold = 0;
    /* Keep the background quiet: no keepalive, no validation, no retirement. */
    cfg->keepalive_interval_ms = 0;
    cfg->validation_idle_ms = -1;
    cfg->idle_timeout_ms = 0;
    cfg->max_lifetime_ms = 0;
    cfg->maintenance_interval_ms = 60000;
    cfg->shared_connections = 1;
    if (g_trace) {
        cfg->log_fn = trace_log;
        cfg->log_level = SURPOOL_LOG_DEBUG;
    }
}

#define STEP(s, expr)                                                                          \
    do {                                                                                       \
        int before_ = atomic_load(&g_injected);                                                \
        int off_before_ = atomic_load(&g_injected_off_main);                                   \
        surpool_error e_;                                                                      \
        memset(&e_, 0, sizeof(e_));                                                            \
        surpool_error *err = &e_;                                                              \
        o->rc[s] = (expr);                                                                     \
        o->ran[s] = 1;                                                                         \
        o->injected[s] = atomic_load(&g_injected) - before_;                                   \
        o->injected_off_main[s] = atomic_load(&g_injected_off_main) - off_before_;             \
        snprintf(o->msg[s], sizeof(o->msg[s]), "%s",                                           \
                 o->rc[s] != SURPOOL_OK ? e_.message : "");                                    \
    } while (0)

#define VOID_STEP(s, stmt)                                                                     \
    do {                                                                                       \
        int before_ = atomic_load(&g_injected);                                                \
        stmt;                                                                                  \
        o->ran[s] = 1;                                                                         \
        o->rc[s] = SURPOOL_OK;                                                                 \
        o->injected[s] = atomic_load(&g_injected) - before_;                                   \
    } while (0)

static void run_session(session_env *env, outcome *o)
{
    memset(o, 0, sizeof(*o));
    surpool_config cfg;
    session_config(&cfg, env);
    surpool_pool *p = NULL;
    surpool_conn *c1 = NULL, *c2 = NULL;
    json_t *out = NULL;

    if (env->real)
        STEP(S_CREATE, surpool_pool_create(&cfg, &p, err));
    else
        STEP(S_CREATE, surpool__pool_create_with(&cfg, &g_wrapped_ops, &env->fs, &p, err));
    if (o->rc[S_CREATE] != SURPOOL_OK) {
        if (p != NULL)
            fail_msg("create failed but returned a pool");
        return;
    }
    tk_pool_track(p); /* a failed assertion below leaves it to tk_teardown */
    STEP(S_ACQ1, tk_acquire(p, 5000, &c1, err));
    if (o->rc[S_ACQ1] == SURPOOL_OK) {
        STEP(S_QUERY, surpool_conn_query(c1, "RETURN 1", NULL, &out, err));
        if (o->rc[S_QUERY] == SURPOOL_OK) {
            assert_non_null(out);
            json_decref(out);
        } else {
            assert_null(out);
        }
        out = NULL;
    }
    STEP(S_ACQ2, tk_acquire(p, 5000, &c2, err));
    if (o->rc[S_ACQ2] == SURPOOL_OK) {
        STEP(S_LET, surpool_conn_let(c2, "x", json_true(), err));
        surpool_stats st;
        surpool_pool_stats(p, &st);
        uint64_t destroyed = st.destroyed;
        VOID_STEP(S_REL2, tk_release(c2));
        surpool_pool_stats(p, &st);
        o->destroyed_at_rel2 = st.destroyed - destroyed;
    }
    if (c1 != NULL)
        VOID_STEP(S_REL1, tk_release(c1));
    STEP(S_POOLQ, surpool_query(p, "RETURN 2", NULL, &out, err));
    json_decref(out);
    VOID_STEP(S_DESTROY, tk_pool_destroy(p));
}

/* Violations are collected (not fatal at once) so that one run reports every
 * distinct way the rules break; the test fails at the end if there was any. */
#define MAX_KINDS 16
typedef struct violations {
    long total;
    int nkinds;
    struct {
        int step;
        surpool_err rc;
        long count, first_n;
        char msg[300];
    } kinds[MAX_KINDS];
} violations;

static void violation(violations *v, long n, int step, surpool_err rc, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void violation(violations *v, long n, int step, surpool_err rc, const char *fmt, ...)
{
    v->total++;
    for (int i = 0; i < v->nkinds; i++) {
        if (v->kinds[i].step == step && v->kinds[i].rc == rc) {
            v->kinds[i].count++;
            return;
        }
    }
    if (v->nkinds == MAX_KINDS)
        return;
    int k = v->nkinds++;
    v->kinds[k].step = step;
    v->kinds[k].rc = rc;
    v->kinds[k].count = 1;
    v->kinds[k].first_n = n;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->kinds[k].msg, sizeof(v->kinds[k].msg), fmt, ap);
    va_end(ap);
}

/* Check one run against the rules at the top of the file. */
static void check_outcome(const outcome *o, long n, violations *v)
{
    for (int s = 0; s < S_COUNT; s++) {
        if (!o->ran[s])
            continue;
        surpool_err rc = o->rc[s];
        const char *name = g_step_names[s];
        if (o->injected[s] == 0) {
            if (rc != SURPOOL_OK)
                violation(v, n, s, rc,
                          "%s failed with %s although no allocation failed during it (%s)",
                          name, surpool_strerror(rc), o->msg[s]);
            continue;
        }
        int on_main = o->injected[s] > o->injected_off_main[s];
        switch (s) {
        case S_CREATE:
        case S_QUERY:
        case S_LET:
            /* On a library thread (the connector that opens create's
             * connections, the transport's service thread decoding a reply),
             * a failure may be retried or absorbed inside jansson's parser
             * (seen: json_loadb succeeding although one of its allocations
             * failed): OK is fine there. On the caller's thread it must be
             * NOMEM. */
            if (!on_main && rc == SURPOOL_OK)
                break;
            if (rc != SURPOOL_ERR_NOMEM)
                violation(v, n, s, rc,
                          "allocation failed during %s (on %s): expected %s, got %s (%s)", name,
                          on_main ? "the caller's thread" : "a library thread",
                          surpool_strerror(SURPOOL_ERR_NOMEM), surpool_strerror(rc), o->msg[s]);
            break;
        case S_ACQ1:
        case S_ACQ2:
        case S_POOLQ:
            if (rc != SURPOOL_OK && rc != SURPOOL_ERR_NOMEM)
                violation(v, n, s, rc,
                          "allocation failed during %s: expected OK (retried) or %s, got %s "
                          "(%s)",
                          name, surpool_strerror(SURPOOL_ERR_NOMEM), surpool_strerror(rc),
                          o->msg[s]);
            break;
        default: /* release, destroy: nothing to return; absorbed */ break;
        }
    }
    /* Release #2 resets a dirty lease; a failed reset (or a lease an earlier
     * failure already broke) closes exactly that one connection. */
    if (o->destroyed_at_rel2 > 1)
        violation(v, n, S_REL2, SURPOOL_OK, "release #2 closed %llu connections",
                  (unsigned long long)o->destroyed_at_rel2);
}

static void check_nothing_live(long n, session_env *env)
{
    long sp = atomic_load(&g_live_sp), js = atomic_load(&g_live_js);
    if (sp != 0 || js != 0)
        fail_msg("N=%ld: after destroy, %ld surpool and %ld jansson allocation(s) not freed", n,
                 sp, js);
    if (!env->real && atomic_load(&env->fs.open_now) != 0)
        fail_msg("N=%ld: %d fake connection(s) left open", n, atomic_load(&env->fs.open_now));
}

typedef struct tally {
    long points;            /* N tried with a failure injected */
    long total_allocs;      /* allocations in the clean run */
    long per_step[S_COUNT]; /* failures injected per step */
    long codes[32];         /* outcome of the failing step */
    long off_main;          /* failures injected on another thread */
} tally;

static void add_tally(tally *t, const outcome *o)
{
    t->points++;
    if (atomic_load(&g_injected_off_main) > 0)
        t->off_main++;
    for (int s = 0; s < S_COUNT; s++) {
        if (o->ran[s] && o->injected[s] > 0) {
            t->per_step[s]++;
            t->codes[o->rc[s] & 31]++;
        }
    }
}

static void print_tally(const char *what, const tally *t)
{
    fprintf(stderr,
            "# %s: %ld allocations in a clean run, %ld failure points tried "
            "(%ld on a library thread)\n#   by step:",
            what, t->total_allocs, t->points, t->off_main);
    for (int s = 0; s < S_COUNT; s++)
        if (t->per_step[s] > 0)
            fprintf(stderr, " %s %ld;", g_step_names[s], t->per_step[s]);
    fprintf(stderr, "\n#   outcomes:");
    for (int i = 0; i < 32; i++)
        if (t->codes[i] > 0)
            fprintf(stderr, " %s %ld;", surpool_strerror((surpool_err)i), t->codes[i]);
    fprintf(stderr, "\n");
}

/* Run N = first, first + stride, ... until a run injects nothing. */
static void torture(session_env *env, long stride, const char *what)
{
    tally t;
    memset(&t, 0, sizeof(t));
    violations v;
    memset(&v, 0, sizeof(v));
    outcome o;
    const char *from = getenv("SURPOOL_ALLOC_FROM");
    long first = from != NULL && atol(from) > 0 ? atol(from) : 1;
    for (long n = first;; n += stride) {
        char wd[96];
        snprintf(wd, sizeof(wd), "%s, N=%ld", what, n);
        fu_watchdog(20, wd); /* one run takes milliseconds; below the ctest limit */
        if (!env->real)
            fake_settings_init(&env->fs);
        arm(n);
        run_session(env, &o);
        atomic_store(&g_fail_at, 0); /* disarm, keep the counts */
        fu_watchdog(0, NULL);
        check_nothing_live(n, env);
        check_outcome(&o, n, &v);
        if (atomic_load(&g_injected) == 0) {
            t.total_allocs = atomic_load(&g_count);
            break;
        }
        add_tally(&t, &o);
        if (n > 100000)
            fail_msg("%s: no clean run after %ld allocations", what, n);
    }
    print_tally(what, &t);
    for (int i = 0; i < v.nkinds; i++)
        fprintf(stderr, "VIOLATION (%ld time(s), first at N=%ld): %s\n", v.kinds[i].count,
                v.kinds[i].first_n, v.kinds[i].msg);
    if (v.total > 0)
        fail_msg("%s: %ld run(s) broke the rules (%d kind(s), listed above)", what, v.total,
                 v.nkinds);
    /* Something was really exercised: failures in every step that allocates. */
    assert_true(t.points > 20);
    assert_true(t.per_step[S_CREATE] > 0);
    assert_true(t.per_step[S_QUERY] > 0);
    assert_true(t.per_step[S_ACQ2] > 0);
}

/* ------------------------------------------------------------------------- */

static void test_fake_transport(void **state)
{
    (void)state;
    static session_env fake_env; /* static: a failed assertion must not leak it */
    session_env *env = &fake_env;
    memset(env, 0, sizeof(*env));
    snprintf(env->url, sizeof(env->url), "ws://fake.invalid/rpc");
    /* A clean run first: the sequence itself must work. */
    outcome o;
    fake_settings_init(&env->fs);
    violations v;
    memset(&v, 0, sizeof(v));
    arm(0);
    run_session(env, &o);
    check_outcome(&o, 0, &v);
    if (v.total > 0)
        fail_msg("clean run: %s", v.kinds[0].msg);
    check_nothing_live(0, env);
    torture(env, 1, "fake transport");
}

/* ------------------------------------------------------------------------- */
/* Live queries and sessions (fake transport): for each N, start a live query  */
/* (a notification beats its reply, one more follows it), kill it, open a     */
/* session, let, close it, destroy. Every call returns OK or NOMEM; a live    */
/* query that started gets exactly one CLOSED; nothing is left allocated.     */
/* ------------------------------------------------------------------------- */

#define LT_ID "0e6a1c5e-6f0b-4c1e-9d3a-2b9f4b1d7a10"
static surpool_pool *g_lt_pool;
static const void *g_lt_conn; /* the carrier the `live` went out on (compared only) */
static atomic_int g_lt_closed, g_lt_events, g_lt_resub;

static json_t *lt_note(void)
{
    return json_pack("{s:{s:s, s:s, s:s, s:{s:i}}}", "result", "action", "CREATE", "id", LT_ID,
                     "record", "t:1", "result", "n", 1);
}

static json_t *lt_responder(void *ud, json_int_t id, const char *method, json_t *params)
{
    if (strcmp(method, "live") == 0) {
        g_lt_conn = surpool__live_starting_conn(g_lt_pool->live);
        json_t *f = lt_note();
        surpool__live_notify(g_lt_pool->live, g_lt_conn, f);
        json_decref(f);
        return json_pack("{s:I, s:s}", "id", id, "result", LT_ID);
    }
    if (strcmp(method, "kill") == 0 || strcmp(method, "attach") == 0 ||
        strcmp(method, "detach") == 0)
        return json_pack("{s:I, s:n}", "id", id, "result");
    return fake_default_responder(ud, id, method, params);
}

static void lt_on_live(void *ud, surpool_live *live, const surpool_live_event *ev)
{
    (void)ud;
    (void)live;
    atomic_fetch_add(&g_lt_events, 1);
    if (ev->type == SURPOOL_LIVE_CLOSED)
        atomic_fetch_add(&g_lt_closed, 1);
    if (ev->type == SURPOOL_LIVE_RESUBSCRIBED)
        atomic_fetch_add(&g_lt_resub, 1);
}

/* One run; violations are reported through fail_msg with N. */
static void lt_run(session_env *env, long n)
{
    surpool_config cfg;
    session_config(&cfg, env);
    cfg.min_connections = 0;
    surpool_error err;
    memset(&err, 0, sizeof(err));
    surpool_pool *p = NULL;
    surpool_err rc = surpool__pool_create_with(&cfg, &g_wrapped_ops, &env->fs, &p, &err);
    if (rc != SURPOOL_OK) {
        if (rc != SURPOOL_ERR_NOMEM || p != NULL)
            fail_msg("N=%ld: create: %s (%s)", n, surpool_strerror(rc), err.message);
        return;
    }
    tk_pool_track(p);
    g_lt_pool = p;
    atomic_store(&g_lt_closed, 0);
    atomic_store(&g_lt_events, 0);
    atomic_store(&g_lt_resub, 0);
    surpool_live_options o;
    surpool_live_options_init(&o);
    o.table = "t";
    surpool_live *l = NULL;
    rc = surpool_live_start(p, &o, lt_on_live, NULL, &l, &err);
    if (rc != SURPOOL_OK && rc != SURPOOL_ERR_NOMEM)
        fail_msg("N=%ld: live start: %s (%s)", n, surpool_strerror(rc), err.message);
    if (rc == SURPOOL_OK) {
        json_t *f = NULL;
        t_suppress++; /* the frame stands in for the transport's */
        f = lt_note();
        t_suppress--;
        surpool__live_notify(p->live, g_lt_conn, f);
        t_suppress++;
        json_decref(f);
        t_suppress--;
        if (n == 0) /* both notifications delivered (a kill drops what waits) */
            WAIT_UNTIL(atomic_load(&g_lt_events) == 2, 10000);
        /* Its carrier dies: it is started again (retried until it works: one
         * allocation fails per run) and RESUBSCRIBED is never lost. */
        t_suppress++;
        fake_kill_all(p->transport);
        t_suppress--;
        int resub;
        TK_POLL(resub, atomic_load(&g_lt_resub) == 1, 10000);
        if (!resub)
            fail_msg("N=%ld: no RESUBSCRIBED after the carrier died (%d CLOSED)", n,
                     atomic_load(&g_lt_closed));
        surpool_live_kill(l);
        WAIT_UNTIL(atomic_load(&g_lt_closed) == 1, 10000);
    }
    surpool_session_options so;
    surpool_session_options_init(&so);
    so.token = "lt-token";
    so.ns = "a";
    so.db = "b";
    surpool_session *sess = NULL;
    rc = surpool_session_open(p, &so, &sess, &err);
    if (rc != SURPOOL_OK && rc != SURPOOL_ERR_NOMEM)
        fail_msg("N=%ld: session open: %s (%s)", n, surpool_strerror(rc), err.message);
    if (rc == SURPOOL_OK) {
        rc = surpool_session_let(sess, "x", json_true(), &err);
        if (rc != SURPOOL_OK && rc != SURPOOL_ERR_NOMEM)
            fail_msg("N=%ld: session let: %s (%s)", n, surpool_strerror(rc), err.message);
        rc = surpool_session_query(sess, "RETURN $x", NULL, NULL, &err);
        if (rc != SURPOOL_OK && rc != SURPOOL_ERR_NOMEM)
            fail_msg("N=%ld: session query: %s (%s)", n, surpool_strerror(rc), err.message);
        surpool_session_close(sess);
    }
    tk_pool_destroy(p);
    if (atomic_load(&g_lt_closed) > 1)
        fail_msg("N=%ld: %d CLOSED events for one live query", n, atomic_load(&g_lt_closed));
}

static void test_live_and_sessions(void **state)
{
    (void)state;
    static session_env lt_env;
    session_env *env = &lt_env;
    memset(env, 0, sizeof(*env));
    snprintf(env->url, sizeof(env->url), "ws://fake.invalid/rpc");
    long points = 0;
    for (long n = 0;; n++) {
        char wd[96];
        snprintf(wd, sizeof(wd), "live and sessions, N=%ld", n);
        fu_watchdog(20, wd);
        fake_settings_init(&env->fs);
        env->fs.responder = lt_responder;
        arm(n);
        lt_run(env, n);
        atomic_store(&g_fail_at, 0);
        fu_watchdog(0, NULL);
        check_nothing_live(n, env);
        if (n == 0) {
            if (atomic_load(&g_lt_events) < 3) /* both notifications and CLOSED */
                fail_msg("clean run: %d live events", atomic_load(&g_lt_events));
            continue;
        }
        if (atomic_load(&g_injected) == 0)
            break;
        points++;
        if (n > 100000)
            fail_msg("live and sessions: no clean run after %ld allocations", n);
    }
    fprintf(stderr, "# live and sessions: %ld failure points tried\n", points);
    assert_true(points > 20);
}

/* The server of test_real_transport: a failed assertion leaves it to teardown. */
static test_server g_server = {.pid = -1};

static int teardown(void **state)
{
    (void)state;
    fu_watchdog(0, NULL);
    tk_teardown(state);
    harness_stop(&g_server);
    return 0;
}

static void test_real_transport(void **state)
{
    (void)state;
    test_server *s = &g_server;
    const char *args[] = {"--user", "root", "--pass", "root", NULL};
    if (harness_start(s, "server.mjs", 0, args) != 0)
        fail_msg("cannot start tests/server/server.mjs");
    static session_env real_env;
    session_env *env = &real_env;
    memset(env, 0, sizeof(*env));
    env->real = 1;
    snprintf(env->url, sizeof(env->url), "ws://127.0.0.1:%d/rpc", s->port);
    outcome o;
    violations v;
    memset(&v, 0, sizeof(v));
    arm(0);
    run_session(env, &o);
    check_outcome(&o, 0, &v);
    if (v.total > 0)
        fail_msg("clean run: %s", v.kinds[0].msg);
    check_nothing_live(0, env);
    /* Every N under the plain build; every 3rd under the (slower) sanitizers. */
    const char *st = getenv("SURPOOL_ALLOC_STRIDE");
    long stride = st != NULL ? atol(st) : (FU_SANITIZED ? 3 : 1);
    torture(env, stride > 0 ? stride : 1, "real transport");
    harness_stop(s);
}

/* The raw path's frame-to-result step (raw.c) with each allocation failing in
 * turn, on a result frame and an error frame in both formats: OK or NOMEM,
 * the frame always taken, nothing left allocated, and a clean run's bytes. */
static void raw_take_once(const char *frame, size_t len, int cbor, long n, int *injected)
{
    surpool__treq req;
    memset(&req, 0, sizeof(req));
    req.id = 1;
    req.frame = surpool__malloc(len + 1); /* before arm(): never failed */
    assert_non_null(req.frame);
    memcpy(req.frame, frame, len);
    req.frame[len] = '\0';
    req.frame_len = len;
    req.frame_cbor = cbor;
    surpool_raw *raw = NULL;
    arm(n);
    surpool__raw_take_reply(&req, cbor ? SURPOOL_WIRE_CBOR : SURPOOL_WIRE_JSON, &raw);
    *injected = atomic_load(&g_injected) > 0;
    atomic_store(&g_fail_at, 0);
    assert_null(req.frame);
    if (req.status != SURPOOL_OK) {
        if (req.status != SURPOOL_ERR_NOMEM || !*injected || raw != NULL)
            fail_msg("N=%ld: %s from a good frame (%s)", n, surpool_err_name(req.status),
                     req.message);
    } else if (!*injected) {
        assert_non_null(req.reply);
    }
    json_decref(req.reply);
    surpool_raw_free(raw);
}

static void test_raw_take(void **state)
{
    (void)state;
    static const char js[] = "{\"id\":1,\"result\":[{\"a\":\"x\"}]}";
    static const char je[] = "{\"id\":1,\"error\":{\"code\":-32000,\"message\":\"no\"}}";
    static const unsigned char cb[] = {0xa2, 0x62, 'i', 'd', 0x01, 0x66, 'r',
                                       'e',  's',  'u', 'l', 't',  0x81, 0x01};
    static const unsigned char ce[] = {0xa2, 0x62, 'i', 'd',  0x01, 0x65, 'e',
                                       'r',  'r',  'o', 'r',  0xa1, 0x64, 'c',
                                       'o',  'd',  'e', 0x39, 0x7c, 0xff};
    const struct {
        const char *f;
        size_t len;
        int cbor;
    } rows[] = {{js, sizeof(js) - 1, 0},
                {je, sizeof(je) - 1, 0},
                {(const char *)cb, sizeof(cb), 1},
                {(const char *)ce, sizeof(ce), 1}};
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        int injected = 1;
        long n;
        for (n = 1; injected && n < 1000; n++) {
            raw_take_once(rows[i].f, rows[i].len, rows[i].cbor, n, &injected);
            long sp = atomic_load(&g_live_sp), js_live = atomic_load(&g_live_js);
            if (sp != 0 || js_live != 0)
                fail_msg("row %zu N=%ld: %ld surpool and %ld jansson allocation(s) not freed",
                         i, n, sp, js_live);
        }
        if (injected)
            fail_msg("row %zu: still failing at N=%ld", i, n);
    }
}

int main(void)
{
    t_main = 1;
    g_trace = getenv("SURPOOL_ALLOC_TRACE") != NULL;
    {
        void *warm[1]; /* backtrace() allocates on first use: not inside a failure */
        backtrace(warm, 1);
    }
    /* Before any jansson value exists, so that every one is counted. */
    json_set_alloc_funcs(js_malloc, js_free);
    if (surpool_set_allocator(sp_malloc, sp_realloc, sp_free) != SURPOOL_OK)
        return 1;
    g_wrapped_ops = fake_transport_ops;
    g_wrapped_ops.name = "fake (allocation torture)";
    g_wrapped_ops.create = w_create;
    g_wrapped_ops.destroy = w_destroy;
    g_wrapped_ops.open = w_open;
    g_wrapped_ops.submit = w_submit;
    g_wrapped_ops.cancel = w_cancel;
    g_wrapped_ops.alive = w_alive;
    g_wrapped_ops.close = w_close;

    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_raw_take, teardown),
        cmocka_unit_test_teardown(test_fake_transport, teardown),
        cmocka_unit_test_teardown(test_live_and_sessions, teardown),
        cmocka_unit_test_teardown(test_real_transport, teardown),
    };
    int rc = cmocka_run_group_tests_name("alloc", tests, NULL, NULL);
    surpool_set_allocator(NULL, NULL, NULL);
    json_set_alloc_funcs(malloc, free);
    return rc;
}
