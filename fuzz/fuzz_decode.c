/*
 * libFuzzer harness for the frame decoder: decode, classify, map the reply or
 * error, then re-encode what was decoded and decode it again. Any invariant
 * broken aborts; leaks are reported by ASan/LSan.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc \
 *         fuzz/fuzz_decode.c src/codec.c src/json_peek.c src/alloc.c src/error.c src/utf8.c -ljansson
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "utf8.h"

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond))                                                                           \
            abort();                                                                           \
    } while (0)

/* A C string held in a fixed array: terminated within it, strict UTF-8 and
 * free of control characters (everything from the server is sanitized, and
 * truncation must keep it so). */
static void check_text(const char *s, size_t cap)
{
    CHECK(memchr(s, '\0', cap) != NULL);
    CHECK(surpool__utf8_valid_str(s));
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        CHECK(*p >= 0x20 && *p != 0x7F);
}

/* The text helpers on raw bytes: the checker agrees with a plain decode, and
 * the sanitizer always yields valid, control-free text within bounds. */
static void check_utf8_helpers(const uint8_t *data, size_t size)
{
    int valid = 1;
    for (size_t i = 0; i < size && valid;) {
        size_t n = surpool__utf8_seq(data + i, size - i);
        if (n == 0) {
            valid = 0;
            break;
        }
        uint32_t cp = n == 1 ? data[i] : (uint32_t)(data[i] & (0x7F >> n));
        for (size_t k = 1; k < n; k++) {
            CHECK((data[i + k] & 0xC0) == 0x80);
            cp = (cp << 6) | (data[i + k] & 0x3F);
        }
        static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        CHECK(cp >= min_cp[n] && cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF));
        i += n;
    }
    CHECK(surpool__utf8_valid((const char *)data, size) == valid);
    char small[17], big[512];
    surpool__text_sanitize(small, sizeof(small), (const char *)data, size);
    check_text(small, sizeof(small));
    surpool__text_sanitize(big, sizeof(big), (const char *)data, size);
    check_text(big, sizeof(big));
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
    if (rc != SURPOOL_OK) {
        /* [root] is one level deeper than root, which may sit at the decoder's
         * limit: refused before encoding. Nothing else may fail. */
        CHECK(rc == SURPOOL_ERR_INVALID_ARG && strstr(err.message, "nested deeper") != NULL);
        json_decref(params);
        return;
    }
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
    check_utf8_helpers(data, size);

    /* Routing never reads past the frame, and on a frame the full decode
     * accepts it agrees on kind and id. It stops at the id, so it accepts
     * everything the raw path's full walk accepts, and routes it the same. */
    surpool__frame_kind pkind = 0;
    int64_t pid = 0;
    surpool_error perr;
    surpool_err prc = surpool__codec_route((const char *)data, size, &pkind, &pid, &perr);
    CHECK(prc == SURPOOL_OK || prc == SURPOOL_ERR_PROTOCOL);
    if (prc != SURPOOL_OK)
        check_err(&perr, prc);
    surpool__peek_info walk;
    if (surpool__codec_peek_info((const char *)data, size, &walk, NULL) == SURPOOL_OK)
        CHECK(prc == SURPOOL_OK && walk.kind == pkind && walk.id == pid);

    surpool__frame f;
    surpool_error err;
    surpool_err rc = surpool__codec_decode_frame((const char *)data, size, &f, &err);
    if (rc == SURPOOL_OK)
        CHECK(prc == SURPOOL_OK && pkind == f.kind && pid == f.id);
    if (rc != SURPOOL_OK) {
        CHECK(rc == SURPOOL_ERR_PROTOCOL || rc == SURPOOL_ERR_NOMEM);
        CHECK(f.root == NULL);
        check_err(&err, rc);
        CHECK(surpool__codec_decode_frame((const char *)data, size, &f, NULL) == rc);
        return 0;
    }
    CHECK(json_is_object(f.root));

    /* The raw path's spans: on a frame the full decode accepts, the peek
     * finds "result" and "error" where they are, and the result's bytes
     * decode alone to the same value. */
    surpool__peek_info info;
    CHECK(surpool__codec_peek_info((const char *)data, size, &info, &perr) == SURPOOL_OK);
    CHECK(info.kind == f.kind && info.id == f.id && !info.dup_key);
    const json_t *fres = json_object_get(f.root, "result");
    const json_t *ferr = json_object_get(f.root, "error");
    CHECK(info.has_result == (fres != NULL));
    CHECK((info.error_len != 0) == (ferr != NULL));
    CHECK(info.has_error == (ferr != NULL && !json_is_null(ferr)));
    if (fres != NULL) {
        CHECK(info.result_len > 0 && info.result_off + info.result_len <= size);
        json_t *alone =
            json_loadb((const char *)data + info.result_off, info.result_len,
                       JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, NULL);
        /* NULL only when jansson ran out of memory. */
        if (alone != NULL)
            CHECK(json_equal(alone, fres));
        json_decref(alone);
    }

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
