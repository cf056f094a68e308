/*
 * The "bare" client: surpool's libwebsockets transport used directly, with no
 * pool and no lane — requests encoded with surpool__codec_encode_request(),
 * submitted with surpool__transport_lws.submit(), pipelined on a few sockets.
 * It is the floor the pool and the lane are compared against: what the same
 * transport and codec do with nothing on top.
 */
#ifndef SURPOOL_BENCH_BARE_H
#define SURPOOL_BENCH_BARE_H

#include <jansson.h>
#include <stdint.h>

typedef struct bare bare;

/* Completion: ok = 1 when the server answered with a result. Runs on the
 * transport's service thread; it may call bare_submit() again. */
typedef void (*bare_cb)(void *ud, int ok);

/* Open `nconns` sockets to url; with user != NULL sign in (root) and, with ns,
 * `use` ns/db on each. Returns NULL (and logs why) on failure. */
bare *bare_open(const char *url, int nconns, const char *user, const char *pass, const char *ns,
                const char *db);
int bare_nconns(const bare *b);
/* Queue one request on socket `idx`. 0 on success (cb will run), -1 on error. */
int bare_submit(bare *b, int idx, const char *method, const json_t *params, bare_cb cb,
                void *ud);
void bare_close(bare *b);

#endif
