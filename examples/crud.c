/*
 * crud: the record methods on one lease: create, select, merge, patch, relate,
 * run, delete. Prints each result.
 *
 *   crud [URL]   (default ws://root:root@127.0.0.1:8000/rpc?ns=test&db=test)
 */
#include <stdio.h>
#include <stdlib.h>

#include <surpool.h>

static int show(const char *what, surpool_err rc, json_t *out, const surpool_error *err)
{
    if (rc != SURPOOL_OK) {
        fprintf(stderr, "%s: %s\n", what, err->message);
        return 1;
    }
    /* Results keep SurrealDB's types ({"$surreal": "record", ...}); print
     * their text forms ("person:tobie") instead. */
    json_t *plain = NULL;
    surpool_error perr;
    if (surpool_value_to_plain(out, &plain, &perr) != SURPOOL_OK) {
        fprintf(stderr, "%s: %s\n", what, perr.message);
        json_decref(out);
        return 1;
    }
    char *text = json_dumps(plain, JSON_COMPACT | JSON_ENCODE_ANY);
    printf("%-8s %s\n", what, text != NULL ? text : "(unprintable)");
    free(text);
    json_decref(plain);
    json_decref(out);
    return 0;
}

int main(int argc, char **argv)
{
    const char *url = argc > 1 ? argv[1] : getenv("SURPOOL_URL");
    if (url == NULL)
        url = "ws://root:root@127.0.0.1:8000/rpc?ns=test&db=test";
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = url;
    surpool_pool *pool = NULL;
    surpool_error err;
    if (surpool_pool_create(&cfg, &pool, &err) != SURPOOL_OK) {
        fprintf(stderr, "create: %s\n", err.message);
        return 1;
    }
    surpool_conn *c = NULL;
    if (surpool_pool_acquire(pool, -1, &c, &err) != SURPOOL_OK) {
        fprintf(stderr, "acquire: %s\n", err.message);
        surpool_pool_destroy(pool);
        return 1;
    }

    int bad = 0;
    json_t *out = NULL, *data;
    surpool_err rc;

    data = json_pack("{s:s, s:i}", "name", "Tobie", "age", 30);
    rc = surpool_conn_create(c, "person:tobie", data, &out, &err);
    json_decref(data);
    bad |= show("create", rc, out, &err);

    data = json_pack("{s:s}", "name", "Jaime");
    rc = surpool_conn_create(c, "person:jaime", data, &out, &err);
    json_decref(data);
    bad |= show("create", rc, out, &err);

    rc = surpool_conn_select(c, "person:tobie", &out, &err);
    bad |= show("select", rc, out, &err);

    data = json_pack("{s:s}", "city", "London");
    rc = surpool_conn_merge(c, "person:tobie", data, &out, &err);
    json_decref(data);
    bad |= show("merge", rc, out, &err);

    json_t *ops = json_pack("[{s:s, s:s, s:i}]", "op", "replace", "path", "/age", "value", 31);
    rc = surpool_conn_patch(c, "person:tobie", ops, 0, &out, &err);
    json_decref(ops);
    bad |= show("patch", rc, out, &err);

    rc = surpool_conn_relate(c, "person:tobie", "knows", "person:jaime", NULL, &out, &err);
    bad |= show("relate", rc, out, &err);

    json_t *args = json_pack("[s]", "surpool");
    rc = surpool_conn_run(c, "string::uppercase", NULL, args, &out, &err);
    json_decref(args);
    bad |= show("run", rc, out, &err);

    rc = surpool_conn_delete(c, "person", &out, &err);
    bad |= show("delete", rc, out, &err);
    rc = surpool_conn_delete(c, "knows", &out, &err);
    bad |= show("delete", rc, out, &err);

    surpool_conn_release(c);
    surpool_pool_destroy(pool);
    return bad;
}
