/*
 * Lease handles (lease.c): what surpool_pool_acquire() hands out is not the
 * connection but a handle naming one lease of it. A handle is an opaque value,
 * slot index + generation, cast to `surpool_conn *`; it is never dereferenced.
 * Every public surpool_conn_* entry point resolves it here first, so a handle
 * whose lease has ended (released, discarded, its connection closed, its pool
 * destroyed) is detected exactly and never reaches the connection's next
 * borrower. Internal code (pool, lane, maintainer, rpc) keeps passing real
 * connections. Not installed.
 */
#ifndef SURPOOL_LEASE_H
#define SURPOOL_LEASE_H

#include "internal.h"

/* Give `c` a slot in the process-wide lease table for as long as its memory
 * lives (surpool__conn_open). 0, or -1 when out of slots or memory. Any
 * thread, no locks held. */
int surpool__lease_slot_assign(surpool_conn *c);
/* Take the slot back before `c` is freed: every handle ever issued for it
 * becomes stale. `c` must not be lent. Any thread; NULL or no slot: no-op. */
void surpool__lease_slot_retire(surpool_conn *c);

/* Start a lease of `c` (its slot must be free: the caller owns `c`) and
 * return its handle. One atomic load and one store. */
surpool_conn *surpool__lease_lend(surpool_conn *c);
/* surpool__lease_lend() for the on_connect hook: a lease that calls pin as
 * any other, but that a release refuses (SURPOOL__LEASE_HOOK). */
surpool_conn *surpool__lease_lend_hook(surpool_conn *c);
/* End the hook's lease (surpool__lease_lend_hook) when the hook returns,
 * whatever state the hook left it in. */
void surpool__lease_reclaim(surpool_conn *c);

typedef enum surpool__lease_claim {
    SURPOOL__LEASE_OK = 0,    /* the handle named the current lease */
    SURPOOL__LEASE_STALE = 1, /* released, discarded, closed, or never a handle */
    SURPOOL__LEASE_BUSY = 2,  /* in a call on another thread */
    SURPOOL__LEASE_HOOK = 3,  /* release: the on_connect hook's own lease */
} surpool__lease_claim;

/* release: end the lease named by `h` (generation + 1, slot free) and give
 * the connection in *c. One compare-and-swap. */
surpool__lease_claim surpool__lease_end(surpool_conn *h, surpool_conn **c);
/* Every other entry point: pin the lease for the duration of the call (a
 * concurrent release of the same handle is refused meanwhile); *c is the
 * connection. Unpin with surpool__lease_unpin(h) when the call is over. */
surpool__lease_claim surpool__lease_pin(surpool_conn *h, surpool_conn **c);
void surpool__lease_unpin(surpool_conn *h);
/* The connection of the open lease `h` names, or NULL (stale, invalid). No
 * pin: for checks in tests that hold the lease themselves. */
surpool_conn *surpool__lease_conn_of(const surpool_conn *h);
/* Why a claim was refused, as static text (OK and STALE: a stale handle). */
const char *surpool__lease_refusal(surpool__lease_claim why);
/* The error a refused claim gives a call: SURPOOL_ERR_INVALID_ARG, message
 * naming `fn`. */
surpool_err surpool__lease_refused(surpool__lease_claim why, const char *fn,
                                   surpool_error *err);
/* A refused release or discard: log it at ERROR through the log_fn of the
 * pool the handle came from, if that connection still exists (else there is
 * nobody to tell: its pool is gone). */
void surpool__lease_log_refused(surpool_conn *h, surpool__lease_claim why, const char *fn);

#endif
