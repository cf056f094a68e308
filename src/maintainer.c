/*
 * The maintainer: one thread per pool that, every maintenance_interval_ms or
 * when a connection dies, retires idle connections (dead, past their
 * lifetime, idle too long above min_connections), keeps idle ones alive with a
 * ping, reports leases held past leak_threshold_ms, and asks the governor to
 * refill to min_connections. pgbouncer's janitor.c is the model: periodic
 * work, apart from the core's acquire and release.
 *
 * It works under the pool mutex (pool.c) and, like everything else, never runs
 * slow work (pings, closes) or user callbacks under it (rule 8). A connection
 * it pings is lent to it as a lease (c->maint) so nobody else can take it; it
 * goes back to the cold end of the idle list, its idle clock unchanged.
 */
#include <errno.h>
#include <pthread.h>

#include "pool.h"
#include "thread.h"

/* Per tick, so that one tick's events fit the event queue (SURPOOL__EVQ_MAX). */
#define MAINT_BATCH 6

/* What one tick found to do outside the mutex. */
typedef struct maint_plan {
    surpool_conn *victims[MAINT_BATCH], *pings[MAINT_BATCH];
    const char *why[MAINT_BATCH];
    int nv, np;
} maint_plan;

/* May rebalance move connections to node `e`? Its circuit is closed, its
 * backoff has passed, and its last connect worked: a node whose connects fail
 * (its circuit not open yet, or breaker_threshold 0) would take the place of a
 * working connection, fail, and the replacement land back where it was, every
 * interval. */
static int rebalance_target(const surpool__endpoint *e, int64_t now)
{
    return !e->breaker_open && now >= e->not_before_ns && e->consecutive_failures == 0;
}

/* Steps 1-4 of a tick: decide, under the mutex, never dropping it. */
static void maintain_plan_locked(surpool_pool *p, maint_plan *m, surpool__evq *q)
{
    const surpool_config *cfg = &p->cfg.pub;
    int64_t now = surpool__now_ns();
    surpool_conn **victims = m->victims, **pings = m->pings;
    const char **why = m->why;
    int nv = 0, np = 0;

    /* 1. Idle connections: dead, past their lifetime, or idle too long above the
     *    minimum (oldest first). */
    surpool_conn *c;
    surpool__queue *qi, *prev;
    for (qi = p->idle.prev; qi != &p->idle && nv < MAINT_BATCH; qi = prev) {
        prev = qi->prev;
        c = SURPOOL__QUEUE_DATA(qi, surpool_conn, idle_link);
        const char *reason = surpool__pool_worn_out_locked(p, c, now);
        if (reason == NULL && cfg->idle_timeout_ms > 0 &&
            now - c->last_used_ns >= surpool__ms_to_ns(cfg->idle_timeout_ms) &&
            surpool__pool_total_locked(p) > cfg->min_connections) {
            reason = "idle_timeout reached";
            p->stats.idle_retirements++;
        }
        if (reason != NULL) {
            surpool__pool_forget_locked(p, c);
            why[nv] = reason;
            victims[nv++] = c;
        }
    }

    /* 1a. Rebalance (docs/cluster.md): at most one idle connection per
     *     rebalance_interval_ms leaves the node with the most connections
     *     while it has two more than the healthy node with the fewest; the
     *     governor places its replacement (min_connections, or the next
     *     demand) by the placement policy. Never a storm: one per interval. */
    if (cfg->rebalance_interval_ms > 0 && p->neps > 1 && nv < MAINT_BATCH &&
        now >= p->next_rebalance_ns) {
        int hi = -1, lo = -1, hiload = 0, loload = 0;
        /* Ordered placement wants every connection on the first healthy node:
         * rebalancing is failback, one idle connection per interval from a
         * later node (its replacement goes to the first healthy one). Evening
         * out instead would retire from the first node and reopen there, one
         * connect per interval for ever. */
        int ordered = cfg->placement == SURPOOL_PLACE_ORDERED;
        for (int i = 0; ordered && i < p->neps && lo < 0; i++)
            if (rebalance_target(&p->eps[i], now))
                lo = i;
        for (int i = 0; !ordered && i < p->neps; i++) {
            const surpool__endpoint *e = &p->eps[i];
            int load = e->nconns + e->nconnecting;
            if (hi < 0 || load > hiload) {
                hi = i;
                hiload = load;
            }
            if (rebalance_target(e, now) && (lo < 0 || load < loload)) {
                lo = i;
                loload = load;
            }
        }
        surpool_conn *pick = NULL;
        if ((ordered && lo >= 0) || (hi >= 0 && lo >= 0 && hiload - loload >= 2)) {
            for (qi = p->idle.prev; qi != &p->idle; qi = qi->prev) {
                c = SURPOOL__QUEUE_DATA(qi, surpool_conn, idle_link);
                if (ordered ? c->ep > lo : c->ep == hi) {
                    pick = c; /* the coldest idle one on that node */
                    break;
                }
            }
        }
        if (pick != NULL) {
            p->eps[pick->ep].retired_rebalance++;
            surpool__pool_forget_locked(p, pick);
            why[nv] = "rebalance: its node has more connections than another";
            victims[nv++] = pick;
            p->next_rebalance_ns =
                surpool__add_sat(now, surpool__ms_to_ns(cfg->rebalance_interval_ms));
        }
    }

    /* 2. Keepalive: idle connections unused for keepalive_interval_ms are lent
     *    to the maintainer for one ping. */
    if (cfg->keepalive_interval_ms > 0 && p->nwaiters == 0) {
        for (qi = p->idle.prev; qi != &p->idle && np < MAINT_BATCH; qi = prev) {
            prev = qi->prev;
            c = SURPOOL__QUEUE_DATA(qi, surpool_conn, idle_link);
            if (now - c->last_checked_ns >= surpool__ms_to_ns(cfg->keepalive_interval_ms)) {
                surpool__pool_take_idle_locked(p, c);
                c->maint = 1;
                p->nmaint++;
                pings[np++] = c;
            }
        }
    }

    /* 3. Leaks: user leases older than leak_threshold_ms, reported once. */
    if (cfg->leak_threshold_ms > 0) {
        SURPOOL__QUEUE_FOREACH(qi, &p->all)
        {
            c = SURPOOL__QUEUE_DATA(qi, surpool_conn, all_link);
            if (c->state != SURPOOL__CONN_LEASED || c->maint || c->lane || c->leak_reported)
                continue;
            if (q->n + 2 > SURPOOL__EVQ_MAX - 3 * MAINT_BATCH)
                break; /* the rest next tick: no event or log line is dropped */
            int64_t age = now - c->lease_start_ns;
            if (age < surpool__ms_to_ns(cfg->leak_threshold_ms))
                continue;
            c->leak_reported = 1;
            p->stats.leaks++;
            surpool__evq_log(
                p, q, SURPOOL_LOG_WARN,
                "possible leak: connection %llu leased for %lld ms, acquired at %s:%d",
                (unsigned long long)c->serial, (long long)(age / SURPOOL__NS_PER_MS),
                c->lease_file != NULL ? c->lease_file : "(unknown)", c->lease_line);
            surpool__evq_add(p, q, SURPOOL_EVENT_LEAK, c->serial, -1, age / 1000, SURPOOL_OK,
                             "lease held longer than leak_threshold_ms", c->lease_file,
                             c->lease_line);
        }
    }

    /* 4. Refill to min_connections; probes while the circuit is open. */
    surpool__governor_kick_locked(p);
    surpool__pool_check_locked(p);
    m->nv = nv;
    m->np = np;
}

/* Carry out a plan: close the victims and ping the borrowed ones outside the
 * mutex, then give the pinged ones back. Called with the mutex held; drops it
 * while it closes and pings, and returns with it held again. */
static void maintain_carry_out(surpool_pool *p, const maint_plan *m, surpool__evq *q)
{
    const surpool_config *cfg = &p->cfg.pub;
    surpool_conn *const *victims = m->victims, *const *pings = m->pings, *c;
    const char *const *why = m->why;
    int nv = m->nv, np = m->np;
    if (nv == 0 && np == 0)
        return;
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < nv; i++) {
        uint64_t serial = victims[i]->serial;
        int ep = victims[i]->ep; /* read before the graveyard may free it */
        surpool__log(&p->logger, SURPOOL_LOG_INFO, "closing connection %llu: %s",
                     (unsigned long long)serial, why[i]);
        surpool__pool_close_forgotten(p, victims[i]);
        surpool__evq_add(p, q, SURPOOL_EVENT_DESTROY, serial, ep, 0, SURPOOL_OK, why[i], NULL,
                         0);
    }
    surpool_error perr;
    surpool_err prc[MAINT_BATCH];
    for (int i = 0; i < np; i++)
        prc[i] = surpool__conn_ping(pings[i], cfg->validation_timeout_ms, &perr);
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < np; i++) {
        c = pings[i];
        c->maint = 0;
        p->nmaint--;
        p->stats.validations++;
        if (prc[i] == SURPOOL_OK && !p->closed) {
            p->nleased--;
            surpool__pool_put_locked(p, c, 0, surpool__now_ns());
            continue;
        }
        if (prc[i] != SURPOOL_OK) {
            p->stats.validation_failures++;
            surpool__evq_add(p, q, SURPOOL_EVENT_HEALTH_FAIL, c->serial, c->ep, 0, prc[i],
                             "keepalive ping failed", NULL, 0);
        }
        surpool__evq_add(p, q, SURPOOL_EVENT_DESTROY, c->serial, c->ep, 0, prc[i],
                         prc[i] != SURPOOL_OK ? "keepalive ping failed" : "pool closed", NULL,
                         0);
        surpool__pool_forget_locked(p, c);
        pthread_mutex_unlock(&p->mu);
        surpool__pool_close_forgotten(p, c);
        pthread_mutex_lock(&p->mu);
    }
    surpool__pool_leases_changed_locked(p);
}

static void *maintainer_main(void *arg)
{
    surpool_pool *p = arg;
    surpool__evq q; /* not zero-filled: only q.n matters, and it is 6 KB */
    q.n = 0;
    pthread_mutex_lock(&p->mu);
    while (!p->closed) {
        int64_t next = surpool__add_sat(surpool__now_ns(),
                                        surpool__ms_to_ns(p->cfg.pub.maintenance_interval_ms));
        while (!p->closed && !atomic_load(&p->reap_pending) &&
               surpool__cond_wait_until(&p->maint_cv, &p->mu, next) != ETIMEDOUT)
            ;
        if (p->closed)
            break;
        atomic_store(&p->reap_pending, 0);
        maint_plan m;
        maintain_plan_locked(p, &m, &q);
        maintain_carry_out(p, &m, &q);
        surpool__evq_flush_dropping(p, &q);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int surpool__maintainer_start(surpool_pool *p)
{
    if (pthread_create(&p->maintainer, NULL, maintainer_main, p) != 0)
        return -1;
    p->maintainer_started = 1;
    return 0;
}

void surpool__maintainer_join(surpool_pool *p)
{
    if (p->maintainer_started)
        pthread_join(p->maintainer, NULL);
}

void surpool__pool_conn_died(surpool_pool *p)
{
    atomic_store(&p->reap_pending, 1);
    pthread_cond_signal(&p->maint_cv);
}
