/* A minimal application linking surpool: used to check the installed CMake
 * package, pkg-config file and add_subdirectory() vendoring. */
#include <stdio.h>
#include <string.h>

#include <surpool.h>

int main(void)
{
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://127.0.0.1:1/rpc";
    surpool_pool *pool = NULL;
    surpool_error err;
    /* Nothing listens on port 1: creation succeeds (lazy), acquire fails fast. */
    if (surpool_pool_create(&cfg, &pool, &err) != SURPOOL_OK) {
        printf("create: %s\n", err.message);
        return 1;
    }
    surpool_conn *c = NULL;
    surpool_err rc = surpool_pool_acquire(pool, 200, &c, &err);
    printf("surpool %s: acquire -> %s\n", surpool_version(), surpool_strerror(rc));
    surpool_pool_destroy(pool);
    return rc == SURPOOL_OK ? 1 : 0;
}
