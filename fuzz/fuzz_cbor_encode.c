/*
 * libFuzzer harness for the CBOR request encoder (src/cbor_codec.c) fed
 * random json_t trees: the input is parsed as JSON text (any value, NUL bytes
 * allowed), so mutations produce arbitrary trees, typed values with good and
 * bad fields included. Checks: surpool_value_check() agrees with the encoder;
 * a request that encodes decodes back to a reply-shaped map with the same
 * params (after one normalising round); every string survives byte for byte.
 * Seed corpus: fuzz/corpus/cbor_encode.
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

/* Every plain string of a (plain, untyped) tree appears unchanged in back. */
static void check_strings(const json_t *sent, const json_t *back)
{
    if (json_is_string(sent)) {
        CHECK(json_is_string(back));
        CHECK(json_string_length(sent) == json_string_length(back));
        CHECK(memcmp(json_string_value(sent), json_string_value(back),
                     json_string_length(sent)) == 0);
    } else if (json_is_array(sent)) {
        CHECK(json_array_size(sent) == json_array_size(back));
        for (size_t i = 0; i < json_array_size(sent); i++)
            check_strings(json_array_get(sent, i), json_array_get(back, i));
    } else if (json_is_object(sent) && json_object_get(sent, "$surreal") == NULL) {
        const char *k;
        json_t *m;
        json_object_foreach((json_t *)sent, k, m) check_strings(m, json_object_get(back, k));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t je;
    json_t *v = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (v == NULL)
        return 0;
    surpool_error err;
    json_t *params = json_array();
    CHECK(params != NULL && json_array_append(params, v) == 0);
    char *buf = NULL;
    size_t len = 0;
    surpool_err rc =
        surpool__cbor_encode_request(7, "query", params, NULL, NULL, 16, &buf, &len, &err);
    surpool_err check = surpool_value_check(v, &err);
    CHECK(rc == SURPOOL_OK || rc == SURPOOL_ERR_INVALID_ARG || rc == SURPOOL_ERR_NOMEM);
    CHECK((rc == SURPOOL_OK) == (check == SURPOOL_OK) || rc == SURPOOL_ERR_NOMEM ||
          check == SURPOOL_ERR_NOMEM);
    if (rc == SURPOOL_OK) {
        CHECK(buf[16 + len] == '\0');
        json_t *root = NULL;
        CHECK(surpool__cbor_decode_value((unsigned char *)buf + 16, len, &root, &err) ==
              SURPOOL_OK);
        CHECK(json_integer_value(json_object_get(root, "id")) == 7);
        const json_t *back = json_array_get(json_object_get(root, "params"), 0);
        CHECK(back != NULL);
        check_strings(v, back);
        /* The decoded value encodes again, and is then stable. */
        char *b2 = NULL, *b3 = NULL;
        size_t n2, n3;
        CHECK(surpool__cbor_encode_value(back, 0, &b2, &n2, &err) == SURPOOL_OK);
        json_t *back2 = NULL;
        CHECK(surpool__cbor_decode_value((unsigned char *)b2, n2, &back2, &err) == SURPOOL_OK);
        CHECK(surpool__cbor_encode_value(back2, 0, &b3, &n3, &err) == SURPOOL_OK);
        json_t *back3 = NULL;
        CHECK(surpool__cbor_decode_value((unsigned char *)b3, n3, &back3, &err) == SURPOOL_OK);
        CHECK(json_equal(back2, back3));
        surpool__free(b2);
        surpool__free(b3);
        json_decref(back2);
        json_decref(back3);
        json_decref(root);
        surpool__free(buf);
    } else {
        CHECK(buf == NULL);
        CHECK(err.message[0] != '\0');
    }
    json_decref(params);
    json_decref(v);
    return 0;
}
