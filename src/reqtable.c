/*
 * The request table (reqtable.h): queued and in-flight requests of one
 * connection, the id map, deadline expiry and completion lists. No locks, no
 * sockets, no allocation outside surpool__reqtable_reserve().
 */
#include <string.h>

#include "internal.h"
#include "reqtable.h"

#define REQ_OF(q) SURPOOL__QUEUE_DATA(q, surpool__treq, tlink)

/* ---- request lists ---- */

static void list_init(surpool__reqlist *l)
{
    surpool__queue_init(&l->head);
    l->n = 0;
    l->sorted = 1;
}

static surpool__treq *list_head(const surpool__reqlist *l)
{
    surpool__queue *q = surpool__queue_head(&l->head);
    return q != NULL ? REQ_OF(q) : NULL;
}

static void list_push(surpool__reqlist *l, surpool__treq *r)
{
    surpool__queue *tail = surpool__queue_tail(&l->head);
    if (tail != NULL && r->deadline_ns < REQ_OF(tail)->deadline_ns)
        l->sorted = 0;
    surpool__queue_insert_tail(&l->head, &r->tlink);
    l->n++;
}

static void list_remove(surpool__reqlist *l, surpool__treq *r)
{
    surpool__queue_remove(&r->tlink);
    if (--l->n == 0)
        l->sorted = 1;
}

/* ---- done lists ---- */

void surpool__reqdone_init(surpool__reqdone *d)
{
    surpool__queue_init(&d->head);
}

static void done_add(surpool__reqdone *d, surpool__treq *r, surpool_err code, const char *msg)
{
    r->tstate = SURPOOL__TREQ_DONE;
    r->status = code;
    if (code != SURPOOL_OK)
        surpool__strlcpy(r->message, msg, sizeof(r->message));
    else
        r->message[0] = '\0';
    surpool__queue_insert_tail(&d->head, &r->tlink);
}

/* Call done() for each; never with a connection mutex held. */
void surpool__reqdone_run(surpool__reqdone *d)
{
    surpool__queue *q;
    while ((q = surpool__queue_head(&d->head)) != NULL) {
        surpool__queue_remove(q); /* before done(): it may free the request */
        surpool__treq *r = REQ_OF(q);
        r->done(r);
    }
}

/* ---- id map ---- */

static size_t id_hash(int64_t id)
{
    uint64_t x = (uint64_t)id * UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(x ^ (x >> 29));
}

/* Make room for `need` entries at load factor <= 1/2. */
static int map_reserve(surpool__idmap *m, size_t need)
{
    size_t cap = m->slots != NULL ? m->mask + 1 : 0;
    if (need <= cap / 2)
        return 0;
    size_t ncap = cap != 0 ? cap : 64;
    while (need > ncap / 2) {
        if (ncap > SIZE_MAX / 4 / sizeof(void *))
            return -1;
        ncap *= 2;
    }
    surpool__treq **ns = surpool__calloc(ncap, sizeof(*ns));
    if (ns == NULL)
        return -1;
    for (size_t i = 0; i < cap; i++) {
        surpool__treq *r = m->slots[i];
        if (r == NULL)
            continue;
        size_t j = id_hash(r->id) & (ncap - 1);
        while (ns[j] != NULL)
            j = (j + 1) & (ncap - 1);
        ns[j] = r;
    }
    surpool__free(m->slots);
    m->slots = ns;
    m->mask = ncap - 1;
    return 0;
}

static void map_insert(surpool__idmap *m, surpool__treq *r)
{
    size_t i = id_hash(r->id) & m->mask;
    while (m->slots[i] != NULL)
        i = (i + 1) & m->mask;
    m->slots[i] = r;
    m->count++;
}

/* Slot of the first entry with `id` (and, if want != NULL, that exact request). */
static size_t map_find(const surpool__idmap *m, int64_t id, const surpool__treq *want)
{
    if (m->slots == NULL)
        return SIZE_MAX;
    size_t i = id_hash(id) & m->mask;
    for (surpool__treq *r; (r = m->slots[i]) != NULL; i = (i + 1) & m->mask) {
        if (r->id == id && (want == NULL || r == want))
            return i;
    }
    return SIZE_MAX;
}

static void map_remove_at(surpool__idmap *m, size_t i)
{
    /* Backward-shift deletion keeps every probe chain unbroken without tombstones. */
    size_t j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        surpool__treq *r = m->slots[j];
        if (r == NULL)
            break;
        size_t k = id_hash(r->id) & m->mask;
        /* r may stay at j if its home k lies cyclically in (i, j]. */
        if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
            continue;
        m->slots[i] = r;
        i = j;
    }
    m->slots[i] = NULL;
    m->count--;
}

static void map_remove(surpool__idmap *m, const surpool__treq *r)
{
    size_t i = map_find(m, r->id, r);
    if (i != SIZE_MAX)
        map_remove_at(m, i);
}

static void map_clear(surpool__idmap *m)
{
    if (m->slots != NULL)
        memset(m->slots, 0, (m->mask + 1) * sizeof(*m->slots));
    m->count = 0;
}

/* ---- the table ---- */

void surpool__reqtable_init(surpool__reqtable *rt)
{
    list_init(&rt->queue);
    list_init(&rt->inflight);
    memset(&rt->map, 0, sizeof(rt->map));
    rt->deadline_hint = INT64_MAX;
}

void surpool__reqtable_free(surpool__reqtable *rt)
{
    surpool__free(rt->map.slots);
    rt->map.slots = NULL;
    rt->map.mask = 0;
    rt->map.count = 0;
}

int surpool__reqtable_reserve(surpool__reqtable *rt)
{
    return map_reserve(&rt->map, rt->map.count + rt->queue.n + 1);
}

void surpool__reqtable_queue(surpool__reqtable *rt, surpool__treq *req)
{
    req->status = SURPOOL_OK;
    req->reply = NULL;
    req->message[0] = '\0';
    req->tstate = SURPOOL__TREQ_QUEUED;
    list_push(&rt->queue, req);
    if (req->deadline_ns < rt->deadline_hint)
        rt->deadline_hint = req->deadline_ns;
}

int surpool__reqtable_has_queued(const surpool__reqtable *rt)
{
    return rt->queue.n != 0;
}

surpool__treq *surpool__reqtable_send_next(surpool__reqtable *rt)
{
    surpool__treq *r = list_head(&rt->queue);
    if (r == NULL)
        return NULL;
    list_remove(&rt->queue, r);
    list_push(&rt->inflight, r);
    map_insert(&rt->map, r);
    r->tstate = SURPOOL__TREQ_INFLIGHT;
    return r;
}

surpool__treq *surpool__reqtable_take(surpool__reqtable *rt, int64_t id)
{
    size_t i = map_find(&rt->map, id, NULL);
    if (i == SIZE_MAX)
        return NULL;
    surpool__treq *r = rt->map.slots[i];
    map_remove_at(&rt->map, i);
    list_remove(&rt->inflight, r);
    r->tstate = SURPOOL__TREQ_DONE;
    r->status = SURPOOL_OK;
    r->message[0] = '\0';
    return r;
}

int surpool__reqtable_cancel(surpool__reqtable *rt, surpool__treq *req)
{
    if (req->tstate == SURPOOL__TREQ_QUEUED) {
        list_remove(&rt->queue, req);
    } else if (req->tstate == SURPOOL__TREQ_INFLIGHT) {
        map_remove(&rt->map, req);
        list_remove(&rt->inflight, req);
    } else {
        return 0;
    }
    req->tstate = SURPOOL__TREQ_NONE;
    return 1;
}

void surpool__reqtable_fail_inflight(surpool__reqtable *rt, surpool__reqdone *d,
                                     surpool_err code, const char *msg)
{
    surpool__treq *r;
    while ((r = list_head(&rt->inflight)) != NULL) {
        list_remove(&rt->inflight, r);
        done_add(d, r, code, msg);
    }
    map_clear(&rt->map);
}

void surpool__reqtable_fail_all(surpool__reqtable *rt, surpool__reqdone *d, surpool_err code,
                                const char *msg)
{
    surpool__reqtable_fail_inflight(rt, d, code, msg);
    surpool__treq *r;
    while ((r = list_head(&rt->queue)) != NULL) {
        list_remove(&rt->queue, r);
        done_add(d, r, code, msg);
    }
    rt->deadline_hint = INT64_MAX;
}

/* Move expired requests of `l` to `d`; lower *earliest to the first remaining
 * deadline. Sorted lists cost O(expired); unsorted ones a full walk, which also
 * notices when the list became sorted again. */
static void expire_list(surpool__reqtable *rt, surpool__reqlist *l, int in_map, int64_t now,
                        surpool__reqdone *d, int64_t *earliest, const char *msg)
{
    if (l->sorted) {
        surpool__treq *r;
        while ((r = list_head(l)) != NULL && r->deadline_ns <= now) {
            list_remove(l, r);
            if (in_map)
                map_remove(&rt->map, r);
            done_add(d, r, SURPOOL_ERR_REQUEST_TIMEOUT, msg);
        }
        if ((r = list_head(l)) != NULL && r->deadline_ns < *earliest)
            *earliest = r->deadline_ns;
        return;
    }
    int64_t prev = INT64_MIN;
    int in_order = 1;
    surpool__queue *q, *next;
    SURPOOL__QUEUE_FOREACH_SAFE(q, next, &l->head)
    {
        surpool__treq *r = REQ_OF(q);
        if (r->deadline_ns <= now) {
            list_remove(l, r);
            if (in_map)
                map_remove(&rt->map, r);
            done_add(d, r, SURPOOL_ERR_REQUEST_TIMEOUT, msg);
        } else {
            if (r->deadline_ns < *earliest)
                *earliest = r->deadline_ns;
            if (r->deadline_ns < prev)
                in_order = 0;
            prev = r->deadline_ns;
        }
    }
    if (in_order)
        l->sorted = 1;
}

int64_t surpool__reqtable_expire(surpool__reqtable *rt, int64_t now, surpool__reqdone *d)
{
    int64_t earliest = INT64_MAX;
    expire_list(rt, &rt->queue, 0, now, d, &earliest,
                "request timed out before it could be sent");
    expire_list(rt, &rt->inflight, 1, now, d, &earliest,
                "request timed out waiting for the reply");
    rt->deadline_hint = earliest;
    return earliest;
}
