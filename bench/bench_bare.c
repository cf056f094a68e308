#include "bench_bare.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "codec.h"
#include "internal.h"
#include "transport.h"
#include "url.h"
#include "wire.h"

struct bare {
    const surpool__transport_ops *ops;
    surpool__url url;
    surpool__logger logger;
    surpool__transport *t;
    surpool__tconn **conns;
    int nconns;
    atomic_llong next_id;
};

typedef struct bare_req {
    surpool__treq treq; /* first: done() hands us &treq */
    bare_cb cb;
    void *ud;
} bare_req;

static void on_dead(void *ud, surpool_err why, const char *message)
{
    (void)ud;
    (void)why;
    bc_log("bench bare: a connection died: %s", message != NULL ? message : "");
}

static void on_notify(void *ud, json_t *frame)
{
    (void)ud;
    (void)frame;
}

static void bare_done(surpool__treq *treq)
{
    bare_req *r = (bare_req *)(void *)treq;
    int ok = 0;
    if (treq->status == SURPOOL_OK) {
        surpool__wire_decode_reply(treq); /* the transport hands over raw bytes */
        ok = treq->status == SURPOOL_OK && json_object_get(treq->reply, "error") == NULL;
        json_decref(treq->reply);
    }
    surpool__free(treq->buf);
    bare_cb cb = r->cb;
    void *ud = r->ud;
    free(r);
    cb(ud, ok);
}

int bare_submit(bare *b, int idx, const char *method, const json_t *params, bare_cb cb,
                void *ud)
{
    bare_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -1;
    r->cb = cb;
    r->ud = ud;
    r->treq.id = (int64_t)atomic_fetch_add(&b->next_id, 1);
    r->treq.deadline_ns = INT64_MAX;
    r->treq.done = bare_done;
    r->treq.userdata = r;
    if (surpool__codec_encode_request(r->treq.id, method, params, b->ops->headroom,
                                      &r->treq.buf, &r->treq.len, NULL) != SURPOOL_OK) {
        free(r);
        return -1;
    }
    if (b->ops->submit(b->conns[idx], &r->treq) != SURPOOL_OK) {
        surpool__free(r->treq.buf);
        free(r);
        return -1;
    }
    return 0;
}

/* ---- synchronous calls for the set-up ---- */

typedef struct sync_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, ok;
} sync_wait;

static void sync_cb(void *ud, int ok)
{
    sync_wait *s = ud;
    pthread_mutex_lock(&s->mu);
    s->done = 1;
    s->ok = ok;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static int bare_call_sync(bare *b, int idx, const char *method, json_t *params)
{
    sync_wait s;
    memset(&s, 0, sizeof(s));
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    int rc = bare_submit(b, idx, method, params, sync_cb, &s);
    if (rc == 0) {
        pthread_mutex_lock(&s.mu);
        while (!s.done)
            pthread_cond_wait(&s.cv, &s.mu);
        pthread_mutex_unlock(&s.mu);
        rc = s.ok ? 0 : -1;
    }
    pthread_cond_destroy(&s.cv);
    pthread_mutex_destroy(&s.mu);
    json_decref(params);
    return rc;
}

bare *bare_open(const char *url, int nconns, const char *user, const char *pass, const char *ns,
                const char *db)
{
    bare *b = calloc(1, sizeof(*b));
    surpool_error err;
    b->ops = &surpool__transport_lws;
    atomic_init(&b->next_id, 1);
    if (surpool__url_parse(url, &b->url, &err) != SURPOOL_OK) {
        bc_log("bench bare: bad url: %s", err.message);
        free(b);
        return NULL;
    }
    surpool__tconfig tc;
    memset(&tc, 0, sizeof(tc));
    tc.url = &b->url;
    tc.connect_timeout_ms = 20000;
    tc.max_message_bytes = 64u << 20;
    tc.max_connections = nconns;
    tc.logger = &b->logger; /* no log function: silent */
    if (b->ops->create(&tc, NULL, &b->t, &err) != SURPOOL_OK) {
        bc_log("bench bare: transport create failed: %s", err.message);
        surpool__url_free(&b->url);
        free(b);
        return NULL;
    }
    b->conns = calloc((size_t)nconns, sizeof(*b->conns));
    surpool__tconn_events ev = {.on_dead = on_dead, .on_notify = on_notify, .userdata = b};
    for (int i = 0; i < nconns; i++) {
        if (b->ops->open(b->t, NULL, bc_now_ns() + INT64_C(20000000000), &ev, &b->conns[i],
                         &err) != SURPOOL_OK) {
            bc_log("bench bare: open failed: %s", err.message);
            bare_close(b);
            return NULL;
        }
        b->nconns++;
        if (user != NULL && bare_call_sync(b, i, "signin",
                                           json_pack("[{s:s,s:s}]", "user", user, "pass",
                                                     pass != NULL ? pass : "")) != 0) {
            bc_log("bench bare: signin failed");
            bare_close(b);
            return NULL;
        }
        if (ns != NULL && bare_call_sync(b, i, "use", json_pack("[s,s?]", ns, db)) != 0) {
            bc_log("bench bare: use failed");
            bare_close(b);
            return NULL;
        }
    }
    return b;
}

int bare_nconns(const bare *b)
{
    return b->nconns;
}

void bare_close(bare *b)
{
    if (b == NULL)
        return;
    for (int i = 0; i < b->nconns; i++)
        b->ops->close(b->conns[i]);
    b->ops->destroy(b->t);
    free(b->conns);
    surpool__url_free(&b->url);
    free(b);
}
