/*
 * Raw results (raw.c): a reply's "result" handed over as the bytes the server
 * sent, inside the frame the transport received, without building a tree.
 * Not installed.
 */
#ifndef SURPOOL_RAW_H
#define SURPOOL_RAW_H

#include "internal.h"
#include "transport.h"

/* The raw half of a completed request, in place of surpool__wire_decode_reply
 * and on the thread that wants the result (never in done()). Call it before
 * surpool__rpc_outcome(), which then reads req->reply as usual:
 *  - a reply with a "result" (and no non-null "error"): *out takes the frame
 *    over (data points at the value inside it, a NUL written after it) and
 *    req->reply becomes a placeholder {"result":null};
 *  - an error reply: only the "error" value is decoded, into req->reply as
 *    {"error":...}, so the error is mapped as any other call's; the frame is
 *    freed and *out stays NULL;
 *  - a frame the peek refuses, routed to another id, repeating "result" or
 *    "error", or whose error does not decode: req->status becomes PROTOCOL (or
 *    NOMEM) with the reason in req->message;
 *  - a transport without bytes (req->reply set, tests' fake one): the result
 *    is encoded in `format` into a buffer *out owns.
 * Does nothing unless req->status is SURPOOL_OK; always leaves req->frame
 * NULL. */
void surpool__raw_take_reply(surpool__treq *req, surpool_wire_format format, surpool_raw **out);

#endif
