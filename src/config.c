/*
 * Configuration: defaults, validation with messages that name the field, and
 * the pool's private copy of every string (secrets wiped when freed).
 */
#include <stddef.h>
#include <string.h>

#include "codec.h"
#include "pool.h"
#include "utf8.h"

static surpool_err dup_field(char **dst, const char **pub, const char *src)
{
    *dst = NULL;
    *pub = NULL;
    if (src == NULL)
        return SURPOOL_OK;
    *dst = surpool__strdup(src);
    if (*dst == NULL)
        return SURPOOL_ERR_NOMEM;
    *pub = *dst;
    return SURPOOL_OK;
}

/* signin_params may hold passwords: overwrite its strings before freeing.
 * (jansson owns the buffers; writing through them is safe as we free next.) */
static void wipe_json_strings(json_t *v)
{
    if (json_is_string(v)) {
        surpool__wipe((char *)json_string_value(v), json_string_length(v));
    } else if (json_is_object(v)) {
        const char *k;
        json_t *m;
        json_object_foreach(v, k, m) wipe_json_strings(m);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m) wipe_json_strings(m);
    }
}

void surpool__config_free(surpool__pool_config *c)
{
    surpool__free_secret(c->url); /* ws://user:password@host: may hold the password */
    surpool__free(c->ns);
    surpool__free(c->db);
    surpool__free(c->user);
    surpool__free_secret(c->pass);
    surpool__free(c->access);
    surpool__free_secret(c->token);
    surpool__free(c->init_sql);
    surpool__free(c->tls_ca_file);
    surpool__free(c->tls_ca_dir);
    surpool__free(c->tls_cert_file);
    surpool__free(c->tls_key_file);
    wipe_json_strings(c->signin_params);
    json_decref(c->signin_params);
    if (c->endpoints != NULL)
        for (int i = 0; i < c->pub.nendpoints; i++)
            surpool__free(c->endpoints[i]);
    surpool__free(c->endpoints);
    memset(c, 0, sizeof(*c));
}

/* ---- Several nodes (docs/cluster.md) ---- */

void surpool__config_free_endpoints(surpool__endpoint *eps, int n)
{
    if (eps == NULL)
        return;
    for (int i = 0; i < n; i++)
        surpool__url_free(&eps[i].url);
    surpool__free(eps);
}

surpool_err surpool__config_endpoints(const surpool_config *c, surpool__endpoint **out, int *n,
                                      surpool_error *err)
{
    *out = NULL;
    *n = 0;
    surpool__url *hosts = NULL;
    int nhosts = 0;
    surpool_err rc = surpool__url_parse_list(c->url, &hosts, &nhosts, err);
    if (rc != SURPOOL_OK)
        return rc;
    int total = nhosts + c->nendpoints;
    if (total > SURPOOL_MAX_ENDPOINTS) {
        surpool__url_free_list(hosts, nhosts);
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "%d nodes (config.url's hosts and config.endpoints together); "
                               "the limit is %d",
                               total, SURPOOL_MAX_ENDPOINTS);
    }
    surpool__endpoint *eps = surpool__calloc((size_t)total, sizeof(*eps));
    if (eps == NULL) {
        surpool__url_free_list(hosts, nhosts);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory reading the nodes");
    }
    /* Move the URL's hosts in; the array's own memory goes. */
    for (int i = 0; i < nhosts; i++)
        eps[i].url = hosts[i];
    surpool__free(hosts);
    int have = nhosts;
    for (int i = 0; i < c->nendpoints && rc == SURPOOL_OK; i++) {
        surpool__url *u = &eps[have].url;
        surpool_error eerr;
        surpool__error_clear(&eerr);
        rc = surpool__url_parse(c->endpoints[i], u, &eerr);
        if (rc != SURPOOL_OK) {
            surpool__seterr(err, rc, "config.endpoints[%d]: %s", i, eerr.message);
            break;
        }
        have++;
        if (u->tls != eps[0].url.tls)
            rc = surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                 "config.endpoints[%d] is %s:// but config.url is %s://: every "
                                 "node uses the same scheme (mixed schemes)",
                                 i, u->tls ? "wss" : "ws", eps[0].url.tls ? "wss" : "ws");
        else if (u->user != NULL || u->ns != NULL || u->db != NULL || u->access != NULL ||
                 u->format != 0)
            rc = surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                 "config.endpoints[%d] carries user info or query parameters: "
                                 "credentials, ns, db, ac and format are shared (give them in "
                                 "config.url or the config fields)",
                                 i);
        for (int j = 0; j < have - 1 && rc == SURPOOL_OK; j++)
            if (surpool__url_same_endpoint(&eps[j].url, u))
                rc = surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                     "config.endpoints[%d] repeats node %d (same host and "
                                     "port)",
                                     i, j + 1);
    }
    if (rc != SURPOOL_OK) {
        surpool__config_free_endpoints(eps, have);
        return rc;
    }
    *out = eps;
    *n = total;
    return SURPOOL_OK;
}

/* Take a string from the config, or from the URL when the config has none. */
static const char *pick(const char *cfg_value, const char *url_value)
{
    return cfg_value != NULL ? cfg_value : url_value;
}

surpool_err surpool__config_copy(surpool__pool_config *dst, const surpool_config *src,
                                 const surpool__url *url, surpool_error *err)
{
    memset(dst, 0, sizeof(*dst));
    dst->pub = *src;
    surpool_err rc = SURPOOL_OK;
    surpool_config *pub = &dst->pub;
#define DUP(field, value)                                                                      \
    do {                                                                                       \
        if (rc == SURPOOL_OK)                                                                  \
            rc = dup_field(&dst->field, &pub->field, (value));                                 \
    } while (0)
    DUP(url, src->url);
    DUP(ns, pick(src->ns, url->ns));
    DUP(db, pick(src->db, url->db));
    DUP(user, pick(src->user, url->user));
    DUP(pass, pick(src->pass, url->pass));
    DUP(access, pick(src->access, url->access));
    DUP(token, src->token);
    DUP(init_sql, src->init_sql);
    DUP(tls_ca_file, src->tls_ca_file);
    DUP(tls_ca_dir, src->tls_ca_dir);
    DUP(tls_cert_file, src->tls_cert_file);
    DUP(tls_key_file, src->tls_key_file);
#undef DUP
    /* The config wins over the URL; CBOR when neither says. */
    if (pub->wire_format == SURPOOL_WIRE_DEFAULT)
        pub->wire_format =
            url->format != 0 ? (surpool_wire_format)url->format : SURPOOL_WIRE_CBOR;
    /* config.endpoints: the caller's array is borrowed; keep copies. */
    pub->endpoints = NULL;
    if (rc == SURPOOL_OK && src->nendpoints > 0) {
        dst->endpoints = surpool__calloc((size_t)src->nendpoints, sizeof(char *));
        if (dst->endpoints == NULL) {
            rc = SURPOOL_ERR_NOMEM;
            pub->nendpoints = 0; /* nothing to free per entry */
        }
        for (int i = 0; rc == SURPOOL_OK && i < src->nendpoints; i++)
            if ((dst->endpoints[i] = surpool__strdup(src->endpoints[i])) == NULL)
                rc = SURPOOL_ERR_NOMEM;
        pub->endpoints = (const char *const *)dst->endpoints;
    }
    if (rc == SURPOOL_OK && src->signin_params != NULL) {
        dst->signin_params = json_deep_copy(src->signin_params);
        if (dst->signin_params == NULL)
            rc = SURPOOL_ERR_NOMEM;
        pub->signin_params = dst->signin_params;
    }
    if (rc != SURPOOL_OK) {
        surpool__config_free(dst);
        return surpool__seterr(err, rc, "out of memory copying the configuration");
    }
    return SURPOOL_OK;
}

static int empty(const char *s)
{
    return s != NULL && s[0] == '\0';
}

/* Every millisecond setting, for the upper bound: larger values overflowed
 * (ms -> ns, deadlines, backoff doubling), so they are refused, not clamped:
 * the caller learns the limit instead of getting a different value. */
static surpool_err check_ms_bounds(const surpool_config *c, surpool_error *err)
{
    const struct {
        const char *name;
        long value;
    } ms[] = {
        {"acquire_timeout_ms", c->acquire_timeout_ms},
        {"connect_timeout_ms", c->connect_timeout_ms},
        {"request_timeout_ms", c->request_timeout_ms},
        {"reconnect_backoff_min_ms", c->reconnect_backoff_min_ms},
        {"reconnect_backoff_max_ms", c->reconnect_backoff_max_ms},
        {"idle_timeout_ms", c->idle_timeout_ms},
        {"max_lifetime_ms", c->max_lifetime_ms},
        {"validation_idle_ms", c->validation_idle_ms},
        {"validation_timeout_ms", c->validation_timeout_ms},
        {"keepalive_interval_ms", c->keepalive_interval_ms},
        {"maintenance_interval_ms", c->maintenance_interval_ms},
        {"leak_threshold_ms", c->leak_threshold_ms},
        {"rebalance_interval_ms", c->rebalance_interval_ms},
    };
    for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++)
        if ((long long)ms[i].value > SURPOOL__MS_MAX)
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "config.%s must be at most %lld (365 days; got %ld)",
                                   ms[i].name, SURPOOL__MS_MAX, ms[i].value);
    return SURPOOL_OK;
}

/* Validate what create() needs; messages name the field. */
surpool_err surpool__config_validate(const surpool_config *c, surpool_error *err)
{
    if (c->url == NULL || c->url[0] == '\0')
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "config.url is required");
    if (c->max_connections < 1 || c->max_connections > 100000)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.max_connections must be 1..100000 (got %d)",
                               c->max_connections);
    if (c->min_connections < 0 || c->min_connections > c->max_connections)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.min_connections must be 0..max_connections (got %d)",
                               c->min_connections);
    if (c->acquire_timeout_ms < 0)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.acquire_timeout_ms must be >= 0");
    if (c->connect_timeout_ms <= 0)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.connect_timeout_ms must be > 0");
    if (c->request_timeout_ms < 0)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.request_timeout_ms must be >= 0 (0 = none)");
    if (c->max_waiters < 0)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.max_waiters must be >= 0 (0 = unbounded)");
    if (c->reconnect_backoff_min_ms < 0 ||
        c->reconnect_backoff_max_ms < c->reconnect_backoff_min_ms)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.reconnect_backoff_min_ms must be >= 0 and <= "
                               "reconnect_backoff_max_ms");
    if (c->max_concurrent_connects < 0)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.max_concurrent_connects must be >= 0");
    if (c->max_message_bytes < 1024)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.max_message_bytes must be >= 1024");
    if (c->idle_timeout_ms < 0 || c->max_lifetime_ms < 0 || c->keepalive_interval_ms < 0 ||
        c->leak_threshold_ms < 0)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.idle_timeout_ms, max_lifetime_ms, "
                               "keepalive_interval_ms and leak_threshold_ms must be >= 0");
    if (c->validation_timeout_ms <= 0)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.validation_timeout_ms must be > 0");
    if (c->maintenance_interval_ms < 1)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.maintenance_interval_ms must be >= 1");
    if (check_ms_bounds(c, err) != SURPOOL_OK)
        return SURPOOL_ERR_INVALID_ARG;
    if (c->breaker_threshold < 0)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.breaker_threshold must be >= 0 (0 = never)");
    if ((c->lazy_start != 0 && c->lazy_start != 1) ||
        (c->close_dirty_leases != 0 && c->close_dirty_leases != 1))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.lazy_start and close_dirty_leases must be 0 or 1");
    if (c->shared_connections < 0 || c->shared_max_inflight < 1)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.shared_connections must be >= 0 and "
                               "shared_max_inflight >= 1");
    if (c->live_queue_max < 0 || c->live_max_per_connection < 0)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.live_queue_max and live_max_per_connection must be "
                               ">= 0 (0 = the default)");
    if (c->log_level < SURPOOL_LOG_ERROR || c->log_level > SURPOOL_LOG_DEBUG)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "config.log_level is invalid");
    if (c->wire_format < SURPOOL_WIRE_DEFAULT || c->wire_format > SURPOOL_WIRE_CBOR)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "config.wire_format is invalid");
    if (empty(c->ns) || empty(c->db) || empty(c->user) || empty(c->access) || empty(c->token) ||
        empty(c->init_sql))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config strings must be NULL or non-empty");
    /* Strings sent to the server must be valid UTF-8 (the TLS file names are
     * not sent: they are paths, which may be any bytes). */
    const struct {
        const char *name, *value;
    } texts[] = {{"url", c->url},     {"ns", c->ns},
                 {"db", c->db},       {"user", c->user},
                 {"pass", c->pass},   {"access", c->access},
                 {"token", c->token}, {"init_sql", c->init_sql}};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
        if (!surpool__utf8_valid_str(texts[i].value))
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "config.%s is not valid UTF-8",
                                   texts[i].name);
    if (c->nendpoints < 0 || c->nendpoints > SURPOOL_MAX_ENDPOINTS)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.nendpoints must be 0..%d (got %d)",
                               SURPOOL_MAX_ENDPOINTS, c->nendpoints);
    if ((c->endpoints == NULL) != (c->nendpoints == 0))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.endpoints and config.nendpoints go together (an array "
                               "of nendpoints URLs, or NULL and 0)");
    for (int i = 0; i < c->nendpoints; i++)
        if (c->endpoints[i] == NULL || c->endpoints[i][0] == '\0')
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "config.endpoints[%d] is NULL or empty", i);
    if (c->placement < SURPOOL_PLACE_LEAST_CONNECTIONS || c->placement > SURPOOL_PLACE_ORDERED)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "config.placement is invalid");
    if (c->rebalance_interval_ms < 0)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.rebalance_interval_ms must be >= 0 (0 = off)");
    if (c->tls_insecure_skip_verify != 0 && c->tls_insecure_skip_verify != 1)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.tls_insecure_skip_verify must be 0 or 1");
    if ((c->tls_cert_file == NULL) != (c->tls_key_file == NULL))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.tls_cert_file and tls_key_file go together");
    return SURPOOL_OK;
}

/* Checks that need the URL merged in. */
surpool_err surpool__config_validate_merged(const surpool_config *c, surpool_error *err)
{
    if (c->db != NULL && c->ns == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "config.db needs config.ns");
    if (c->pass != NULL && c->user == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "config.pass needs config.user");
    if (c->user != NULL && c->pass == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "config.user needs config.pass");
    if ((c->token != NULL) + (c->user != NULL) + (c->signin_params != NULL) > 1)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.user, config.token and config.signin_params are "
                               "exclusive");
    if (c->token_fn != NULL &&
        (c->token != NULL || c->user != NULL || c->signin_params != NULL))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.token_fn excludes config.user, config.token and "
                               "config.signin_params");
    if (c->signin_params != NULL && !json_is_object(c->signin_params))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.signin_params must be a JSON object");
    if (surpool__codec_check_value(c->signin_params, "config.signin_params", err) != SURPOOL_OK)
        return SURPOOL_ERR_INVALID_ARG;
    if (c->auth_level < SURPOOL_AUTH_ROOT || c->auth_level > SURPOOL_AUTH_DATABASE)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "config.auth_level is invalid");
    if (c->auth_level == SURPOOL_AUTH_NAMESPACE && c->ns == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.auth_level NAMESPACE needs config.ns");
    if (c->auth_level == SURPOOL_AUTH_DATABASE && c->db == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.auth_level DATABASE needs config.ns and config.db");
    if (c->access != NULL && c->user == NULL)
        return surpool__seterr(
            err, SURPOOL_ERR_INVALID_ARG,
            "config.access needs config.user and config.pass (sent as the "
            "access method's $user and $pass; use signin_params for others)");
    if (c->auth_level != SURPOOL_AUTH_ROOT && c->user == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.auth_level applies to config.user only");
    if (c->access != NULL && (c->ns == NULL || c->db == NULL))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.access needs config.ns and config.db");
    return SURPOOL_OK;
}

/* The smallest config a caller can hand over: struct_size and url. */
#define CONFIG_MIN_SIZE (offsetof(surpool_config, url) + sizeof(const char *))

static void config_defaults(surpool_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->struct_size = sizeof(*cfg);
    cfg->min_connections = 0;
    cfg->max_connections = 10;
    cfg->acquire_timeout_ms = 30000;
    cfg->connect_timeout_ms = 10000;
    cfg->request_timeout_ms = 30000;
    cfg->max_waiters = 0;
    cfg->max_concurrent_connects = 8;
    cfg->reconnect_backoff_min_ms = 100;
    cfg->reconnect_backoff_max_ms = 5000;
    cfg->max_message_bytes = (size_t)64 * 1024 * 1024;
    cfg->log_level = SURPOOL_LOG_WARN;
    cfg->idle_timeout_ms = 600000;
    cfg->max_lifetime_ms = 1800000;
    cfg->validation_idle_ms = 2000;
    cfg->validation_timeout_ms = 3000;
    cfg->keepalive_interval_ms = 30000;
    cfg->maintenance_interval_ms = 500;
    cfg->breaker_threshold = 5;
    cfg->leak_threshold_ms = 0;
    cfg->shared_connections = 2;
    cfg->shared_max_inflight = 256;
    cfg->live_queue_max = 1024;
    cfg->live_max_per_connection = 1000;
}

/* Writes only the `size` bytes the caller has: a caller built against an older,
 * smaller surpool_config gets the fields it knows; a newer, larger one gets its
 * extra bytes zeroed and struct_size = the part this library understands. */
void surpool_config_init_sized(surpool_config *cfg, size_t size)
{
    if (cfg == NULL || size < CONFIG_MIN_SIZE)
        return;
    surpool_config d;
    config_defaults(&d);
    size_t n = size < sizeof(d) ? size : sizeof(d);
    d.struct_size = n;
    memset(cfg, 0, size);
    memcpy(cfg, &d, n);
}

/* The exported symbol, for callers that do not see the macro (binaries built
 * against 0.1.0, other languages): the 0.1.0 size, which is today's. When the
 * struct grows, this must keep passing the 0.1.0 size (tests/test_abi.c pins it). */
void(surpool_config_init)(surpool_config *cfg)
{
    surpool_config_init_sized(cfg, sizeof(surpool_config));
}

surpool_err surpool__config_widen(const surpool_config *given, surpool_config *full,
                                  surpool_error *err)
{
    size_t n = given->struct_size;
    if (n < CONFIG_MIN_SIZE || n > sizeof(*full))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config not initialised with surpool_config_init() "
                               "(struct_size %zu, this library reads %zu..%zu)",
                               n, (size_t)CONFIG_MIN_SIZE, sizeof(*full));
    /* Read only the bytes the caller has; everything after them is a default. */
    config_defaults(full);
    memcpy(full, given, n);
    full->struct_size = sizeof(*full);
    return SURPOOL_OK;
}
