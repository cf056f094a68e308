/*
 * Pool events and log lines, collected under the pool mutex and emitted after
 * it is released (pool.c, rule 8): neither a user callback nor a user logger
 * ever runs under it. A queue lives on its user's stack.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "pool.h"

void surpool__evq_add(const surpool_pool *p, surpool__evq *q, surpool_event_type type,
                      uint64_t conn_id, int ep, int64_t duration_us, surpool_err code,
                      const char *msg, const char *file, int line)
{
    if (p->cfg.pub.on_event == NULL || q->n >= SURPOOL__EVQ_MAX)
        return;
    surpool_event *e = &q->ev[q->n];
    memset(e, 0, sizeof(*e));
    e->type = type;
    e->conn_id = conn_id;
    e->endpoint = ep + 1; /* public: 1-based, 0 = not about one node */
    e->duration_us = duration_us;
    e->code = code;
    e->file = file;
    e->line = line;
    q->log_level[q->n] = -1;
    surpool__strlcpy(q->msg[q->n], msg != NULL ? msg : "", sizeof(q->msg[q->n]));
    q->n++;
}

void surpool__evq_log(const surpool_pool *p, surpool__evq *q, surpool_log_level level,
                      const char *fmt, ...)
{
    if (p->logger.fn == NULL || level > p->logger.level || q->n >= SURPOOL__EVQ_MAX)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q->msg[q->n], sizeof(q->msg[q->n]), fmt, ap);
    va_end(ap);
    q->log_level[q->n] = (int)level;
    q->n++;
}

void surpool__evq_flush_dropping(surpool_pool *p, surpool__evq *q)
{
    if (q->n == 0)
        return;
    pthread_mutex_unlock(&p->mu);
    surpool__evq_flush(p, q);
    pthread_mutex_lock(&p->mu);
}

/* mu NOT held. */
void surpool__evq_flush(const surpool_pool *p, surpool__evq *q)
{
    for (int i = 0; i < q->n; i++) {
        if (q->log_level[i] >= 0) {
            p->logger.fn(p->logger.userdata, (surpool_log_level)q->log_level[i], q->msg[i]);
            continue;
        }
        q->ev[i].message = q->msg[i];
        p->cfg.pub.on_event(p->cfg.pub.event_userdata, &q->ev[i]);
    }
    q->n = 0;
}
