/*
 * libFuzzer harness for the frame decoder: decode, classify, map the reply or
 * error, then re-encode what was decoded and decode it again. Any invariant
 * broken aborts; leaks are reported by ASan/LSan.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc \
 *         fuzz/fuzz_decode.c src/codec.c src/alloc.c src/error.c -ljansson
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond))                                                                           \
            abort();                                                                           \
    } while (0)

/* A C string held in a fixed array: terminated within it, and valid UTF-8
 * (everything jansson parses is, and truncation must keep it so). */
static void check_text(const char *s, size_t cap)
{
    const unsigned char *p = (const unsigned char *)s;
    CHECK(memchr(s, '\0', cap) != NULL);
    while (*p) {
        size_t n = *p < 0x80             ? 1
                   : (*p & 0xE0) == 0xC0 ? 2
                   : (*p & 0xF0) == 0xE0 ? 3
                   : (*p & 0xF8) == 0xF0 ? 4
                                         : 0;
        CHECK(n != 0);
        for (size_t i = 1; i < n; i++)
            CHECK((p[i] & 0xC0) == 0x80);
        p += n;
    }
}

static void check_err(const surpool_error *err, surpool_err rc)
{
    CHECK(err->code == rc);
    check_text(err->message, sizeof(err->message));
    check_text(err->kind, sizeof(err->kind));
    CHECK(err->message[0] != '\0');
}

/* Encode {"id":id,"method":"fuzz","params":[root]} and decode it back. */
static void round_trip(int64_t id, json_t *root)
{
    json_t *params = json_array();
    CHECK(params != NULL);
    CHECK(json_array_append(params, root) == 0);
    char *buf = NULL;
    size_t len = 0;
    surpool_error err;
    surpool_err rc = surpool__codec_encode_request(id, "fuzz", params, 5, &buf, &len, &err);
    CHECK(rc == SURPOOL_OK);
    CHECK(buf[5 + len] == '\0' && strlen(buf + 5) == len);

    surpool__frame g;
    rc = surpool__codec_decode_frame(buf + 5, len, &g, &err);
    if (rc == SURPOOL_OK) {
        CHECK(g.kind == SURPOOL__FRAME_REPLY && g.id == id);
        CHECK(json_equal(json_object_get(g.root, "params"), params));
        json_decref(g.root);
    } else {
        /* The envelope adds two levels: input at jansson's depth limit no
         * longer fits. Nothing else may fail. */
        CHECK(rc == SURPOOL_ERR_PROTOCOL && strstr(err.message, "depth") != NULL);
    }
    surpool__free(buf);
    json_decref(params);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    surpool__frame f;
    surpool_error err;
    surpool_err rc = surpool__codec_decode_frame((const char *)data, size, &f, &err);
    if (rc != SURPOOL_OK) {
        CHECK(rc == SURPOOL_ERR_PROTOCOL || rc == SURPOOL_ERR_NOMEM);
        CHECK(f.root == NULL);
        check_err(&err, rc);
        CHECK(surpool__codec_decode_frame((const char *)data, size, &f, NULL) == rc);
        return 0;
    }
    CHECK(json_is_object(f.root));

    json_t *result = NULL;
    switch (f.kind) {
    case SURPOOL__FRAME_REPLY:
        rc = surpool__codec_reply_result(f.root, &result, &err);
        CHECK(surpool__codec_reply_result(f.root, NULL, NULL) == rc);
        if (rc == SURPOOL_OK)
            CHECK(result != NULL && result == json_object_get(f.root, "result"));
        else
            CHECK(result == NULL);
        break;
    case SURPOOL__FRAME_ORPHAN_ERROR:
        rc = surpool__codec_map_error(json_object_get(f.root, "error"), &err);
        CHECK(rc == SURPOOL_ERR_SERVER || rc == SURPOOL_ERR_AUTH);
        break;
    case SURPOOL__FRAME_NOTIFICATION:
        CHECK(json_object_get(json_object_get(f.root, "result"), "action") != NULL);
        rc = SURPOOL_OK;
        break;
    default: abort();
    }
    if (rc != SURPOOL_OK)
        check_err(&err, rc);

    /* map_error on anything at all: the root itself, and without err. */
    rc = surpool__codec_map_error(f.root, &err);
    CHECK(rc == SURPOOL_ERR_SERVER || rc == SURPOOL_ERR_AUTH);
    check_err(&err, rc);
    CHECK(surpool__codec_map_error(f.root, NULL) == rc);

    round_trip(f.id, f.root);
    json_decref(f.root);
    return 0;
}
