/*
 * libFuzzer harness for the URL parser: parse, check the documented
 * invariants of a success (or the zeroed struct of a failure), free.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc \
 *         fuzz/fuzz_url.c src/url.c src/alloc.c src/error.c src/utf8.c -ljansson
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "url.h"
#include "utf8.h"

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond))                                                                           \
            abort();                                                                           \
    } while (0)

static int all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        if (b[i] != 0)
            return 0;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';

    surpool__url u;
    surpool_error err;
    surpool_err rc = surpool__url_parse(s, &u, &err);
    if (rc != SURPOOL_OK) {
        CHECK(rc == SURPOOL_ERR_INVALID_ARG);
        CHECK(all_zero(&u, sizeof(u)));
        CHECK(err.code == rc && memchr(err.message, '\0', sizeof(err.message)) != NULL);
        CHECK(err.message[0] != '\0');
    } else {
        CHECK(u.host != NULL && u.host[0] != '\0');
        CHECK(u.port >= 1 && u.port <= 65535);
        CHECK(u.path != NULL && u.path[0] == '/');
        CHECK(u.tls == 0 || u.tls == 1);
        CHECK(u.pass == NULL || u.user != NULL);
        CHECK(u.user == NULL || u.user[0] != '\0');
        CHECK(u.ns == NULL || u.ns[0] != '\0');
        CHECK(u.db == NULL || u.db[0] != '\0');
        CHECK(u.access == NULL || u.access[0] != '\0');
        CHECK(strlen(u.path) <= SURPOOL__URL_PATH_MAX);
        /* Decoded values are strict UTF-8 (they become JSON strings). */
        CHECK(surpool__utf8_valid_str(u.user) && surpool__utf8_valid_str(u.pass));
        CHECK(surpool__utf8_valid_str(u.ns) && surpool__utf8_valid_str(u.db));
        CHECK(surpool__utf8_valid_str(u.access));
        /* A host ending in a number is a strict dotted quad: never a form a
         * resolver would read the inet_aton way (hex, octal, short). */
        size_t hl = strlen(u.host);
        char last = u.host[hl - 1] == '.' && hl > 1 ? u.host[hl - 2] : u.host[hl - 1];
        if (last >= '0' && last <= '9' && strchr(u.host, ':') == NULL) {
            int dots = 0;
            for (const char *p = u.host; *p; p++) {
                CHECK((*p >= '0' && *p <= '9') || *p == '.' || (*p >= 'a' && *p <= 'z') ||
                      (*p >= 'A' && *p <= 'Z') || *p == '-' || *p == '_');
                dots += *p == '.';
            }
            const char *lastlabel = strrchr(u.host, '.');
            lastlabel = lastlabel != NULL ? lastlabel + 1 : u.host;
            int numeric = *lastlabel != '\0';
            for (const char *p = lastlabel; *p; p++)
                numeric &= *p >= '0' && *p <= '9';
            if (numeric)
                CHECK(dots == 3);
        }
        /* No space or control character survives anywhere but in decoded
         * values, and the host is never bracketed. */
        for (const char *p = u.host; *p; p++)
            CHECK(*p != '[' && *p != ']' && (unsigned char)*p > 0x20);
        for (const char *p = u.path; *p; p++)
            CHECK((unsigned char)*p > 0x20 && *p != 0x7F && *p != '#' && *p != '?');
        surpool__url_free(&u);
        CHECK(all_zero(&u, sizeof(u)));
    }
    /* Deterministic, with or without err. */
    CHECK(surpool__url_parse(s, &u, NULL) == rc);
    surpool__url_free(&u);

    /* The host-list form: a single-host URL parses the same; a list gives
     * 1..SURPOOL_MAX_ENDPOINTS distinct hosts sharing scheme, path and user. */
    surpool__url *list = NULL;
    int n = -1;
    surpool_err lrc = surpool__url_parse_list(s, &list, &n, &err);
    if (rc == SURPOOL_OK)
        CHECK(lrc == SURPOOL_OK && n == 1);
    if (lrc != SURPOOL_OK) {
        CHECK(list == NULL && n == 0 && err.message[0] != '\0');
    } else {
        CHECK(n >= 1 && n <= SURPOOL_MAX_ENDPOINTS);
        for (int i = 0; i < n; i++) {
            CHECK(list[i].host != NULL && list[i].host[0] != '\0');
            CHECK(list[i].tls == list[0].tls && strcmp(list[i].path, list[0].path) == 0);
            CHECK((list[i].user == NULL) == (list[0].user == NULL));
            for (int j = 0; j < i; j++)
                CHECK(!surpool__url_same_endpoint(&list[i], &list[j]));
        }
        surpool__url_free_list(list, n);
    }
    free(s);
    return 0;
}
