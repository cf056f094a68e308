/*
 * quickstart: create a pool, lease a connection, run a query, release.
 *
 *   quickstart [URL]   (default ws://root:root@127.0.0.1:8000/rpc?ns=test&db=test)
 *
 * The URL may carry credentials and ns/db; SURPOOL_URL in the environment
 * overrides the default.
 */
#include <stdio.h>
#include <stdlib.h>

#include <surpool.h>

int main(int argc, char **argv)
{
    const char *url = argc > 1 ? argv[1] : getenv("SURPOOL_URL");
    if (url == NULL)
        url = "ws://root:root@127.0.0.1:8000/rpc?ns=test&db=test";

    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = url;
    cfg.max_connections = 4;

    surpool_pool *pool = NULL;
    surpool_error err;
    if (surpool_pool_create(&cfg, &pool, &err) != SURPOOL_OK) {
        fprintf(stderr, "create: %s (%s)\n", err.message, surpool_strerror(err.code));
        return 1;
    }

    surpool_conn *conn = NULL;
    if (surpool_pool_acquire(pool, -1, &conn, &err) != SURPOOL_OK) {
        fprintf(stderr, "acquire: %s\n", err.message);
        surpool_pool_destroy(pool);
        return 1;
    }

    json_t *vars = json_pack("{s:s}", "name", "Tobie");
    json_t *result = NULL;
    surpool_err rc =
        surpool_conn_query(conn, "RETURN 'hello, ' + $name; RETURN 1 + 1", vars, &result, &err);
    json_decref(vars);
    surpool_conn_release(conn);

    int status = 0;
    if (rc == SURPOOL_OK) {
        /* One element per statement, each with its own status. Typed values
         * (record ids, datetimes, ...) print as their text forms. */
        json_t *plain = NULL;
        if (surpool_value_to_plain(result, &plain, &err) == SURPOOL_OK) {
            char *text = json_dumps(plain, JSON_INDENT(2));
            printf("%s\n", text != NULL ? text : "(unprintable)");
            free(text);
            json_decref(plain);
        } else {
            fprintf(stderr, "print: %s\n", err.message);
            status = 1;
        }
        json_decref(result);
    } else {
        fprintf(stderr, "query: %s\n", err.message);
        status = 1;
    }
    surpool_pool_destroy(pool);
    return status;
}
