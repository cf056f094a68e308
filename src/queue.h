/*
 * An intrusive doubly linked list, after libuv's queue.h: a list head and
 * every element embed a surpool__queue; the list is circular through the head,
 * so insertion and removal never branch on "empty" or "last". Nothing here
 * allocates or locks: the owner's mutex guards the list. Not installed.
 *
 *     struct item { surpool__queue link; int v; };
 *     surpool__queue head;
 *     surpool__queue_init(&head);
 *     surpool__queue_insert_tail(&head, &it->link);
 *     surpool__queue *q;
 *     SURPOOL__QUEUE_FOREACH(q, &head) {
 *         struct item *it = SURPOOL__QUEUE_DATA(q, struct item, link);
 *     }
 *
 * Removing the element being visited inside SURPOOL__QUEUE_FOREACH is not
 * allowed; walk with SURPOOL__QUEUE_FOREACH_SAFE for that.
 */
#ifndef SURPOOL_QUEUE_H
#define SURPOOL_QUEUE_H

#include <stddef.h>

typedef struct surpool__queue {
    struct surpool__queue *next;
    struct surpool__queue *prev;
} surpool__queue;

/* The structure of type `type` whose member `field` is at `ptr`. */
#define SURPOOL__QUEUE_DATA(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))

#define SURPOOL__QUEUE_FOREACH(q, h) for ((q) = (h)->next; (q) != (h); (q) = (q)->next)

#define SURPOOL__QUEUE_FOREACH_SAFE(q, n, h)                                                   \
    for ((q) = (h)->next, (n) = (q)->next; (q) != (h); (q) = (n), (n) = (q)->next)

static inline void surpool__queue_init(surpool__queue *q)
{
    q->next = q;
    q->prev = q;
}

static inline int surpool__queue_empty(const surpool__queue *h)
{
    return h->next == h;
}

/* The first / last element, or NULL when the list is empty. */
static inline surpool__queue *surpool__queue_head(const surpool__queue *h)
{
    return h->next == h ? NULL : h->next;
}

static inline surpool__queue *surpool__queue_tail(const surpool__queue *h)
{
    return h->prev == h ? NULL : h->prev;
}

static inline void surpool__queue_insert_head(surpool__queue *h, surpool__queue *q)
{
    q->next = h->next;
    q->prev = h;
    h->next->prev = q;
    h->next = q;
}

static inline void surpool__queue_insert_tail(surpool__queue *h, surpool__queue *q)
{
    q->next = h;
    q->prev = h->prev;
    h->prev->next = q;
    h->prev = q;
}

/* Unlink q from whatever list holds it; q is left pointing at itself, so a
 * second remove, or surpool__queue_linked(q), is safe. */
static inline void surpool__queue_remove(surpool__queue *q)
{
    q->prev->next = q->next;
    q->next->prev = q->prev;
    q->next = q;
    q->prev = q;
}

/* Whether q is on a list (after surpool__queue_init or _remove it is not). */
static inline int surpool__queue_linked(const surpool__queue *q)
{
    return q->next != q;
}

/* Move every element of `from` to the tail of `to`; `from` ends empty. */
static inline void surpool__queue_move_tail(surpool__queue *to, surpool__queue *from)
{
    if (surpool__queue_empty(from))
        return;
    from->next->prev = to->prev;
    to->prev->next = from->next;
    from->prev->next = to;
    to->prev = from->prev;
    surpool__queue_init(from);
}

#endif
