/*
 * Allocation hooks. Every allocation surpool makes goes through here so that
 * an application (and our allocation-failure tests) can substitute its own
 * allocator with surpool_set_allocator().
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static surpool_malloc_fn g_malloc = malloc;
static surpool_realloc_fn g_realloc = realloc;
static surpool_free_fn g_free = free;

surpool_err surpool_set_allocator(surpool_malloc_fn m, surpool_realloc_fn r, surpool_free_fn f)
{
    if (m == NULL && r == NULL && f == NULL) {
        g_malloc = malloc;
        g_realloc = realloc;
        g_free = free;
        return SURPOOL_OK;
    }
    if (m == NULL || r == NULL || f == NULL)
        return SURPOOL_ERR_INVALID_ARG;
    g_malloc = m;
    g_realloc = r;
    g_free = f;
    return SURPOOL_OK;
}

void *surpool__malloc(size_t n)
{
    return g_malloc(n ? n : 1);
}

void *surpool__calloc(size_t count, size_t n)
{
    if (n != 0 && count > SIZE_MAX / n)
        return NULL;
    void *p = surpool__malloc(count * n);
    if (p != NULL)
        memset(p, 0, count * n);
    return p;
}

void *surpool__realloc(void *p, size_t n)
{
    return g_realloc(p, n ? n : 1);
}

void surpool__free(void *p)
{
    if (p != NULL)
        g_free(p);
}

char *surpool__strdup(const char *s)
{
    if (s == NULL)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = surpool__malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

void surpool__wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

void surpool__free_secret(char *s)
{
    if (s == NULL)
        return;
    surpool__wipe(s, strlen(s));
    surpool__free(s);
}
