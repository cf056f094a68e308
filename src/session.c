/*
 * Sessions (SurrealDB 3.x): many server-side sessions over the lane's few
 * sockets (docs/sessions.md).
 *
 * A session is a UUID the client picks. `attach` with it opens a session on
 * one socket (its own auth, ns/db and variables); every request carries it in
 * its envelope ("session"); `detach` closes it. Its server-side state lives
 * on the socket it was attached on, so a session is bound to one lane socket
 * (by that socket's generation, lane.h) and keeps a copy of that state here:
 * ns/db, its token, its sign-in parameters (to sign in again once the token
 * expired) and its variables.
 *
 * Rules:
 *  S1. One thread at a time per session; different sessions run concurrently
 *      (each request is one lane request; the lane's mutex guards the socket
 *      counts and the member list, nothing here needs a lock).
 *  S2. Before each call the session checks its socket. If the socket died,
 *      expired or was given back (or an earlier rebuild stopped half way:
 *      `stale`), it is rebuilt on the socket with the fewest sessions:
 *      attach, authenticate with its token (sign in again with its stored
 *      parameters if the token expired or is refused), use, let each
 *      variable. Only then does the call go out. A call in flight when the
 *      socket dies gets SURPOOL_ERR_DISCONNECTED (it may or may not have run).
 *  S3. A call refused because the session expired (it did not run) is sent
 *      again once, after re-authenticating the session on its socket.
 *  S4. State that cannot be rebuilt is refused up front: interactive
 *      transactions (begin/commit/cancel), live queries (live/kill), reset
 *      and the session methods themselves return SURPOOL_ERR_INVALID_ARG.
 *  S5. The pool's destroy leaves open sessions allocated but forgets them
 *      (member.lane = NULL): every call then returns SURPOOL_ERR_CLOSED and
 *      surpool_session_close() only frees. Destroy must not race a session
 *      call (as any call on the pool).
 *  S6. Secrets (token, sign-in parameters) are wiped when replaced and at
 *      close; they never reach a message.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "auth.h"
#include "lane.h"
#include "rpc.h"
#include "utf8.h"

/* Rebuilds (or unsent calls) tried in a row when each fails on a dying socket. */
#define REBUILD_ATTEMPTS 3

struct surpool_session {
    surpool__lane_member member; /* member.lane: NULL once the pool was destroyed */
    surpool_pool *pool;          /* not read once member.lane is NULL */
    uint64_t gen;                /* the lane socket it is attached on; 0: none */
    int stale;                   /* the server-side state may be partial: rebuild */
    long timeout_ms;             /* each call's deadline (< 0: request_timeout_ms) */
    char id[37];                 /* its UUID, text */
    char *ns, *db;               /* as `use` left them, or NULL */
    char *token;                 /* secret: the token it authenticated with, or NULL */
    char *creds;                 /* secret: its signin/signup params as JSON text, or NULL */
    json_t *vars;                /* name -> value (our own copies), or NULL when none */
};

/* ------------------------------------------------------------------------- */

/* A version 4 UUID. The id only has to be unique on its socket (another
 * client cannot name our socket's sessions): when the kernel's generator is
 * unavailable a counter mixed with the clock and an address does. */
static void new_id(char out[37])
{
    unsigned char b[16];
    size_t got = 0;
    while (got < sizeof(b)) {
        ssize_t n = getrandom(b + got, sizeof(b) - got, GRND_NONBLOCK);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    if (got < sizeof(b)) {
        static _Atomic uint64_t counter;
        uint64_t x = (uint64_t)surpool__now_ns() ^ (uint64_t)(uintptr_t)out ^
                     (atomic_fetch_add(&counter, 1) * 0x9e3779b97f4a7c15ULL);
        for (size_t i = 0; i < sizeof(b); i++) {
            x += 0x9e3779b97f4a7c15ULL; /* splitmix64 */
            uint64_t z = x;
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
            b[i] = (unsigned char)(z ^ (z >> 31));
        }
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
             b[13], b[14], b[15]);
}

static void set_secret(char **slot, char *value)
{
    surpool__free_secret(*slot);
    *slot = value;
}

static int replace_str(char **slot, const char *value)
{
    char *copy = NULL;
    if (value != NULL && (copy = surpool__strdup(value)) == NULL)
        return -1;
    surpool__free(*slot);
    *slot = copy;
    return 0;
}

/* Methods a session refuses (rule S4), with the reason. */
static const char *refused(const char *method)
{
    static const struct {
        const char *name, *why;
    } list[] = {
        {"attach", "the session is attached by surpool_session_open()"},
        {"detach", "use surpool_session_close()"},
        {"sessions", "it lists the socket's sessions, not this session's state"},
        {"reset", "use surpool_session_invalidate() and surpool_session_unset()"},
        {"begin", "a transaction cannot survive a socket change: lease a connection"},
        {"commit", "a transaction cannot survive a socket change: lease a connection"},
        {"cancel", "a transaction cannot survive a socket change: lease a connection"},
        {"live", "use surpool_live_start(): it survives socket changes"},
        {"kill", "use surpool_live_start() and surpool_live_kill()"},
    };
    for (size_t i = 0; i < sizeof(list) / sizeof(list[0]); i++)
        if (strcmp(method, list[i].name) == 0)
            return list[i].why;
    return NULL;
}

static surpool_err check_call(surpool_session *s, surpool_error *err, const char *fn)
{
    if (s == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "%s: session is NULL", fn);
    if (s->member.lane == NULL)
        return surpool__seterr(err, SURPOOL_ERR_CLOSED, "%s: the pool was destroyed", fn);
    if (surpool__in_result_callback())
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "%s() called from inside a surpool_result_fn callback: it would "
                               "deadlock",
                               fn);
    return SURPOOL_OK;
}

/* One request on the session's current socket, nothing else. */
static surpool_err send_raw(surpool_session *s, const char *method, const json_t *params,
                            json_t **out, int *flags, surpool_error *err)
{
    return surpool__lane_session_call(s->member.lane, &s->gen, s->id, method, params,
                                      s->timeout_ms, out, flags, err);
}

/* Sign in (or up, the first time) with the stored parameters on the current
 * socket; the token it returns becomes the session's. */
static surpool_err signin_stored(surpool_session *s, const char *method, surpool_error *err)
{
    json_error_t je;
    json_t *obj = json_loads(s->creds, JSON_ALLOW_NUL, &je);
    if (obj == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "%s: out of memory", method);
    json_t *params = json_pack("[o]", obj);
    if (params == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "%s: out of memory", method);
    json_t *result = NULL;
    int flags;
    surpool_err rc = send_raw(s, method, params, &result, &flags, err);
    json_decref(params);
    if (rc != SURPOOL_OK)
        return rc;
    /* A record access token, or (3.x) {token, refresh}. */
    const char *tok = json_is_string(result)
                          ? json_string_value(result)
                          : json_string_value(json_object_get(result, "token"));
    if (tok != NULL) {
        char *copy = surpool__strdup(tok);
        if (copy == NULL) {
            json_decref(result);
            return surpool__seterr(err, SURPOOL_ERR_NOMEM, "%s: out of memory", method);
        }
        set_secret(&s->token, copy);
    }
    json_decref(result);
    return SURPOOL_OK;
}

/* Authenticate the session on its socket with what it knows: its token (a
 * cheap check), else (no token, or the token expired or was refused) a fresh
 * sign-in with its stored parameters. Nothing known: nothing to do. */
static surpool_err reauth(surpool_session *s, surpool_error *err)
{
    surpool_err rc = SURPOOL_OK;
    if (s->token != NULL) {
        int64_t exp = surpool__jwt_exp(s->token);
        int64_t now = (int64_t)time(NULL);
        if (exp == 0 || exp > now + 1 || s->creds == NULL) {
            json_t *params = json_pack("[s]", s->token);
            if (params == NULL)
                return surpool__seterr(err, SURPOOL_ERR_NOMEM, "authenticate: out of memory");
            int flags;
            rc = send_raw(s, "authenticate", params, NULL, &flags, err);
            json_decref(params);
            if (rc == SURPOOL_OK || s->creds == NULL)
                return rc;
            if (rc != SURPOOL_ERR_AUTH && rc != SURPOOL_ERR_SERVER)
                return rc; /* the socket, not the token */
        }
    }
    if (s->creds != NULL) {
        surpool__error_clear(err);
        rc = signin_stored(s, "signin", err);
    }
    return rc;
}

static surpool_err restore_use(surpool_session *s, surpool_error *err)
{
    if (s->ns == NULL)
        return SURPOOL_OK;
    json_t *params = s->db != NULL ? json_pack("[ss]", s->ns, s->db) : json_pack("[sn]", s->ns);
    if (params == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "use: out of memory");
    int flags;
    surpool_err rc = send_raw(s, "use", params, NULL, &flags, err);
    json_decref(params);
    return rc;
}

static surpool_err restore_vars(surpool_session *s, surpool_error *err)
{
    const char *name;
    json_t *value;
    json_object_foreach(s->vars, name, value)
    {
        json_t *params = json_pack("[sO]", name, value);
        if (params == NULL)
            return surpool__seterr(err, SURPOOL_ERR_NOMEM, "let: out of memory");
        int flags;
        surpool_err rc = send_raw(s, "let", params, NULL, &flags, err);
        json_decref(params);
        if (rc != SURPOOL_OK)
            return rc;
    }
    return SURPOOL_OK;
}

/* Leave the current socket: detach there when it is still usable (best
 * effort: a failure only leaves a session the socket's close will end). */
static void drop_socket(surpool_session *s)
{
    if (s->gen == 0)
        return;
    surpool__lane *l = s->member.lane;
    if (surpool__lane_socket_ok(l, s->gen)) {
        surpool_error ignored;
        surpool__error_clear(&ignored);
        int flags;
        uint64_t gen = s->gen;
        surpool__lane_session_call(l, &gen, s->id, "detach", NULL, s->timeout_ms, NULL, &flags,
                                   &ignored);
    }
    surpool__lane_unbind(l, s->gen);
    s->gen = 0;
}

/* Attach on the socket with the fewest sessions and restore the state
 * (rule S2). `signup`: the first authentication is a signup with the stored
 * parameters (surpool_session_open only). On failure the session is left
 * stale: the next call starts over. */
static surpool_err rebuild(surpool_session *s, int signup, surpool_error *err)
{
    drop_socket(s);
    s->stale = 1;
    int flags;
    surpool_err rc = send_raw(s, "attach", NULL, NULL, &flags, err);
    if (rc != SURPOOL_OK) {
        if (rc == SURPOOL_ERR_SERVER && err != NULL && err->server_code == -32601)
            rc = surpool__seterr(err, SURPOOL_ERR_UNSUPPORTED,
                                 "sessions need SurrealDB 3.x (the server does not know "
                                 "`attach`)");
        if (s->gen != 0) { /* sent, refused: not attached there */
            surpool__lane_unbind(s->member.lane, s->gen);
            s->gen = 0;
        }
        return rc;
    }
    rc = signup ? signin_stored(s, "signup", err) : reauth(s, err);
    if (rc == SURPOOL_OK)
        rc = restore_use(s, err);
    if (rc == SURPOOL_OK)
        rc = restore_vars(s, err);
    if (rc == SURPOOL_OK)
        s->stale = 0;
    return rc;
}

/* Keep the client-side copy in step with a call that succeeded. */
static surpool_err track(surpool_session *s, const char *method, const json_t *params,
                         const json_t *result, surpool_error *err)
{
    const json_t *a0 = json_array_get(params, 0), *a1 = json_array_get(params, 1);
    int bad = 0;
    if (strcmp(method, "use") == 0) {
        /* 3.x answers {namespace, database}: what is really selected now. */
        const char *ns = json_string_value(json_object_get(result, "namespace"));
        const char *db = json_string_value(json_object_get(result, "database"));
        if (!json_is_object(result)) {
            ns = json_string_value(a0);
            db = json_string_value(a1);
        }
        bad = replace_str(&s->ns, ns) || replace_str(&s->db, db);
    } else if (strcmp(method, "let") == 0) {
        if (s->vars == NULL && (s->vars = json_object()) == NULL)
            bad = 1;
        else
            bad = json_object_set_new(s->vars, json_string_value(a0), json_deep_copy(a1)) != 0;
    } else if (strcmp(method, "unset") == 0) {
        if (s->vars != NULL)
            json_object_del(s->vars, json_string_value(a0));
    } else if (strcmp(method, "signin") == 0 || strcmp(method, "signup") == 0) {
        const char *tok = json_is_string(result)
                              ? json_string_value(result)
                              : json_string_value(json_object_get(result, "token"));
        char *t = tok != NULL ? surpool__strdup(tok) : NULL;
        char *c = json_dumps(a0, JSON_COMPACT);
        set_secret(&s->token, t);
        set_secret(&s->creds, c);
        bad = (tok != NULL && t == NULL) || c == NULL;
    } else if (strcmp(method, "authenticate") == 0) {
        char *t = surpool__strdup(json_string_value(a0));
        set_secret(&s->token, t);
        set_secret(&s->creds, NULL); /* another identity now */
        bad = t == NULL;
    } else if (strcmp(method, "invalidate") == 0) {
        set_secret(&s->token, NULL);
        set_secret(&s->creds, NULL);
    }
    if (bad) {
        /* The server holds state we could not copy: rebuild it next time. */
        s->stale = 1;
        return surpool__seterr(err, SURPOOL_ERR_NOMEM,
                               "%s: out of memory keeping the session's state", method);
    }
    return SURPOOL_OK;
}

/* Shapes the tracked methods must have (the copy is read from them). */
static surpool_err check_tracked(const char *method, const json_t *params, surpool_error *err)
{
    const json_t *a0 = json_array_get(params, 0);
    size_t n = json_array_size(params);
    if ((strcmp(method, "let") == 0 && (n != 2 || !json_is_string(a0))) ||
        (strcmp(method, "unset") == 0 && (n != 1 || !json_is_string(a0))) ||
        ((strcmp(method, "signin") == 0 || strcmp(method, "signup") == 0) &&
         (n != 1 || !json_is_object(a0))) ||
        (strcmp(method, "authenticate") == 0 && (n != 1 || !json_is_string(a0))) ||
        (strcmp(method, "use") == 0 &&
         (n < 1 || n > 2 || !json_is_string(a0) || json_string_length(a0) == 0 ||
          (n == 2 && !json_is_string(json_array_get(params, 1)) &&
           !json_is_null(json_array_get(params, 1))))))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "%s: params do not have the method's shape", method);
    return SURPOOL_OK;
}

/* Every call: rebuild if needed (S2), send, re-authenticate and send again
 * once if the session expired (S3), keep the copy in step. */
static surpool_err session_rpc(surpool_session *s, const char *method, const json_t *params,
                               json_t **out, surpool_error *err)
{
    surpool_err rc;
    json_t *result = NULL;
    int flags = 0;
    /* A socket may die unnoticed until a request fails on it (several die
     * together when a server restarts): a rebuild that fails on a dying
     * socket, or a call that never left because its socket was gone, starts
     * over elsewhere, a few times. A call that was sent is never repeated. */
    for (int attempt = 1;; attempt++) {
        if (s->stale || !surpool__lane_socket_ok(s->member.lane, s->gen)) {
            surpool__error_clear(err);
            rc = rebuild(s, 0, err);
            if (rc != SURPOOL_OK && attempt < REBUILD_ATTEMPTS &&
                surpool__breaks_connection(rc) && rc != SURPOOL_ERR_REQUEST_TIMEOUT)
                continue;
            if (rc != SURPOOL_OK)
                return rc;
        }
        rc = send_raw(s, method, params, &result, &flags, err);
        if (rc == SURPOOL_ERR_DISCONNECTED && (flags & SURPOOL__LANE_UNSENT) &&
            attempt < REBUILD_ATTEMPTS) {
            s->stale = 1;
            continue;
        }
        break;
    }
    if (rc != SURPOOL_OK && (flags & SURPOOL__LANE_EXPIRED) &&
        (s->token != NULL || s->creds != NULL)) {
        surpool_error rerr;
        surpool__error_clear(&rerr);
        surpool_err arc = reauth(s, &rerr);
        if (arc != SURPOOL_OK) {
            s->stale = 1;
            surpool__error_copy(err, &rerr);
            return arc;
        }
        surpool__error_clear(err);
        rc = send_raw(s, method, params, &result, &flags, err);
    }
    if (rc != SURPOOL_OK) {
        if (surpool__breaks_connection(rc) && rc != SURPOOL_ERR_REQUEST_TIMEOUT)
            s->stale = 1; /* the socket is gone: next call rebuilds elsewhere */
        return rc;
    }
    rc = track(s, method, params, result, err);
    if (rc == SURPOOL_OK && out != NULL)
        *out = result;
    else
        json_decref(result);
    return rc;
}

/* ------------------------------------------------------------------------- */
/* Public                                                                     */
/* ------------------------------------------------------------------------- */

void surpool_session_options_init(surpool_session_options *opts)
{
    if (opts == NULL)
        return;
    memset(opts, 0, sizeof(*opts));
    opts->timeout_ms = -1;
}

static void session_free(surpool_session *s)
{
    surpool__free(s->ns);
    surpool__free(s->db);
    set_secret(&s->token, NULL);
    set_secret(&s->creds, NULL);
    json_decref(s->vars);
    surpool__free(s);
}

/* The options' authentication as the session's stored state. */
static surpool_err take_auth(surpool_session *s, const surpool_session_options *o, int *signup,
                             surpool_error *err)
{
    int n = (o->signin != NULL) + (o->signup_access != NULL) + (o->token != NULL);
    if (n > 1)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "session: give at most one of signin, signup_access, token");
    json_t *params = NULL;
    if (o->signin != NULL) {
        surpool_err rc = surpool__signin_params(o->signin, &params, err);
        if (rc != SURPOOL_OK)
            return rc;
    } else if (o->signup_access != NULL) {
        surpool_err rc = surpool__signup_params(o->ns, o->db, o->signup_access, o->signup_vars,
                                                &params, err);
        if (rc != SURPOOL_OK)
            return rc;
        *signup = 1;
    } else if (o->token != NULL) {
        if (o->token[0] == '\0')
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "session: empty token");
        if ((s->token = surpool__strdup(o->token)) == NULL)
            return surpool__seterr(err, SURPOOL_ERR_NOMEM, "session: out of memory");
        return SURPOOL_OK;
    } else {
        return SURPOOL_OK;
    }
    s->creds = json_dumps(json_array_get(params, 0), JSON_COMPACT);
    /* The params hold a password: jansson frees them; the text copy is wiped. */
    json_decref(params);
    if (s->creds == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "session: out of memory");
    return SURPOOL_OK;
}

surpool_err surpool_session_open(surpool_pool *pool, const surpool_session_options *opts,
                                 surpool_session **out, surpool_error *err)
{
    if (out != NULL)
        *out = NULL;
    if (pool == NULL || out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "session_open: pool and out are "
                               "required");
    if (surpool__in_result_callback())
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "surpool_session_open() called from inside a surpool_result_fn "
                               "callback: it would deadlock");
    surpool_session_options defaults;
    if (opts == NULL) {
        surpool_session_options_init(&defaults);
        opts = &defaults;
    }
    if (opts->db != NULL && opts->ns == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "session: db needs ns");
    if ((opts->ns != NULL && opts->ns[0] == '\0') || (opts->db != NULL && opts->db[0] == '\0'))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "session: ns and db must be NULL or non-empty");
    /* Checked here, before anything is sent: packed later (the rebuild's
     * `use` and `authenticate`), they would fail as "out of memory" after
     * the session was attached. */
    if (!surpool__utf8_valid_str(opts->ns) || !surpool__utf8_valid_str(opts->db) ||
        !surpool__utf8_valid_str(opts->token) || !surpool__utf8_valid_str(opts->signup_access))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "session: ns, db, token and signup_access must be valid UTF-8");
    if (opts->timeout_ms > SURPOOL__MS_MAX)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "session: timeout_ms must be at most %lld (365 days)",
                               SURPOOL__MS_MAX);
    surpool__lane *l = surpool__pool_lane(pool);
    if (l == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "sessions ride the shared lane: set shared_connections > 0 "
                               "(and max_connections > 1)");
    surpool_session *s = surpool__calloc(1, sizeof(*s));
    if (s == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "session: out of memory");
    s->pool = pool;
    s->timeout_ms = opts->timeout_ms;
    int signup = 0;
    new_id(s->id);
    surpool_err rc = take_auth(s, opts, &signup, err);
    if (rc == SURPOOL_OK && (replace_str(&s->ns, opts->ns) || replace_str(&s->db, opts->db)))
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "session: out of memory");
    if (rc != SURPOOL_OK) {
        session_free(s);
        return rc;
    }
    rc = surpool__lane_join(l, &s->member, err);
    if (rc != SURPOOL_OK) {
        session_free(s);
        return rc;
    }
    rc = rebuild(s, signup, err);
    if (rc != SURPOOL_OK) {
        surpool_session_close(s);
        return rc;
    }
    *out = s;
    return SURPOOL_OK;
}

void surpool_session_close(surpool_session *s)
{
    if (s == NULL)
        return;
    if (s->member.lane != NULL && !surpool__in_result_callback()) {
        drop_socket(s);
        surpool__lane_leave(&s->member);
    } else if (s->member.lane != NULL) {
        /* From a callback a detach would deadlock: the socket's close ends it. */
        surpool__lane_unbind(s->member.lane, s->gen);
        surpool__lane_leave(&s->member);
    }
    session_free(s);
}

const char *surpool_session_id(const surpool_session *s)
{
    return s != NULL ? s->id : "";
}

surpool_err surpool_session_call(surpool_session *s, const char *method, const json_t *params,
                                 json_t **out, surpool_error *err)
{
    surpool_err rc = check_call(s, err, "surpool_session_call");
    if (rc != SURPOOL_OK)
        return rc;
    rc = surpool__check_method_params(method, params, err);
    if (rc != SURPOOL_OK)
        return rc;
    const char *why = refused(method);
    if (why != NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "%s is not a session call: %s",
                               method, why);
    rc = check_tracked(method, params, err);
    if (rc != SURPOOL_OK)
        return rc;
    return session_rpc(s, method, params, out, err);
}

surpool_err surpool_session_query(surpool_session *s, const char *sql, const json_t *vars,
                                  json_t **out, surpool_error *err)
{
    surpool_err rc = check_call(s, err, "surpool_session_query");
    if (rc != SURPOOL_OK)
        return rc;
    json_t *params = NULL;
    rc = surpool__query_params(sql, vars, &params, err);
    if (rc != SURPOOL_OK)
        return rc;
    rc = session_rpc(s, "query", params, out, err);
    json_decref(params);
    return rc;
}

/* A typed wrapper's params (stolen) through surpool_session_call; NULL params:
 * packing them failed, which (the wrapper checked its strings) is out of
 * memory. */
static surpool_err call_stolen(surpool_session *s, const char *method, json_t *params,
                               json_t **out, surpool_error *err)
{
    surpool_err rc = check_call(s, err, method);
    if (rc != SURPOOL_OK) {
        json_decref(params);
        return rc;
    }
    if (params == NULL) /* every string was checked by the caller */
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "%s: out of memory", method);
    rc = surpool_session_call(s, method, params, out, err);
    json_decref(params);
    return rc;
}

surpool_err surpool_session_use(surpool_session *s, const char *ns, const char *db,
                                surpool_error *err)
{
    if (ns == NULL || ns[0] == '\0' || (db != NULL && db[0] == '\0'))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "use: ns must be non-empty, db NULL or non-empty");
    if (!surpool__utf8_valid_str(ns) || !surpool__utf8_valid_str(db))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "use: ns and db must be UTF-8");
    return call_stolen(s, "use", db != NULL ? json_pack("[ss]", ns, db) : json_pack("[sn]", ns),
                       NULL, err);
}

surpool_err surpool_session_let(surpool_session *s, const char *name, const json_t *value,
                                surpool_error *err)
{
    json_t *params = NULL;
    surpool_err rc = surpool__var_params("let", name, value, &params, err);
    if (rc != SURPOOL_OK)
        return rc;
    return call_stolen(s, "let", params, NULL, err);
}

surpool_err surpool_session_unset(surpool_session *s, const char *name, surpool_error *err)
{
    json_t *params = NULL;
    surpool_err rc = surpool__var_params("unset", name, NULL, &params, err);
    if (rc != SURPOOL_OK)
        return rc;
    return call_stolen(s, "unset", params, NULL, err);
}

surpool_err surpool_session_signin(surpool_session *s, const surpool_credentials *cred,
                                   json_t **out, surpool_error *err)
{
    json_t *params = NULL;
    surpool_err rc = surpool__signin_params(cred, &params, err);
    if (rc != SURPOOL_OK)
        return rc;
    return call_stolen(s, "signin", params, out, err);
}

surpool_err surpool_session_signup(surpool_session *s, const char *ns, const char *db,
                                   const char *access, const json_t *vars, json_t **out,
                                   surpool_error *err)
{
    json_t *params = NULL;
    surpool_err rc = surpool__signup_params(ns, db, access, vars, &params, err);
    if (rc != SURPOOL_OK)
        return rc;
    return call_stolen(s, "signup", params, out, err);
}

surpool_err surpool_session_authenticate(surpool_session *s, const char *token,
                                         surpool_error *err)
{
    if (token == NULL || token[0] == '\0')
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "authenticate: token is required");
    if (!surpool__utf8_valid_str(token))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "authenticate: token must be UTF-8");
    return call_stolen(s, "authenticate", json_pack("[s]", token), NULL, err);
}

surpool_err surpool_session_invalidate(surpool_session *s, surpool_error *err)
{
    return call_stolen(s, "invalidate", json_array(), NULL, err);
}
