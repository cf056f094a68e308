/*
 * The lease table: handles that can tell a stale lease from the current one.
 *
 * Why the generation is in the handle's value. A lease handle outlives its
 * lease (a caller may keep it and use it again: a double release, a call after
 * release). If the handle were the connection's address, or the address of a
 * lease object, a stale handle and the next borrower's would be the same value
 * once the pool lends that connection (or recycles that object) again, and no
 * check could tell them apart: the stale release would give back someone
 * else's lease. So the handle is a value, slot index + generation, and each
 * slot holds its current generation; they match only for the open lease.
 *
 * The rules:
 *
 *  1. The table is process-wide, in chunks that are never moved or freed, so
 *     any handle value can be looked up without a lock and without touching
 *     freed memory; a value that names no slot is refused without a look.
 *  2. A slot belongs to one connection for as long as the connection's memory
 *     lives (surpool__conn_open() to its free), so lending is no allocation:
 *     acquire stores (gen, LENT) into the connection's slot, one store.
 *  3. Each slot holds (generation, state) in one atomic word. Only the holder of
 *     the current lease moves it, with compare-and-swap on the exact word it
 *     expects, so a stale handle (another generation) can never change it:
 *       lend:    (g, FREE)    -> (g, LENT)        the owner of the connection
 *       pin:     (g, LENT)    -> (g, IN_CALL)     every entry point but release
 *       unpin:   (g, IN_CALL) -> (g, LENT)
 *       release: (g, LENT)    -> (g+1, FREE)      exactly one release wins
 *       retire:  (g, FREE)    -> (g+1, FREE)      before the connection is freed
 *       reclaim: (g, any)     -> (g+1, FREE)      the on_connect hook's lease, when
 *                                                 the hook returns
 *  3a. The on_connect hook's lease is lent with a HOOK flag that pin and unpin
 *     keep and release refuses: it ends only by reclaim, when the hook
 *     returns. A release of it (which the header forbids) would otherwise
 *     hand the connection, still being set up, to the release path, and one
 *     racing the hook's return (a thread the hook started) could give back
 *     the lease of the connection's next borrower.
 *  4. A release that finds (g, IN_CALL) means the lease is used from two threads
 *     at once, which the header forbids: it is refused with a log line and the
 *     lease stays open (release it again once the call returned). Waiting for
 *     the call instead could block for a whole request timeout, and taking the
 *     connection from under a running call would corrupt it.
 *  5. Generations are 32 bits in the slot. On 64-bit platforms the handle
 *     carries all 32; on 32-bit ones it carries 16 bits of index and 16 of
 *     generation, so a stale handle is mistaken for the current lease only if
 *     the very same slot was leased exactly 2^16 times (2^32 on 64-bit) since.
 *  6. Slot assignment, retirement and the look-up of a stale handle's pool (for
 *     its log line) take one process-wide mutex; lend, pin, unpin and release
 *     never do.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "lease.h"
#include "pool.h"

#if UINTPTR_MAX > 0xFFFFFFFFu
#define LEASE_INDEX_BITS 32
#define LEASE_GEN_MASK UINT64_C(0xFFFFFFFF)
#else
#define LEASE_INDEX_BITS 16
#define LEASE_GEN_MASK UINT64_C(0xFFFF)
#endif
#define LEASE_INDEX_MASK ((UINT64_C(1) << LEASE_INDEX_BITS) - 1)

#define CHUNK_SLOTS 256
#define MAX_CHUNKS 4096 /* 1M slots: connections alive at once, process-wide */
#if LEASE_INDEX_BITS < 32
#undef MAX_CHUNKS
#define MAX_CHUNKS 255 /* (2^16 - 1) / 256: index + 1 must fit 16 bits */
#endif

enum { SLOT_FREE = 0, SLOT_LENT = 1, SLOT_IN_CALL = 2 };
/* With LENT or IN_CALL: the lease is the on_connect hook's, which ends when the
 * hook returns (reclaim), never by a release (rule 3a). */
#define SLOT_HOOK 4u

typedef struct lease_slot {
    _Atomic uint64_t word; /* gen << 32 | SLOT_HOOK? | state (rules 3, 3a) */
    surpool_conn *conn;    /* set and cleared under g_mu; read by a pinned lease */
    uint32_t base_gen;     /* g_mu: the generation when `conn` got the slot */
    uint32_t next_free;    /* g_mu: index + 1 of the next free slot, 0 = none */
} lease_slot;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static lease_slot *_Atomic g_chunks[MAX_CHUNKS]; /* published once, never freed */
static uint32_t g_nslots;                        /* g_mu: slots made so far */
static uint32_t g_free;                          /* g_mu: index + 1 of a free slot */

#define WORD(gen, state) (((uint64_t)(uint32_t)(gen) << 32) | (uint64_t)(state))
#define WORD_GEN(w) ((uint32_t)((w) >> 32))
#define WORD_STATE(w) ((int)((w)&3u))
#define WORD_FLAGS(w) ((w)&SLOT_HOOK)

static lease_slot *slot_at(uint32_t index)
{
    if (index / CHUNK_SLOTS >= MAX_CHUNKS)
        return NULL;
    lease_slot *chunk =
        atomic_load_explicit(&g_chunks[index / CHUNK_SLOTS], memory_order_acquire);
    return chunk != NULL ? &chunk[index % CHUNK_SLOTS] : NULL;
}

static surpool_conn *make_handle(uint32_t index, uint32_t gen)
{
    uint64_t v = (((uint64_t)gen & LEASE_GEN_MASK) << LEASE_INDEX_BITS) | ((uint64_t)index + 1);
    return (surpool_conn *)(uintptr_t)v;
}

/* The slot a handle names and the generation it carries; NULL for a value
 * that names no slot (NULL, garbage, a pointer to anything). */
static lease_slot *handle_slot(const surpool_conn *h, uint32_t *gen)
{
    uint64_t v = (uint64_t)(uintptr_t)h;
    uint64_t index1 = v & LEASE_INDEX_MASK;
    if (index1 == 0)
        return NULL;
    *gen = (uint32_t)((v >> LEASE_INDEX_BITS) & LEASE_GEN_MASK);
    return slot_at((uint32_t)(index1 - 1));
}

static int gen_matches(uint64_t word, uint32_t gen)
{
    return ((uint64_t)WORD_GEN(word) & LEASE_GEN_MASK) == gen;
}

int surpool__lease_slot_assign(surpool_conn *c)
{
    pthread_mutex_lock(&g_mu);
    uint32_t index;
    if (g_free != 0) {
        index = g_free - 1;
        g_free = slot_at(index)->next_free;
    } else {
        index = g_nslots;
        if (index / CHUNK_SLOTS >= MAX_CHUNKS) {
            pthread_mutex_unlock(&g_mu);
            return -1;
        }
        if (index % CHUNK_SLOTS == 0) {
            /* Plain calloc, not the user's allocator: the table outlives every
             * pool (and an allocator the application may later retire). */
            lease_slot *chunk = calloc(CHUNK_SLOTS, sizeof(*chunk));
            if (chunk == NULL) {
                pthread_mutex_unlock(&g_mu);
                return -1;
            }
            for (int i = 0; i < CHUNK_SLOTS; i++)
                atomic_init(&chunk[i].word, WORD(1, SLOT_FREE));
            atomic_store_explicit(&g_chunks[index / CHUNK_SLOTS], chunk, memory_order_release);
        }
        g_nslots++;
    }
    lease_slot *s = slot_at(index);
    s->conn = c;
    s->base_gen = WORD_GEN(atomic_load(&s->word));
    s->next_free = 0;
    c->lease_slot = index + 1;
    pthread_mutex_unlock(&g_mu);
    return 0;
}

void surpool__lease_slot_retire(surpool_conn *c)
{
    if (c == NULL || c->lease_slot == 0)
        return;
    pthread_mutex_lock(&g_mu);
    lease_slot *s = slot_at(c->lease_slot - 1);
    uint64_t w = atomic_load(&s->word);
    SURPOOL__CHECK(WORD_STATE(w) == SLOT_FREE);
    atomic_store(&s->word, WORD(WORD_GEN(w) + 1, SLOT_FREE));
    s->conn = NULL;
    s->next_free = g_free;
    g_free = c->lease_slot;
    c->lease_slot = 0;
    pthread_mutex_unlock(&g_mu);
}

static surpool_conn *lend(surpool_conn *c, uint64_t flags)
{
    uint32_t index = c->lease_slot - 1;
    lease_slot *s = slot_at(index);
    uint64_t w = atomic_load_explicit(&s->word, memory_order_relaxed);
    SURPOOL__CHECK(WORD_STATE(w) == SLOT_FREE);
    atomic_store_explicit(&s->word, WORD(WORD_GEN(w), SLOT_LENT) | flags, memory_order_release);
    return make_handle(index, WORD_GEN(w));
}

surpool_conn *surpool__lease_lend(surpool_conn *c)
{
    return lend(c, 0);
}

surpool_conn *surpool__lease_lend_hook(surpool_conn *c)
{
    return lend(c, SLOT_HOOK);
}

void surpool__lease_reclaim(surpool_conn *c)
{
    /* Whatever the hook left (LENT, or IN_CALL if a thread it started is in a
     * call; never FREE: release refuses a hook's lease, rule 3a), the next
     * generation starts here: a handle the hook kept, even one still pinned by
     * a thread it started, never matches a later lease. (That thread's call
     * itself runs on: the header makes the handle valid during the hook only.) */
    lease_slot *s = slot_at(c->lease_slot - 1);
    uint64_t w = atomic_load(&s->word);
    if (WORD_STATE(w) != SLOT_FREE)
        atomic_store(&s->word, WORD(WORD_GEN(w) + 1, SLOT_FREE));
}

/* Release and pin: one compare-and-swap from (g, LENT) on the word of the
 * lease `h` names (rule 3); release also refuses the hook's lease (3a). */
static surpool__lease_claim claim(surpool_conn *h, int release, surpool_conn **c)
{
    uint32_t gen = 0;
    lease_slot *s = handle_slot(h, &gen);
    if (s == NULL)
        return SURPOOL__LEASE_STALE;
    uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
    for (;;) {
        if (!gen_matches(w, gen) || WORD_STATE(w) == SLOT_FREE)
            return SURPOOL__LEASE_STALE;
        if (WORD_STATE(w) == SLOT_IN_CALL)
            return SURPOOL__LEASE_BUSY;
        if (release && WORD_FLAGS(w) != 0)
            return SURPOOL__LEASE_HOOK;
        uint64_t next = release ? WORD(WORD_GEN(w) + 1, SLOT_FREE)
                                : WORD(WORD_GEN(w), SLOT_IN_CALL) | WORD_FLAGS(w);
        if (atomic_compare_exchange_weak_explicit(&s->word, &w, next, memory_order_acq_rel,
                                                  memory_order_acquire))
            break;
    }
    *c = s->conn;
    return SURPOOL__LEASE_OK;
}

surpool__lease_claim surpool__lease_end(surpool_conn *h, surpool_conn **c)
{
    return claim(h, 1, c);
}

surpool__lease_claim surpool__lease_pin(surpool_conn *h, surpool_conn **c)
{
    return claim(h, 0, c);
}

void surpool__lease_unpin(surpool_conn *h)
{
    uint32_t gen = 0;
    lease_slot *s = handle_slot(h, &gen);
    if (s == NULL) /* never after a successful pin */
        return;
    /* Pinned: nobody else moves the word meanwhile (rule 3), except a reclaim
     * of the on_connect hook's lease (surpool__lease_reclaim) if the hook left
     * a thread calling on its handle: then the word has moved on and stays. */
    uint64_t w = atomic_load_explicit(&s->word, memory_order_relaxed);
    if (gen_matches(w, gen) && WORD_STATE(w) == SLOT_IN_CALL)
        atomic_compare_exchange_strong_explicit(&s->word, &w,
                                                WORD(WORD_GEN(w), SLOT_LENT) | WORD_FLAGS(w),
                                                memory_order_release, memory_order_relaxed);
}

surpool_conn *surpool__lease_conn_of(const surpool_conn *h)
{
    uint32_t gen = 0;
    lease_slot *s = handle_slot(h, &gen);
    if (s == NULL)
        return NULL;
    uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
    return gen_matches(w, gen) && WORD_STATE(w) != SLOT_FREE ? s->conn : NULL;
}

const char *surpool__lease_refusal(surpool__lease_claim why)
{
    switch (why) {
    case SURPOOL__LEASE_BUSY:
        return "the lease is in a call on another thread (one thread at a time per lease)";
    case SURPOOL__LEASE_HOOK:
        return "the on_connect hook's own lease ends when the hook returns, not by a release";
    case SURPOOL__LEASE_OK:
    case SURPOOL__LEASE_STALE: break;
    }
    return "connection handle already released (stale or invalid handle)";
}

surpool_err surpool__lease_refused(surpool__lease_claim why, const char *fn, surpool_error *err)
{
    return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "%s: %s", fn,
                           surpool__lease_refusal(why));
}

void surpool__lease_log_refused(surpool_conn *h, surpool__lease_claim why, const char *fn)
{
    uint32_t gen = 0;
    lease_slot *s = handle_slot(h, &gen);
    if (s == NULL)
        return;
    /* The connection (and so its pool) stays alive while it holds the slot:
     * it is freed only after surpool__lease_slot_retire(), under g_mu. Was the
     * handle issued for this connection (not an earlier one of the slot)? */
    surpool__logger lg = {0};
    uint64_t serial = 0;
    pthread_mutex_lock(&g_mu);
    uint32_t now_gen = WORD_GEN(atomic_load(&s->word));
    uint32_t span = (uint32_t)((now_gen - s->base_gen) & LEASE_GEN_MASK);
    if (s->conn != NULL && ((gen - s->base_gen) & LEASE_GEN_MASK) <= span) {
        lg = s->conn->pool->logger;
        serial = atomic_load(&s->conn->serial);
    }
    pthread_mutex_unlock(&g_mu);
    if (lg.fn == NULL)
        return;
    if (why != SURPOOL__LEASE_STALE)
        surpool__log(&lg, SURPOOL_LOG_ERROR, "%s: connection %llu: %s: refused", fn,
                     (unsigned long long)serial, surpool__lease_refusal(why));
    else
        surpool__log(&lg, SURPOOL_LOG_ERROR,
                     "%s: connection %llu: this lease was already given back (released "
                     "twice? used after release?): ignored",
                     fn, (unsigned long long)serial);
}
