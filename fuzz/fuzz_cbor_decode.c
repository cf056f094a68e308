/*
 * libFuzzer harness for the CBOR reply decoder (src/cbor_codec.c): decode a
 * frame, route it, map the reply, then re-encode what was decoded and check it
 * reaches a fixpoint. Any invariant broken aborts; leaks are reported by
 * ASan/LSan. Seed corpus: fuzz/corpus/cbor_decode (replies of the real core).
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc \
 *         fuzz/fuzz_cbor_decode.c src/cbor_codec.c src/codec.c src/value.c \
 *         src/value_text.c src/alloc.c src/error.c -ljansson -lcbor
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cbor_codec.h"

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond))                                                                           \
            abort();                                                                           \
    } while (0)

/* encode(v) must succeed; returns decode(encode(v)), which must succeed too. */
static json_t *again(const json_t *v, char **bytes, size_t *len)
{
    surpool_error err;
    CHECK(surpool__cbor_encode_value(v, 0, bytes, len, &err) == SURPOOL_OK);
    json_t *back = NULL;
    CHECK(surpool__cbor_decode_value((unsigned char *)*bytes, *len, &back, &err) == SURPOOL_OK);
    return back;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    surpool_error err;
    memset(&err, 0, sizeof(err));
    surpool__frame_kind pk = SURPOOL__FRAME_REPLY;
    int64_t pid = 0;
    surpool_err prc = surpool__cbor_route(data, size, &pk, &pid, &err);
    CHECK(prc == SURPOOL_OK || prc == SURPOOL_ERR_PROTOCOL);
    /* Routing stops at the id, so it accepts everything the raw path's full
     * walk accepts, and routes it the same. */
    surpool__peek_info walk;
    if (surpool__cbor_peek_info(data, size, &walk, NULL) == SURPOOL_OK)
        CHECK(prc == SURPOOL_OK && walk.kind == pk && walk.id == pid);

    surpool__frame f;
    surpool_err rc = surpool__cbor_decode_frame(data, size, &f, &err);
    CHECK(rc == SURPOOL_OK || rc == SURPOOL_ERR_PROTOCOL || rc == SURPOOL_ERR_NOMEM);
    if (rc != SURPOOL_OK) {
        CHECK(f.root == NULL);
        CHECK(err.code == rc && err.message[0] != '\0');
    } else {
        /* Whatever decodes fully, routing sends the same way. */
        CHECK(prc == SURPOOL_OK);
        CHECK(pk == f.kind ||
              (f.kind == SURPOOL__FRAME_NOTIFICATION && pk == SURPOOL__FRAME_NOTIFICATION));
        /* The raw path's spans: the result item decodes alone to the same
         * value; "error" is found where the decode sees it. */
        surpool__peek_info info;
        CHECK(surpool__cbor_peek_info(data, size, &info, &err) == SURPOOL_OK);
        CHECK(info.kind == pk && info.id == pid && !info.dup_key);
        const json_t *fres = json_object_get(f.root, "result");
        const json_t *ferr = json_object_get(f.root, "error");
        CHECK(info.has_result == (fres != NULL));
        CHECK(info.has_error == (ferr != NULL && !json_is_null(ferr)));
        if (fres != NULL) {
            CHECK(info.result_len > 0 && info.result_off + info.result_len <= size);
            json_t *alone = NULL;
            surpool_err arc = surpool__cbor_decode_value(data + info.result_off,
                                                         info.result_len, &alone, &err);
            CHECK(arc == SURPOOL_OK || arc == SURPOOL_ERR_NOMEM);
            if (arc == SURPOOL_OK)
                CHECK(json_equal(alone, fres));
            json_decref(alone);
        }
        if (f.kind == SURPOOL__FRAME_REPLY) {
            CHECK(pid == f.id);
            json_t *result = NULL;
            surpool_err r = surpool__codec_reply_result(f.root, &result, &err);
            CHECK(r == SURPOOL_OK || r == SURPOOL_ERR_SERVER || r == SURPOOL_ERR_AUTH ||
                  r == SURPOOL_ERR_PROTOCOL);
        }
        json_decref(f.root);
    }

    /* Any item that decodes re-encodes; one round normalises (e.g. datetime
     * text tags become the compact form), after that bytes and values hold. */
    json_t *v = NULL;
    if (surpool__cbor_decode_value(data, size, &v, &err) == SURPOOL_OK) {
        CHECK(surpool_value_check(v, &err) == SURPOOL_OK);
        char *b1, *b2, *b3;
        size_t n1, n2, n3;
        json_t *v2 = again(v, &b1, &n1);
        json_t *v3 = again(v2, &b2, &n2);
        json_t *v4 = again(v3, &b3, &n3);
        CHECK(json_equal(v2, v3) && json_equal(v3, v4));
        CHECK(n2 == n3 && memcmp(b2, b3, n2) == 0);
        json_t *text = NULL, *plain = NULL;
        CHECK(surpool_value_text(v, &text, &err) == SURPOOL_OK);
        CHECK(surpool_value_to_plain(v, &plain, &err) == SURPOOL_OK);
        json_decref(text);
        json_decref(plain);
        surpool__free(b1);
        surpool__free(b2);
        surpool__free(b3);
        json_decref(v2);
        json_decref(v3);
        json_decref(v4);
        json_decref(v);
    }
    return 0;
}
