/*
 * The pool's token and the serialized refresh (rules in auth.h), the JWT
 * `exp` claim, and how an expired session looks on the wire.
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "thread.h"

int surpool__auth_init(surpool__auth *a)
{
    memset(a, 0, sizeof(*a));
    a->renew_ns = INT64_MAX;
    if (pthread_mutex_init(&a->mu, NULL) != 0)
        return -1;
    if (surpool__cond_init(&a->cv) != 0) {
        pthread_mutex_destroy(&a->mu);
        return -1;
    }
    return 0;
}

void surpool__auth_destroy(surpool__auth *a)
{
    surpool__free_secret(a->token);
    a->token = NULL;
    surpool__wipe(&a->failure, sizeof(a->failure));
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->mu);
}

char *surpool__auth_current(surpool__auth *a, uint64_t *gen)
{
    pthread_mutex_lock(&a->mu);
    char *copy = NULL;
    if (a->token != NULL && !a->no_authenticate && surpool__now_ns() < a->renew_ns)
        copy = surpool__strdup(a->token);
    *gen = a->gen;
    pthread_mutex_unlock(&a->mu);
    return copy;
}

/* Replace the token (wiping the old one), mu held. */
static void set_token_locked(surpool__auth *a, char *token)
{
    surpool__free_secret(a->token);
    a->token = token;
    a->renew_ns = INT64_MAX;
    if (token == NULL)
        return;
    /* Renew at 80 % of its life, iat to exp (the wall clock and the server's
     * agree well enough for that margin); a token already past that point
     * by our clock (skew) is not trusted to say: the server's refusal will. */
    int64_t iat = 0;
    int64_t exp = surpool__jwt_exp_iat(token, &iat);
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    int64_t now_ms = (int64_t)wall.tv_sec * 1000 + wall.tv_nsec / 1000000;
    if (iat <= 0 || iat > exp)
        iat = now_ms / 1000;
    int64_t renew_ms = iat * 1000 + (exp - iat) * 800; /* exp < 2^53: no overflow */
    if (exp > 0 && exp < (INT64_C(1) << 53) && renew_ms > now_ms)
        a->renew_ns =
            surpool__add_sat(surpool__now_ns(), (renew_ms - now_ms) * SURPOOL__NS_PER_MS);
}

void surpool__auth_refused(surpool__auth *a, uint64_t gen, int server_refuses)
{
    pthread_mutex_lock(&a->mu);
    if (a->gen == gen) {
        set_token_locked(a, NULL);
        if (server_refuses)
            a->no_authenticate = 1;
    }
    pthread_mutex_unlock(&a->mu);
}

int surpool__auth_signin_only(surpool__auth *a)
{
    pthread_mutex_lock(&a->mu);
    int r = a->no_authenticate;
    pthread_mutex_unlock(&a->mu);
    return r;
}

int surpool__auth_enter(surpool__auth *a, uint64_t *gen, int64_t deadline_ns, char **token,
                        surpool_error *err)
{
    *token = NULL;
    pthread_mutex_lock(&a->mu);
    while (a->busy) {
        if (surpool__cond_wait_until(&a->cv, &a->mu, deadline_ns) == ETIMEDOUT && a->busy) {
            pthread_mutex_unlock(&a->mu);
            surpool__seterr(err, SURPOOL_ERR_TIMEOUT,
                            "timed out waiting for the pool's sign-in in progress");
            return SURPOOL__AUTH_FAILED;
        }
    }
    if (a->gen != *gen) {
        /* A refresh ended since we looked (rule A2): take its outcome. */
        if (a->failure.code != SURPOOL_OK) {
            surpool__error_copy(err, &a->failure);
            pthread_mutex_unlock(&a->mu);
            return SURPOOL__AUTH_FAILED;
        }
        if (a->token != NULL && !a->no_authenticate) {
            *token = surpool__strdup(a->token);
            *gen = a->gen;
            pthread_mutex_unlock(&a->mu);
            if (*token != NULL)
                return SURPOOL__AUTH_NEWER;
            surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory");
            return SURPOOL__AUTH_FAILED;
        }
    }
    a->busy = 1;
    pthread_mutex_unlock(&a->mu);
    return SURPOOL__AUTH_REFRESH;
}

void surpool__auth_done(surpool__auth *a, const char *token, const surpool_error *failure)
{
    char *copy = token != NULL ? surpool__strdup(token) : NULL;
    pthread_mutex_lock(&a->mu);
    a->busy = 0;
    if (failure == NULL) {
        set_token_locked(a, copy);
        surpool__error_clear(&a->failure);
        a->refreshes++;
        a->gen++;
    } else if (failure->code == SURPOOL_ERR_AUTH) {
        set_token_locked(a, NULL);
        surpool__error_copy(&a->failure, failure);
        a->refreshes++;
        a->gen++;
    } /* else: not shared; a waiter refreshes itself (rule A3) */
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

/* base64url digit value, or -1. */
static int b64url(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '-')
        return 62;
    if (ch == '_')
        return 63;
    return -1;
}

/* The payload's claims are not secret, but the buffer lives next to the
 * token's text: wiped anyway. */
#define JWT_PAYLOAD_MAX 4096

int64_t surpool__jwt_exp(const char *token)
{
    return surpool__jwt_exp_iat(token, NULL);
}

/* A positive integer claim, or 0. */
static int64_t claim(const json_t *claims, const char *name)
{
    const json_t *v = json_object_get(claims, name);
    if (json_is_integer(v) && json_integer_value(v) > 0)
        return (int64_t)json_integer_value(v);
    if (json_is_real(v) && json_real_value(v) > 0 && json_real_value(v) < 9.2e18)
        return (int64_t)json_real_value(v);
    return 0;
}

int64_t surpool__jwt_exp_iat(const char *token, int64_t *iat)
{
    if (iat != NULL)
        *iat = 0;
    const char *p = token != NULL ? strchr(token, '.') : NULL;
    const char *end = p != NULL ? strchr(p + 1, '.') : NULL;
    if (end == NULL)
        return 0;
    p++;
    size_t n = (size_t)(end - p);
    if (n == 0 || n / 4 * 3 + 3 > JWT_PAYLOAD_MAX)
        return 0;
    char buf[JWT_PAYLOAD_MAX];
    size_t len = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url((unsigned char)p[i]);
        if (v < 0)
            return 0;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[len++] = (char)((acc >> bits) & 0xff);
        }
    }
    json_t *claims = json_loadb(buf, len, JSON_REJECT_DUPLICATES, NULL);
    surpool__wipe(buf, sizeof(buf));
    int64_t r = claim(claims, "exp");
    if (iat != NULL)
        *iat = claim(claims, "iat");
    json_decref(claims);
    return r;
}

int surpool__reply_session_expired(const json_t *reply)
{
    const json_t *error = json_object_get(reply, "error");
    if (!json_is_object(error))
        return 0;
    const json_t *details = json_object_get(json_object_get(error, "details"), "details");
    const char *dk = json_string_value(json_object_get(details, "kind"));
    if (dk != NULL)
        return strcmp(dk, "SessionExpired") == 0;
    /* 2.x: no kind; "There was a problem with the database: The session has
     * expired". */
    const char *msg = json_string_value(json_object_get(error, "message"));
    return msg != NULL && strstr(msg, "The session has expired") != NULL;
}
