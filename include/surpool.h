/*
 * surpool - a thread-safe connection pool and client for SurrealDB over its
 * WebSocket JSON RPC protocol.
 *
 * Copyright (c) 2026 the surpool authors. MIT licence, see LICENSE.
 *
 * Conventions used in every doc block below:
 *  - "Thread safety" says one of: "Any thread." (safe to call concurrently on the
 *    same handle); "One thread at a time per handle." (a leased connection may move
 *    between threads but must not be used by two at once); "Not from a surpool
 *    callback."; "Must not race with any other call on the handle.".
 *  - json_t results come back through `json_t **out` as NEW references the caller
 *    releases with json_decref(); *out is set only when the call returns SURPOOL_OK.
 *    json_t parameters are BORROWED: surpool serialises them before returning and
 *    keeps no reference.
 *  - `surpool_error *err` is optional (NULL allowed) and caller-owned; on failure it
 *    receives the code, the server's error code and kind when the server sent one,
 *    and a message. On success it is left untouched.
 *  - The library never prints, never exits, never aborts. Log lines go to
 *    surpool_config.log_fn and nowhere else.
 */
#ifndef SURPOOL_H
#define SURPOOL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SURPOOL_VERSION_MAJOR 0
#define SURPOOL_VERSION_MINOR 1
#define SURPOOL_VERSION_PATCH 0
#define SURPOOL_VERSION_STRING "0.1.0"

#if defined(SURPOOL_STATIC)
#define SURPOOL_API
#elif defined(__GNUC__) && __GNUC__ >= 4
#define SURPOOL_API __attribute__((visibility("default")))
#else
#define SURPOOL_API
#endif

/* ------------------------------------------------------------------------- */
/* Handles                                                                    */
/* ------------------------------------------------------------------------- */

/** A pool of connections to one SurrealDB endpoint. Opaque. */
typedef struct surpool_pool surpool_pool;

/** A lease handle: names one lease of a connection, exclusively owned by its
 *  borrower until surpool_conn_release(). Opaque, and not a pointer to
 *  memory: the value encodes a slot and a generation, so it is never to be
 *  dereferenced, freed, or compared with a handle of another lease (two leases
 *  of the same connection have different handles). Once its lease has ended
 *  (released, its pool destroyed) the handle is stale: every surpool_conn_*
 *  function refuses it (SURPOOL_ERR_INVALID_ARG, or a logged no-op for
 *  release and discard) and it never reaches the connection's next borrower.
 *  A stale handle is told apart from the current lease of its slot exactly,
 *  unless that slot has since been leased 2^32 times (2^16 on 32-bit
 *  platforms). */
typedef struct surpool_conn surpool_conn;

/* ------------------------------------------------------------------------- */
/* Errors                                                                     */
/* ------------------------------------------------------------------------- */

/** Result codes. Values are explicit and append-only: never renumbered or
 *  removed. docs/errors.md says when each happens and what to do about it. */
typedef enum surpool_err {
    SURPOOL_OK = 0,
    SURPOOL_ERR_INVALID_ARG = 1,      /**< a bad argument; nothing was sent */
    SURPOOL_ERR_NOMEM = 2,            /**< an allocation failed */
    SURPOOL_ERR_TIMEOUT = 3,          /**< acquire: no connection within the timeout */
    SURPOOL_ERR_CLOSED = 4,           /**< the pool is closed */
    SURPOOL_ERR_OVERLOADED = 5,       /**< acquire: max_waiters callers already wait */
    SURPOOL_ERR_CONNECT = 6,          /**< could not open a connection */
    SURPOOL_ERR_AUTH = 7,             /**< the server refused the credentials */
    SURPOOL_ERR_SERVER = 8,           /**< the server answered the RPC with an error */
    SURPOOL_ERR_PROTOCOL = 9,         /**< the server sent something we cannot read */
    SURPOOL_ERR_DISCONNECTED = 10,    /**< the connection died with the call in flight */
    SURPOOL_ERR_REQUEST_TIMEOUT = 11, /**< no reply within request_timeout_ms */
    SURPOOL_ERR_TLS = 12,             /**< TLS handshake or certificate check failed */
    SURPOOL_ERR_TOO_LARGE = 13,       /**< a reply exceeded max_message_bytes */
    SURPOOL_ERR_UNAVAILABLE = 14,     /**< server known down (circuit open); fail fast */
    SURPOOL_ERR_BROKEN = 15,          /**< the leased connection is broken; release it */
    SURPOOL_ERR_PAUSED = 16,          /**< acquire: the pool is paused (fail-fast pause) */
    SURPOOL_ERR_UNSUPPORTED = 17,     /**< the server's version lacks the feature */
} surpool_err;

/** Detailed error information, filled by calls that take a `surpool_error *`.
 *  A plain value type: the caller owns it, it holds no pointers. */
typedef struct surpool_error {
    surpool_err code;  /**< same value the call returned */
    int server_code;   /**< the server's JSON-RPC error code, or 0 */
    char kind[32];     /**< the server's error kind (3.x, e.g. "NotAllowed"), or "" */
    char message[256]; /**< human readable, NUL terminated, never holds secrets */
    char reserved[64]; /**< room to grow; ignore */
} surpool_error;

/** Static English text for a code. Never NULL, never allocates.
 *  Thread safety: Any thread. */
SURPOOL_API const char *surpool_strerror(surpool_err code);

/** The code's C name, e.g. "SURPOOL_ERR_TIMEOUT" ("SURPOOL_ERR_UNKNOWN" for a
 *  value that is not a code). Static, never NULL, never allocates. Name and
 *  text come from one table, so every code has both.
 *  Thread safety: Any thread. */
SURPOOL_API const char *surpool_err_name(surpool_err code);

/* ------------------------------------------------------------------------- */
/* Logging                                                                    */
/* ------------------------------------------------------------------------- */

typedef enum surpool_log_level {
    SURPOOL_LOG_ERROR = 0,
    SURPOOL_LOG_WARN = 1,
    SURPOOL_LOG_INFO = 2,
    SURPOOL_LOG_DEBUG = 3,
} surpool_log_level;

/** Log sink. `message` is borrowed, valid for the call only, and never contains
 *  a password or token. Called from any surpool thread (callers' threads, the
 *  pool's service, connector, maintainer and lane threads), possibly
 *  concurrently, never with a pool lock held: make it thread-safe. It must not
 *  call back into the pool. */
typedef void (*surpool_log_fn)(void *userdata, surpool_log_level level, const char *message);

/* ------------------------------------------------------------------------- */
/* Configuration                                                              */
/* ------------------------------------------------------------------------- */

/** Called on every new connection after signin/use, before anyone gets it,
 *  and again when a dirty lease is reset on release. Runs on the thread doing
 *  that (a connector thread, or the releasing caller), without the pool lock.
 *  It may call the surpool_conn_* functions on `conn` (and nothing else of the
 *  pool); it must not release it (a release is refused and logged at ERROR:
 *  the lease ends when the hook returns). `conn` is a handle of its own, valid for the
 *  duration of the hook only (stale afterwards, see surpool_conn). Return SURPOOL_OK to accept the connection,
 *  anything else to discard it (counted as a connect failure). What the hook
 *  sets on its lease ends with it, as at a release: a surpool_conn_set_timeout()
 *  ends, a transaction left open is cancelled (logged at WARN; the connection
 *  is refused if that fails), and surpool_conn_discard() refuses the
 *  connection as an error return does. Session state (use, let, signin) is
 *  kept: it is the state every borrower starts from. */
typedef surpool_err (*surpool_on_connect_fn)(void *userdata, surpool_conn *conn);

/** Token provider (config.token_fn): for applications that get their tokens
 *  elsewhere (an identity provider, record access with a refresh token).
 *  surpool calls it when the pool needs a token: for the first connection,
 *  and again when the token it gave is refused or has expired (a session
 *  that expired, a new connection whose `authenticate` failed), at most one
 *  call in flight per pool (the other connections wait for its token).
 *  Write a NUL-terminated token into `token` (`size` bytes, at least
 *  SURPOOL_TOKEN_MAX) and return SURPOOL_OK; the library copies it and wipes
 *  the buffer. Return anything else to refuse: put why in err->message
 *  (surpool reports it as SURPOOL_ERR_AUTH "config.token_fn failed: ..."; never
 *  put a secret there). Runs on the thread that needs the token: a connector
 *  thread, the shared lane's acquirer, or a caller's thread in a lease call
 *  that found its session expired; never with a pool lock held. It must not
 *  call into the pool. */
typedef surpool_err (*surpool_token_fn)(void *userdata, char *token, size_t size,
                                        surpool_error *err);

/** The size of the buffer a surpool_token_fn writes into. */
#define SURPOOL_TOKEN_MAX 16384

/* ------------------------------------------------------------------------- */
/* Events                                                                     */
/* ------------------------------------------------------------------------- */

typedef enum surpool_event_type {
    SURPOOL_EVENT_ACQUIRE = 1,       /**< a lease was granted (duration: wait) */
    SURPOOL_EVENT_RELEASE = 2,       /**< a lease came back (duration: lease age) */
    SURPOOL_EVENT_CREATE = 3,        /**< a connection opened (duration: connect time) */
    SURPOOL_EVENT_DESTROY = 4,       /**< a connection closed (message: why) */
    SURPOOL_EVENT_TIMEOUT = 5,       /**< an acquire timed out (duration: wait) */
    SURPOOL_EVENT_SHED = 6,          /**< an acquire was refused: max_waiters */
    SURPOOL_EVENT_HEALTH_FAIL = 7,   /**< a validation or keepalive ping failed */
    SURPOOL_EVENT_BREAKER_OPEN = 8,  /**< connects keep failing: acquires fail fast */
    SURPOOL_EVENT_BREAKER_CLOSE = 9, /**< a probe connected: the server is back */
    SURPOOL_EVENT_LEAK = 10,         /**< a lease outlived leak_threshold_ms (file, line) */
    SURPOOL_EVENT_CONNECT_FAIL = 11, /**< a connect failed (code, message) */
} surpool_event_type;

/** One pool event. Borrowed: valid for the callback only. */
typedef struct surpool_event {
    surpool_event_type type;
    uint64_t conn_id;    /**< connection serial (1, 2, ...), 0 when none */
    int64_t duration_us; /**< see each type; 0 when not meaningful */
    surpool_err code;    /**< for failures, else SURPOOL_OK */
    const char *message; /**< "" when none; never holds secrets */
    const char *file;    /**< acquire call site (LEAK, ACQUIRE), or NULL */
    int line;
    int endpoint; /**< the node the event is about, 1-based index into the pool's
                       endpoint list (surpool_pool_endpoint_stats() with
                       endpoint - 1 gives its host and port); 0 when the event
                       is not about one node. Set on CREATE, DESTROY,
                       CONNECT_FAIL, HEALTH_FAIL and the BREAKER_* events.
                       (It lives in what was padding, so the struct's size is
                       unchanged; libraries before it left it 0.) */
} surpool_event;

/** Event sink. Called on the thread where the event happened (a caller's, a
 *  connector's, the maintainer's or the lane's), never with the pool lock held,
 *  possibly
 *  concurrently. It may call surpool_pool_stats() and log; it must not acquire,
 *  release, pause, drain, close or destroy on the pool, and must be quick. */
typedef void (*surpool_event_fn)(void *userdata, const surpool_event *event);

/** Which kind of user config.user/pass sign in as. */
typedef enum surpool_auth_level {
    SURPOOL_AUTH_ROOT = 0,      /**< root user: {"user","pass"} */
    SURPOOL_AUTH_NAMESPACE = 1, /**< namespace user: adds config.ns */
    SURPOOL_AUTH_DATABASE = 2,  /**< database user: adds config.ns and config.db */
} surpool_auth_level;

/* The struct_size rule (surpool_config, surpool_stats), as Win32's cbSize:
 *  - struct_size is the size of the struct as the CALLER was compiled. The
 *    macros surpool_config_init() and surpool_pool_stats() pass the sizeof from
 *    the caller's own header, so callers never set it by hand.
 *  - The library reads and writes only the first struct_size bytes. A smaller
 *    struct (a caller built against an older surpool.h) gets every field it
 *    lacks at its default (config) or leaves it out (stats); a larger one (a
 *    newer header than the library) gets its unknown tail zeroed by
 *    surpool_config_init() and surpool_pool_stats(), and struct_size reports
 *    how many bytes this library understood. surpool_pool_create() refuses a
 *    config whose struct_size is larger than this library's (it cannot honour
 *    fields it does not know) or too small to hold `url`.
 *  - New fields are only ever appended after the existing ones, so a prefix
 *    of the struct is always an older version of it; nothing is reordered,
 *    resized or removed (tests/test_abi.c pins every offset).
 *  - `reserved` stays zero; a later field taken from it must treat zero as
 *    "default". */

/** Pool configuration: a value type. Always start from surpool_config_init()
 *  so that new fields get their defaults. Strings are borrowed by the struct
 *  and copied by surpool_pool_create(). docs/configuration.md lists every field. */
/** The wire format of a pool's connections (docs/values.md). */
typedef enum surpool_wire_format {
    SURPOOL_WIRE_DEFAULT = 0, /**< the URL's format= key if given, else CBOR */
    SURPOOL_WIRE_JSON = 1,    /**< subprotocol "json", text frames */
    SURPOOL_WIRE_CBOR = 2,    /**< subprotocol "cbor", binary frames (exact values) */
} surpool_wire_format;

/** Most nodes one pool may have (url's hosts and config.endpoints together). */
#define SURPOOL_MAX_ENDPOINTS 32

/** Where new connections go when the pool has several nodes (docs/cluster.md).
 *  Only healthy nodes are chosen (not backing off after a failed connect, breaker
 *  closed); a node whose breaker is open gets one probe connect at a time, paced
 *  by its backoff. Values are explicit and append-only. */
typedef enum surpool_placement {
    SURPOOL_PLACE_LEAST_CONNECTIONS = 0, /**< the node with the fewest open and opening
                                              connections; ties by list order */
    SURPOOL_PLACE_ROUND_ROBIN = 1,       /**< each node in turn */
    SURPOOL_PLACE_ORDERED = 2,           /**< ordered failover: the first healthy node in
                                              list order */
} surpool_placement;

typedef struct surpool_config {
    size_t struct_size; /**< set by surpool_config_init(): the caller's sizeof
                             (see the struct_size rule above); do not touch */

    /* Where and who. */
    const char *url;                  /**< "ws://host:port/rpc" or "wss://..."; required;
                                           path at most 2048 bytes (docs/configuration.md);
                                           several nodes: "ws://h1:p1,h2:p2/rpc"
                                           (docs/cluster.md) */
    const char *ns;                   /**< namespace selected on every connection, or NULL */
    const char *db;                   /**< database (needs ns), or NULL */
    const char *user;                 /**< signin user, or NULL for no signin; the pool
                                           signs in once and authenticates further
                                           connections with the token it got */
    const char *pass;                 /**< signin password (wiped from memory at destroy) */
    surpool_auth_level auth_level;    /**< what `user` is; default SURPOOL_AUTH_ROOT */
    const char *access;               /**< record access method: signs in with
                                        {ns, db, ac, user, pass}; or NULL */
    const char *token;                /**< JWT to `authenticate` with instead of user/pass
                                           (never a sign-in: the pool has no password);
                                           wiped from memory at destroy */
    const json_t *signin_params;      /**< full signin object instead of user/pass (any
                                        access method's variables); deep-copied */
    const char *init_sql;             /**< SurrealQL run on every new connection, or NULL */
    surpool_on_connect_fn on_connect; /**< hook run on every new connection, or NULL */
    void *on_connect_userdata;

    /* Sizing and timeouts (milliseconds). Every *_ms field is at most
     * 31536000000 (365 days); create refuses a larger value, naming it. */
    int min_connections;     /**< opened at create and kept open; default 0 */
    int max_connections;     /**< hard cap; default 10 */
    long acquire_timeout_ms; /**< default wait for a connection; default 30000 */
    long connect_timeout_ms; /**< TCP+TLS+upgrade+setup; default 10000 */
    long request_timeout_ms; /**< per RPC; 0 = none; default 30000 */
    int max_waiters;         /**< queued acquires before shedding; 0 = unbounded */

    /* Connect governor. */
    int max_concurrent_connects;   /**< connects in progress at once; 0 = max_connections;
                                        default 8 */
    long reconnect_backoff_min_ms; /**< first delay after a failed connect; default 100 */
    long reconnect_backoff_max_ms; /**< backoff ceiling; default 5000 */

    /* Lifecycle (docs/lifecycle.md). */
    long idle_timeout_ms;         /**< close idle connections above min after this;
                                        0 = never; default 600000 */
    long max_lifetime_ms;         /**< retire connections older than this (minus up to
                                        5% jitter); 0 = unlimited; default 1800000 */
    long validation_idle_ms;      /**< ping a connection idle longer than this before
                                        lending it; < 0 = never; default 2000 */
    long validation_timeout_ms;   /**< deadline of that ping; default 3000 */
    long keepalive_interval_ms;   /**< RPC `ping` idle connections this often; 0 = off;
                                        default 30000. The WebSocket-level keepalive
                                        (a ping frame after 30 s without a frame from
                                        the server, hang-up at 40 s) always runs:
                                        docs/protocol.md */
    long maintenance_interval_ms; /**< maintainer tick; default 500 */
    int breaker_threshold;        /**< consecutive connect failures that open the
                                        circuit; 0 = never; default 5 */
    long leak_threshold_ms;       /**< report leases held longer; 0 = off (default) */
    int lazy_start;               /**< 1: create succeeds even if min_connections cannot
                                        be opened (the pool keeps trying); default 0 */
    int close_dirty_leases;       /**< 1: close a lease whose session changed instead
                                        of resetting it; default 0 */
    surpool_event_fn on_event;    /**< NULL = no events */
    void *event_userdata;

    /* Shared lane (surpool_query, surpool_call, *_async). */
    int shared_connections;  /**< lane connections (at most max_connections - 1,
                                        so leases always have one); 0 = pool-level
                                        calls lease a connection each; default 2. Lane
                                        connections are kept until they die or reach
                                        max_lifetime_ms; idle_timeout_ms and keepalive
                                        do not apply to them. */
    int shared_max_inflight; /**< requests in flight per lane socket; default 256 */

    /* Transport. */
    size_t max_message_bytes; /**< largest reply accepted; default 64 MiB */

    /* TLS (wss:// only). Verification and hostname check are on by default. */
    const char *tls_ca_file;      /**< PEM bundle of trusted CAs, or NULL for system */
    const char *tls_ca_dir;       /**< hashed CA directory, or NULL */
    const char *tls_cert_file;    /**< client certificate (PEM), or NULL */
    const char *tls_key_file;     /**< client private key (PEM), or NULL */
    int tls_insecure_skip_verify; /**< 1 = accept ANY certificate and name. Testing only. */

    /* Logging. */
    surpool_log_fn log_fn; /**< NULL = silent (libwebsockets' logs included) */
    void *log_userdata;
    surpool_log_level log_level; /**< most verbose level passed on; default WARN */

    /* Wire format: CBOR keeps every string and every SurrealDB type exact;
     * JSON lets the server reinterpret strings (docs/values.md). */
    surpool_wire_format wire_format; /**< default SURPOOL_WIRE_DEFAULT */

    /* Token provider (docs/lifecycle.md, "Authentication"): excludes user,
     * token and signin_params. */
    surpool_token_fn token_fn; /**< NULL = none (default) */
    void *token_userdata;      /**< passed to token_fn */

    /* Several nodes of one SurrealDB cluster (docs/cluster.md). The nodes are
     * the hosts of `url` ("ws://h1:8000,h2:8000/rpc") followed by these. They
     * share the scheme, credentials, ns/db, wire format and TLS settings;
     * each host is checked against its own certificate. (Taken from
     * `reserved`: zero is the default, the struct's size is unchanged.) */
    const char *const *endpoints; /**< nendpoints more node URLs
                                       "ws[s]://host[:port][/path]" (the scheme of
                                       `url`; a path of their own, default /rpc; no
                                       user info, no query: those are shared), or
                                       NULL; copied by create */
    int nendpoints;               /**< entries in endpoints; url's hosts plus these
                                       are at most SURPOOL_MAX_ENDPOINTS, all
                                       distinct (host and port: names compared
                                       ASCII case-insensitively, IPv6 by value) */
    surpool_placement placement;  /**< which node a new connection goes to;
                                       default SURPOOL_PLACE_LEAST_CONNECTIONS */
    long rebalance_interval_ms;   /**< 0 = off (default): a node that comes back
                                       gets connections through idle and lifetime
                                       turnover only. > 0: at most one idle
                                       connection per interval is retired from the
                                       node with the most, while it has two more
                                       than the healthy node with the fewest (with
                                       SURPOOL_PLACE_ORDERED: from a node after the
                                       first healthy one) */

    /* Live queries (docs/live.md); zero means the default. */
    int live_queue_max;          /**< notifications queued per live query before they
                                      overflow (SURPOOL_LIVE_OVERFLOW); default 1024 */
    int live_max_per_connection; /**< live queries carried by one connection before
                                      the pool takes another; default 1000 */

    unsigned char reserved[208]; /**< room to grow; keep zero */
} surpool_config;

/** Fill the first `struct_size` bytes of `cfg` with defaults (all strings
 *  NULL, sizes and timeouts as documented) and set cfg->struct_size to the
 *  part of it this library knows (at most sizeof(surpool_config) of the
 *  library). Bytes past that are zeroed. Does nothing if `cfg` is NULL or
 *  `struct_size` cannot hold `url`. Call it through the macro
 *  surpool_config_init(cfg), which passes sizeof(surpool_config)
 *  as this header defines it.
 *  Thread safety: Any thread (on distinct structs). */
SURPOOL_API void surpool_config_init_sized(surpool_config *cfg, size_t struct_size);

/** surpool_config_init_sized() with the 0.1.0 size: the symbol binaries built
 *  before the macro existed call. */
SURPOOL_API void surpool_config_init(surpool_config *cfg);
#define surpool_config_init(cfg) surpool_config_init_sized((cfg), sizeof(surpool_config))

/* ------------------------------------------------------------------------- */
/* Pool                                                                       */
/* ------------------------------------------------------------------------- */

/** Create a pool. Validates `cfg`, copies every string, starts the transport,
 *  and opens min_connections connections.
 *  @param cfg  filled by surpool_config_init() then edited; borrowed.
 *  @param out  receives the pool on success; untouched on failure.
 *  @return SURPOOL_OK; SURPOOL_ERR_INVALID_ARG (bad config, message says which
 *          field); SURPOOL_ERR_NOMEM; a connect error if min_connections could
 *          not be opened.
 *  Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_pool_create(const surpool_config *cfg, surpool_pool **out,
                                            surpool_error *err);

/** Stop lending: every current waiter returns SURPOOL_ERR_CLOSED at once and so
 *  does every later acquire. Leased connections stay usable until released;
 *  they are closed on release. Idempotent.
 *  Thread safety: Any thread. Not from a surpool callback. */
SURPOOL_API void surpool_pool_close(surpool_pool *pool);

/** Close the pool, wait for every lease to come back, close every connection,
 *  stop the transport and free everything. NULL is a no-op. Live queries are
 *  killed (best effort, within about 1 s) and every one gets its last
 *  SURPOOL_LIVE_CLOSED event before this returns; their handles are freed.
 *  Thread safety: Must not race with any other call on the handle except
 *  surpool_conn_release() of leases, which it waits for. Not from a surpool
 *  callback: called inside a surpool_result_fn or a surpool_live_fn it would
 *  wait for its own thread, so it is refused there (an ERROR log line) and
 *  does nothing. */
SURPOOL_API void surpool_pool_destroy(surpool_pool *pool);

/** Lease a connection. Takes an idle connection if there is one; else opens a
 *  new one if below max_connections; else waits in FIFO order: a released
 *  connection goes straight to the oldest waiter.
 *  @param timeout_ms  how long to wait; < 0 means cfg.acquire_timeout_ms; 0 means
 *                     do not wait (but a new connection may still be opened).
 *  @param out  receives the lease handle on success (a new value for every
 *              lease, even of the same connection; see surpool_conn). No
 *              allocation: the handle is given back with surpool_conn_release().
 *  @return SURPOOL_OK; SURPOOL_ERR_TIMEOUT; SURPOOL_ERR_CLOSED;
 *          SURPOOL_ERR_OVERLOADED (max_waiters reached, returned at once);
 *          SURPOOL_ERR_PAUSED (fail-fast pause);
 *          when the timeout passed while opening connections kept failing, the
 *          last connect error: SURPOOL_ERR_CONNECT (a connect timeout included),
 *          _AUTH, _TLS, or whatever connection setup got (_SERVER from `use` or
 *          init_sql, the on_connect hook's code, ...);
 *          SURPOOL_ERR_UNAVAILABLE (circuit open: server known down; when
 *          the server refuses the credentials or certificate, _AUTH / _TLS
 *          come back just as fast instead);
 *          SURPOOL_ERR_INVALID_ARG.
 *  An idle connection unused for validation_idle_ms is pinged first, so even
 *  timeout_ms = 0 may take up to validation_timeout_ms per such connection.
 *  Called from inside a surpool_result_fn it returns SURPOOL_ERR_INVALID_ARG
 *  at once (it could wait on the thread that delivers replies).
 *  Thread safety: Any thread. Not from a surpool callback. */
SURPOOL_API surpool_err surpool_pool_acquire(surpool_pool *pool, long timeout_ms,
                                             surpool_conn **out, surpool_error *err);

/** surpool_pool_acquire() recording the call site for leak reports. The macro
 *  surpool_pool_acquire() calls it with __FILE__ and __LINE__; `file` must be a
 *  string that outlives the lease (a literal). */
SURPOOL_API surpool_err surpool_pool_acquire_at(surpool_pool *pool, long timeout_ms,
                                                surpool_conn **out, surpool_error *err,
                                                const char *file, int line);
#define surpool_pool_acquire(pool, timeout_ms, out, err)                                       \
    surpool_pool_acquire_at((pool), (timeout_ms), (out), (err), __FILE__, __LINE__)

/** Stop lending without closing: new acquires wait (fail_fast = 0) or fail at
 *  once with SURPOOL_ERR_PAUSED (fail_fast = 1); released connections go idle.
 *  Waiters already queued keep waiting. Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_pool_pause(surpool_pool *pool, int fail_fast);

/** Lend again: queued waiters are served in arrival order. Any thread. */
SURPOOL_API surpool_err surpool_pool_resume(surpool_pool *pool);

/** Wait until every user lease is back, up to timeout_ms (< 0: forever). The
 *  shared lane's connections and the maintainer's pings are not waited for.
 *  @return SURPOOL_OK or SURPOOL_ERR_TIMEOUT. Thread safety: Any thread. Not from
 *  a surpool callback, and not while holding a lease of this pool yourself. */
SURPOOL_API surpool_err surpool_pool_drain(surpool_pool *pool, long timeout_ms);

/** Statistics snapshot. All counters are since create. */
typedef struct surpool_stats {
    size_t struct_size; /**< set by surpool_pool_stats(): bytes filled in (the
                             caller's sizeof, or less from an older library) */
    int total;          /**< idle + in_use + connecting */
    int idle;
    int in_use;
    int connecting; /**< slots reserved for connects in progress */
    int waiters;    /**< callers queued in acquire now */
    int peak_waiters;
    uint64_t acquired; /**< successful acquires */
    uint64_t released;
    uint64_t timeouts;  /**< acquires that ended in SURPOOL_ERR_TIMEOUT */
    uint64_t shed;      /**< acquires refused with SURPOOL_ERR_OVERLOADED */
    uint64_t created;   /**< connections opened */
    uint64_t destroyed; /**< connections closed */
    uint64_t connect_failures;
    uint64_t handoffs;       /**< releases handed straight to a waiter */
    uint64_t broken;         /**< connections released or found broken */
    uint64_t requests;       /**< RPC requests completed (any outcome) */
    uint64_t request_errors; /**< RPC requests that ended in an error */
    uint64_t validations;    /**< validation and keepalive pings sent */
    uint64_t validation_failures;
    uint64_t reconnects; /**< connections opened to replace closed ones */
    uint64_t breaker_opens;
    uint64_t lifetime_retirements;
    uint64_t idle_retirements;
    uint64_t leaks;         /**< leases reported by leak detection */
    uint64_t resets;        /**< dirty leases restored on release */
    uint64_t lane_requests; /**< requests sent through the shared lane */
    int lane_connections;   /**< connections the lane holds now (counted in in_use) */
    int lane_inflight;      /**< lane requests in flight now */
    int lane_queued;        /**< lane requests waiting for capacity now */
    int breaker_open;       /**< 1 while the circuit is open */
    int paused;
    /** Acquire wait (successful acquires) and connect time, microseconds, from
     *  a fixed histogram (upper bound of the bucket, within 19%). */
    int64_t acquire_wait_p50_us, acquire_wait_p95_us, acquire_wait_p99_us, acquire_wait_max_us;
    int64_t connect_p50_us, connect_p95_us, connect_p99_us, connect_max_us;
    unsigned char reserved[192];
} surpool_stats;

/** Fill the first `struct_size` bytes of `out` with a consistent snapshot
 *  (taken under the pool lock); bytes past this library's surpool_stats are
 *  zeroed; out->struct_size says how many bytes were filled. Call it through
 *  the macro surpool_pool_stats(pool, out), which passes
 *  sizeof(surpool_stats) as this header defines it.
 *  @return SURPOOL_OK or SURPOOL_ERR_INVALID_ARG (NULL pool or out, or
 *          struct_size smaller than a size_t).
 *  Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_pool_stats_sized(surpool_pool *pool, surpool_stats *out,
                                                 size_t struct_size);

/** surpool_pool_stats_sized() with the 0.1.0 size: the symbol binaries built
 *  before the macro existed call. */
SURPOOL_API surpool_err surpool_pool_stats(surpool_pool *pool, surpool_stats *out);
#define surpool_pool_stats(pool, out)                                                          \
    surpool_pool_stats_sized((pool), (out), sizeof(surpool_stats))

/** One node's share of the pool (docs/cluster.md). Summed over the nodes,
 *  connections = stats.idle + stats.in_use, in_use = stats.in_use, connecting =
 *  stats.connecting, connects = stats.created and connect_failures =
 *  stats.connect_failures. Same struct_size rule as surpool_stats. */
typedef struct surpool_endpoint_stats {
    size_t struct_size; /**< set by the call: bytes filled in */
    int index;          /**< 0-based position in the pool's node list */
    int port;
    char host[256];            /**< as written in the URL (IPv6 without brackets) */
    int connections;           /**< open connections to this node (idle and in use) */
    int in_use;                /**< of which leased (lane connections included) */
    int connecting;            /**< connects to it in progress */
    int breaker_open;          /**< 1 while its circuit is open */
    int consecutive_failures;  /**< failed connects in a row (0 after a success) */
    uint64_t connects;         /**< connections opened to it */
    uint64_t connect_failures; /**< connects to it that failed */
    uint64_t breaker_opens;
    uint64_t retired_rebalance; /**< idle connections retired by rebalance */
    char last_error[200];       /**< the last connect error's message (printable,
                                     no secrets), "" when none */
    unsigned char reserved[64];
} surpool_endpoint_stats;

/** How many nodes the pool has (1 for a single-host URL); 0 for NULL.
 *  Thread safety: Any thread. */
SURPOOL_API int surpool_pool_endpoint_count(surpool_pool *pool);

/** Fill the first `struct_size` bytes of `out` with a snapshot of node `index`
 *  (0-based, < surpool_pool_endpoint_count()), taken under the pool lock. Call
 *  it through the macro surpool_pool_endpoint_stats(pool, index, out).
 *  @return SURPOOL_OK or SURPOOL_ERR_INVALID_ARG (NULL pool or out, index out
 *          of range, struct_size smaller than a size_t).
 *  Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_pool_endpoint_stats_sized(surpool_pool *pool, int index,
                                                          surpool_endpoint_stats *out,
                                                          size_t struct_size);
#define surpool_pool_endpoint_stats(pool, index, out)                                          \
    surpool_pool_endpoint_stats_sized((pool), (index), (out), sizeof(surpool_endpoint_stats))

/** The node a lease is connected to: its 0-based index in the pool's node
 *  list (surpool_pool_endpoint_stats() names it); -1 for NULL, a stale lease
 *  handle (released, discarded) or one in a call on another thread.
 *  Thread safety: the lease holder's thread (one thread at a time per handle). */
SURPOOL_API int surpool_conn_endpoint(const surpool_conn *conn);

/* ------------------------------------------------------------------------- */
/* Leased connections                                                         */
/* ------------------------------------------------------------------------- */

/** Give a lease back. If callers wait, the connection goes straight to the
 *  oldest; a broken connection is closed and its slot goes to the oldest waiter
 *  to open a replacement. `conn` must not be used afterwards. NULL is a no-op.
 *  Releasing a lease twice is a programming error the pool detects and
 *  ignores: the second call changes nothing (no stats, no second handoff),
 *  also when two threads release it at once, and also after the pool has
 *  lent the connection again (the handle names the lease, not the
 *  connection: the new borrower's lease is never touched). It logs an ERROR
 *  line through the pool's log_fn while the connection is open or recently
 *  closed (the pool keeps its last closed connections a while); the handle
 *  of one closed long ago, or of a destroyed pool, is ignored silently. A
 *  release while another thread is inside a call on the same lease
 *  (forbidden: one thread at a time per handle) is refused with an ERROR
 *  line and the lease stays open; release it once that call has returned.
 *  Thread safety: Any thread (the one holding the lease). */
SURPOOL_API void surpool_conn_release(surpool_conn *conn);

/** Mark a lease as not to be reused (e.g. after an abandoned transaction): it
 *  is closed on release instead of returning to the pool. A stale handle
 *  (its lease ended) is a no-op logged at ERROR, as in surpool_conn_release();
 *  it never marks the connection's next lease.
 *  Thread safety: One thread at a time per handle. */
SURPOOL_API void surpool_conn_discard(surpool_conn *conn);

/** The message of the last call on this lease: the same text that call put in
 *  its err->message (also when it was given err = NULL), "" when it succeeded
 *  or before the first call. Valid until the next call on the lease or its
 *  release. Never NULL; "" for a NULL conn; a fixed text saying so for a stale
 *  handle (its lease ended) or one in a call on another thread.
 *  Thread safety: One thread at a time per handle. */
SURPOOL_API const char *surpool_conn_last_error(const surpool_conn *conn);

/** Give the lease's following calls their own deadline instead of the pool's
 *  request_timeout_ms, until it is set again or the lease is released (the
 *  next borrower starts from the pool's). A lease is one thread's handle, so
 *  the setting lives on it; calls on the shared pool take theirs per call
 *  (surpool_call_options). Past the deadline a call returns
 *  SURPOOL_ERR_REQUEST_TIMEOUT, never before, and the lease is broken as with
 *  any request timeout.
 *  @param timeout_ms  > 0: milliseconds per call (at most 365 days); 0: no
 *                     deadline; < 0: back to the pool's request_timeout_ms.
 *  @return SURPOOL_OK; SURPOOL_ERR_INVALID_ARG (NULL or stale conn, or more
 *          than 365 days).
 *  Thread safety: One thread at a time per handle. */
SURPOOL_API surpool_err surpool_conn_set_timeout(surpool_conn *conn, long timeout_ms);

/** Send any RPC method with raw params and return its `result`.
 *  @param method  lowercase method name, e.g. "query"; required.
 *  @param params  a JSON array, or NULL for []; borrowed. Every string and key in
 *                 it must be valid UTF-8 and it may nest at most 2048 levels
 *                 (no reference cycles), else SURPOOL_ERR_INVALID_ARG, unsent.
 *  @param out     receives the result (new reference); may be NULL to ignore it.
 *  @return SURPOOL_OK; SURPOOL_ERR_SERVER / _AUTH (the server answered with an
 *          error; see err->server_code/kind/message); SURPOOL_ERR_REQUEST_TIMEOUT;
 *          SURPOOL_ERR_DISCONNECTED; SURPOOL_ERR_PROTOCOL; SURPOOL_ERR_TOO_LARGE;
 *          SURPOOL_ERR_BROKEN; SURPOOL_ERR_INVALID_ARG; SURPOOL_ERR_NOMEM.
 *  Transport failures mark the lease broken: it is replaced on release.
 *  Every RPC on a lease made from inside a surpool_result_fn returns
 *  SURPOOL_ERR_INVALID_ARG at once, sending nothing: it would wait for a reply
 *  only the callback's own thread can deliver. So does every surpool_conn_*
 *  call on a stale handle (its lease ended: "connection handle already
 *  released") or on a lease another thread is calling on at that moment.
 *  Thread safety: One thread at a time per handle. */
SURPOOL_API surpool_err surpool_conn_call(surpool_conn *conn, const char *method,
                                          const json_t *params, json_t **out,
                                          surpool_error *err);

/** Run SurrealQL. `*out` is the server's per-statement array: each element is
 *  {"status":"OK"|"ERR","result":...,"time":...}. A statement that fails inside
 *  a successful query is NOT an error of this call: check each status (or use
 *  surpool_query_check()). A query that does not parse is SURPOOL_ERR_SERVER.
 *  @param sql   required, non-empty.
 *  @param vars  a JSON object of variables ($name), or NULL; borrowed.
 *  Returns as surpool_conn_call(). Thread safety: One thread at a time per handle. */
SURPOOL_API surpool_err surpool_conn_query(surpool_conn *conn, const char *sql,
                                           const json_t *vars, json_t **out,
                                           surpool_error *err);

/* ------------------------------------------------------------------------- */
/* The shared lane: pool-level calls without a lease                          */
/*                                                                            */
/* Independent requests do not need a connection of their own. The shared     */
/* lane keeps up to config.shared_connections connections (leased from the    */
/* pool, so they count against max_connections) and sends each pool-level     */
/* call on the least-loaded one, up to config.shared_max_inflight requests in  */
/* flight per socket; the server runs them concurrently and replies are       */
/* matched by id. Requests beyond that capacity queue in FIFO order. Lane      */
/* connections only ever carry lane calls and are never given a session       */
/* change: methods that change session state (use, signin, let, ...) are      */
/* refused with SURPOOL_ERR_INVALID_ARG here; lease a connection for those,   */
/* and for transactions. With shared_connections = 0 these calls lease a      */
/* connection for each request instead.                                      */
/* ------------------------------------------------------------------------- */

/** Run SurrealQL on the shared lane and wait for the reply. `*out` as
 *  surpool_conn_query(). Returns as surpool_conn_query(), plus
 *  SURPOOL_ERR_CLOSED, and the acquire errors (with the server's code and kind
 *  when connection setup failed) while the lane opens its connections. The
 *  deadline is request_timeout_ms from the call, queueing and waiting for a
 *  lane connection included (SURPOOL_ERR_REQUEST_TIMEOUT). Called from inside
 *  a surpool_result_fn it returns SURPOOL_ERR_INVALID_ARG at once, sending
 *  nothing (it would deadlock).
 *  Thread safety: Any thread. Not from a surpool callback. */
SURPOOL_API surpool_err surpool_query(surpool_pool *pool, const char *sql, const json_t *vars,
                                      json_t **out, surpool_error *err);

/** Any RPC method on the shared lane (not the session-changing ones). Returns
 *  as surpool_query(), SURPOOL_ERR_INVALID_ARG from inside a callback included.
 *  Thread safety: Any thread. Not from a surpool callback. */
SURPOOL_API surpool_err surpool_call(surpool_pool *pool, const char *method,
                                     const json_t *params, json_t **out, surpool_error *err);

/** Options of one pool-level call (the *_opts variants below). A value type:
 *  start from surpool_call_options_init(), then set what you need. A NULL
 *  options pointer means the defaults. */
typedef struct surpool_call_options {
    /** This call's deadline, counted from the call, queueing and waiting for a
     *  lane connection included: > 0 milliseconds (at most 365 days), 0 none,
     *  < 0 (the default) the pool's request_timeout_ms. It replaces
     *  request_timeout_ms for this call only, longer or shorter. */
    long timeout_ms;
    unsigned char reserved[56]; /**< room to grow; keep zero (the init does) */
} surpool_call_options;

/** Fill `opts` with the defaults (timeout_ms = -1, the rest zero). NULL is a
 *  no-op. Thread safety: Any thread. */
SURPOOL_API void surpool_call_options_init(surpool_call_options *opts);

/** surpool_query() with options (NULL: as surpool_query()). Past the call's
 *  deadline it returns SURPOOL_ERR_REQUEST_TIMEOUT, never before. Returns as
 *  surpool_query(), plus SURPOOL_ERR_INVALID_ARG for a timeout_ms above 365
 *  days. Without a lane (shared_connections = 0) the deadline covers the
 *  acquire and the call on the connection leased for it.
 *  Thread safety: Any thread. Not from a surpool callback. */
SURPOOL_API surpool_err surpool_query_opts(surpool_pool *pool, const char *sql,
                                           const json_t *vars, const surpool_call_options *opts,
                                           json_t **out, surpool_error *err);

/** surpool_call() with options, as surpool_query_opts().
 *  Thread safety: Any thread. Not from a surpool callback. */
SURPOOL_API surpool_err surpool_call_opts(surpool_pool *pool, const char *method,
                                          const json_t *params,
                                          const surpool_call_options *opts, json_t **out,
                                          surpool_error *err);

/** Completion of an asynchronous call. Called exactly once per accepted call,
 *  on a surpool thread, never with a pool lock held: when the call reached the
 *  server (a reply, a transport error, its deadline, its socket dying, destroy
 *  closing its socket), on the pool's lane delivery thread, which decodes the
 *  reply and runs these callbacks one at a time in the order the requests
 *  completed (never on the service thread that moves every connection's bytes,
 *  so neither a big reply nor a slow callback holds up the pool's I/O, but a
 *  slow callback delays the callbacks behind it); when it never left the
 *  queue, on the thread that failed it (see surpool_query_async()).
 *  The decoded result is freed when the callback returns, on that thread. `result` (the RPC result, NULL unless code == SURPOOL_OK)
 *  and `err` are BORROWED: valid during the callback only; json_incref()
 *  `result` to keep it. The callback must not block: it may call
 *  surpool_query_async()/surpool_call_async() again, on this pool or another
 *  (they never block), but no synchronous surpool function: surpool_query(),
 *  surpool_call(), acquire and RPCs on a lease return SURPOOL_ERR_INVALID_ARG
 *  at once there instead of deadlocking. */
typedef void (*surpool_result_fn)(void *userdata, surpool_err code, json_t *result,
                                  const surpool_error *err);

/** Queue SurrealQL on the shared lane and return at once. If this returns
 *  SURPOOL_OK, `cb` is called exactly once (success or failure): usually later
 *  on the lane's delivery thread, but possibly before this returns (the send
 *  was refused), on the lane's own threads (its deadline passed while queued;
 *  the lane could get no connection) or on a thread calling
 *  surpool_pool_close()/destroy() (CLOSED, for requests still queued). If it returns an error (bad argument, pool closed, out of
 *  memory), `cb` is never called. Once surpool_pool_close() or
 *  surpool_pool_destroy() has begun it returns SURPOOL_ERR_CLOSED, also when
 *  called from a callback that destroy is completing. The deadline is request_timeout_ms from now,
 *  queueing included. Needs a lane: shared_connections > 0 and
 *  max_connections > 1 (else SURPOOL_ERR_INVALID_ARG).
 *  Thread safety: Any thread, including from a surpool_result_fn. */
SURPOOL_API surpool_err surpool_query_async(surpool_pool *pool, const char *sql,
                                            const json_t *vars, surpool_result_fn cb,
                                            void *userdata);

/** surpool_query_async() for any lane method (as surpool_call()).
 *  Thread safety: Any thread, including from a surpool_result_fn. */
SURPOOL_API surpool_err surpool_call_async(surpool_pool *pool, const char *method,
                                           const json_t *params, surpool_result_fn cb,
                                           void *userdata);

/** surpool_query_async() with options (NULL: as surpool_query_async()): the
 *  callback gets SURPOOL_ERR_REQUEST_TIMEOUT once opts->timeout_ms has passed
 *  since this call, queueing included. A timeout_ms above 365 days is
 *  SURPOOL_ERR_INVALID_ARG (the callback is not called).
 *  Thread safety: Any thread, including from a surpool_result_fn. */
SURPOOL_API surpool_err surpool_query_async_opts(surpool_pool *pool, const char *sql,
                                                 const json_t *vars,
                                                 const surpool_call_options *opts,
                                                 surpool_result_fn cb, void *userdata);

/** surpool_call_async() with options, as surpool_query_async_opts().
 *  Thread safety: Any thread, including from a surpool_result_fn. */
SURPOOL_API surpool_err surpool_call_async_opts(surpool_pool *pool, const char *method,
                                                const json_t *params,
                                                const surpool_call_options *opts,
                                                surpool_result_fn cb, void *userdata);

/** If `result` (a query reply) holds a statement whose status is not "OK",
 *  return SURPOOL_ERR_SERVER with the first such statement's index, message
 *  and kind in `err`; else SURPOOL_OK. In a failed transaction the server marks
 *  the statements it skipped "not executed due to a failed transaction": then
 *  `err` names the statement that actually failed (the THROW, the failing
 *  CREATE, ...) with its message and kind, e.g. "statement 2 failed the
 *  transaction (statement 1 was not executed): An error occurred: boom".
 *  SURPOOL_ERR_PROTOCOL if `result` is not a query reply (not an array, or a
 *  statement without a status). `result` is borrowed.
 *  Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_query_check(const json_t *result, surpool_error *err);

/** The result of statement `i` (0-based, in reply order) of a query reply.
 *  @param reply  what surpool_conn_query()/surpool_query() returned; borrowed.
 *  @param out    receives the statement's `result` as a NEW reference (release it
 *                with json_decref()), set only on SURPOOL_OK.
 *  @return SURPOOL_OK; SURPOOL_ERR_SERVER if that statement failed (`err` as
 *          surpool_query_check() fills it for that statement, the real cause
 *          included when it was skipped by a failed transaction);
 *          SURPOOL_ERR_INVALID_ARG (out is NULL, or `i` is past the last
 *          statement); SURPOOL_ERR_PROTOCOL (`reply` is not a query reply).
 *  Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_query_result(const json_t *reply, size_t i, json_t **out,
                                             surpool_error *err);

/* ------------------------------------------------------------------------- */
/* RPC methods on a lease                                                     */
/*                                                                            */
/* Every function below: `conn` is a lease (One thread at a time per handle); */
/* `out` (may be NULL to ignore it) receives the method's result as a NEW      */
/* reference on SURPOOL_OK; json_t arguments are borrowed; bad arguments      */
/* return SURPOOL_ERR_INVALID_ARG before anything is sent; other returns as   */
/* surpool_conn_call(). Every string argument, and every string and object    */
/* key inside a json_t argument, must be valid UTF-8 (strict: no surrogates,  */
/* no overlong forms, nothing above U+10FFFF), else SURPOOL_ERR_INVALID_ARG    */
/* (see docs/errors.md). "thing" is a table name ("person") or a record id     */
/* ("person:tobie"): the server parses it (see docs/json-values.md).          */
/* Calls that change session state (use, signin, signup, authenticate,        */
/* invalidate, let, unset, and raw reset, begin, live, attach, detach) make   */
/* the lease "dirty": on release it is reset to the configured state (reset,  */
/* signin, use, init_sql, on_connect, on the releasing thread) before anyone  */
/* else gets it, or closed if that fails or config.close_dirty_leases is set.  */
/* Session changes made inside SurrealQL (a USE statement) are not seen: call */
/* surpool_conn_discard() before releasing such a lease.                      */
/* ------------------------------------------------------------------------- */

/** `ping`: a round trip. */
SURPOOL_API surpool_err surpool_conn_ping(surpool_conn *conn, surpool_error *err);

/** `version`: the server's version string, e.g. "surrealdb-3.0.3". */
SURPOOL_API surpool_err surpool_conn_version(surpool_conn *conn, json_t **out,
                                             surpool_error *err);

/** `use`: select namespace and database. `ns` is required; `db` may be NULL to
 *  keep the namespace only. (db without ns is refused: it crashes 3.0 servers.) */
SURPOOL_API surpool_err surpool_conn_use(surpool_conn *conn, const char *ns, const char *db,
                                         surpool_error *err);

/** Credentials for surpool_conn_signin(). Zero-initialise, then set:
 *  root user: user+pass; namespace user: + ns; database user: + ns + db;
 *  record access: ns + db + access, with the access method's variables in
 *  `vars` (and/or user/pass, sent as "user"/"pass"). */
typedef struct surpool_credentials {
    const char *user;
    const char *pass;
    const char *ns;
    const char *db;
    const char *access;      /**< record access method name ("ac") */
    const json_t *vars;      /**< extra signin fields, a JSON object, or NULL */
    const void *reserved[4]; /**< keep NULL */
} surpool_credentials;

/** `signin`. `out` receives the token (a JSON string). Wrong credentials:
 *  SURPOOL_ERR_AUTH. */
SURPOOL_API surpool_err surpool_conn_signin(surpool_conn *conn, const surpool_credentials *cred,
                                            json_t **out, surpool_error *err);

/** `signup` through record access `access` on ns/db with the method's
 *  variables `vars` (a JSON object). `out` receives the token. */
SURPOOL_API surpool_err surpool_conn_signup(surpool_conn *conn, const char *ns, const char *db,
                                            const char *access, const json_t *vars,
                                            json_t **out, surpool_error *err);

/** `authenticate` with a JWT. */
SURPOOL_API surpool_err surpool_conn_authenticate(surpool_conn *conn, const char *token,
                                                  surpool_error *err);

/** `invalidate`: drop the lease's authentication. */
SURPOOL_API surpool_err surpool_conn_invalidate(surpool_conn *conn, surpool_error *err);

/** `let`: define session variable `name` (letters, digits, _; no '$'). */
SURPOOL_API surpool_err surpool_conn_let(surpool_conn *conn, const char *name,
                                         const json_t *value, surpool_error *err);

/** `unset`: remove session variable `name`. */
SURPOOL_API surpool_err surpool_conn_unset(surpool_conn *conn, const char *name,
                                           surpool_error *err);

/** `select [thing]`. */
SURPOOL_API surpool_err surpool_conn_select(surpool_conn *conn, const char *thing, json_t **out,
                                            surpool_error *err);

/** `create [thing, data?]`; `data` an object or NULL. */
SURPOOL_API surpool_err surpool_conn_create(surpool_conn *conn, const char *thing,
                                            const json_t *data, json_t **out,
                                            surpool_error *err);

/** `insert [table, data]`; `data` an object or an array of objects. */
SURPOOL_API surpool_err surpool_conn_insert(surpool_conn *conn, const char *table,
                                            const json_t *data, json_t **out,
                                            surpool_error *err);

/** `update [thing, data?]`: replaces the content. */
SURPOOL_API surpool_err surpool_conn_update(surpool_conn *conn, const char *thing,
                                            const json_t *data, json_t **out,
                                            surpool_error *err);

/** `upsert [thing, data?]`: creates or replaces. */
SURPOOL_API surpool_err surpool_conn_upsert(surpool_conn *conn, const char *thing,
                                            const json_t *data, json_t **out,
                                            surpool_error *err);

/** `merge [thing, data]`: merges `data` (an object) into the record(s). */
SURPOOL_API surpool_err surpool_conn_merge(surpool_conn *conn, const char *thing,
                                           const json_t *data, json_t **out,
                                           surpool_error *err);

/** `patch [thing, ops, diff]`: JSON Patch `ops` (an array); `diff` non-zero
 *  asks for the applied diff instead of the records. */
SURPOOL_API surpool_err surpool_conn_patch(surpool_conn *conn, const char *thing,
                                           const json_t *ops, int diff, json_t **out,
                                           surpool_error *err);

/** `delete [thing]`. */
SURPOOL_API surpool_err surpool_conn_delete(surpool_conn *conn, const char *thing, json_t **out,
                                            surpool_error *err);

/** `relate [from, table, to, data?]`: a graph edge `from->table->to`. */
SURPOOL_API surpool_err surpool_conn_relate(surpool_conn *conn, const char *from,
                                            const char *table, const char *to,
                                            const json_t *data, json_t **out,
                                            surpool_error *err);

/** `run [fn, version, args]`: call a function ("fn::name" or a built-in such as
 *  "string::len"); `version` may be NULL; `args` an array or NULL. */
SURPOOL_API surpool_err surpool_conn_run(surpool_conn *conn, const char *fn,
                                         const char *version, const json_t *args, json_t **out,
                                         surpool_error *err);

/** `info`: the record of the signed-in record user (errors for system users on
 *  some servers). */
SURPOOL_API surpool_err surpool_conn_info(surpool_conn *conn, json_t **out, surpool_error *err);

/* ------------------------------------------------------------------------- */
/* Interactive transactions on a lease (SurrealDB 3.x)                        */
/*                                                                            */
/* Between surpool_conn_begin() and surpool_conn_commit()/_cancel(), every     */
/* call on the lease (query, CRUD, call, ...) runs inside the transaction:    */
/* its writes are seen by the lease's later calls and by nobody else until    */
/* commit; cancel drops them. One transaction at a time per lease. Releasing  */
/* a lease with a transaction open cancels it (docs/lifecycle.md): the next   */
/* borrower never inherits it, and if the cancel fails the connection is      */
/* closed rather than lent. The server's major version is asked once per     */
/* connection (`version`, the first time begin needs it): on SurrealDB 2.x    */
/* (and older) surpool_conn_begin() returns SURPOOL_ERR_UNSUPPORTED without   */
/* sending `begin`. Do not send begin, commit or cancel through              */
/* surpool_conn_call(): the lease would not know about the transaction.       */
/* Same rules as the RPC methods above.                                       */
/* ------------------------------------------------------------------------- */

/** `begin`: open an interactive transaction on the lease.
 *  @return SURPOOL_OK; SURPOOL_ERR_INVALID_ARG (a transaction is already open
 *          on this lease; nothing sent); SURPOOL_ERR_UNSUPPORTED (the server
 *          is older than 3.0: it has no interactive transactions); otherwise
 *          as surpool_conn_call() (SURPOOL_ERR_PROTOCOL if the reply is not a
 *          transaction id: the lease is then broken).
 *  Thread safety: One thread at a time per handle. */
SURPOOL_API surpool_err surpool_conn_begin(surpool_conn *conn, surpool_error *err);

/** `commit`: make the open transaction's writes visible to everyone. Whatever
 *  the outcome the lease is out of the transaction afterwards (a failed commit
 *  leaves nothing behind on the server).
 *  @return SURPOOL_OK; SURPOOL_ERR_INVALID_ARG (no transaction open on this
 *          lease; nothing sent); SURPOOL_ERR_SERVER with the server's code,
 *          kind and message when the commit failed, e.g. a write conflict with
 *          another transaction (3.0: kind "Internal", "Transaction conflict:
 *          ... This transaction can be retried"): nothing was written, begin
 *          again and retry; otherwise as surpool_conn_call().
 *  Thread safety: One thread at a time per handle. */
SURPOOL_API surpool_err surpool_conn_commit(surpool_conn *conn, surpool_error *err);

/** `cancel`: drop the open transaction and its writes. The lease is out of
 *  the transaction afterwards, whatever the outcome.
 *  @return as surpool_conn_commit().
 *  Thread safety: One thread at a time per handle. */
SURPOOL_API surpool_err surpool_conn_cancel(surpool_conn *conn, surpool_error *err);

/* ------------------------------------------------------------------------- */
/* Sessions (SurrealDB 3.x; docs/sessions.md)                                 */
/*                                                                            */
/* A session is a server-side session of its own (authentication, namespace  */
/* and database, variables; the data is shared) riding one of the shared      */
/* lane's sockets: many sessions, a few sockets. Each session keeps a copy of */
/* its state, and when its socket dies it is rebuilt on another one before   */
/* its next call (attach, authenticate with its token or sign in again with  */
/* its stored credentials, use, let). A call in flight when the socket dies  */
/* returns SURPOOL_ERR_DISCONNECTED (it may or may not have run).            */
/* Interactive transactions and live queries are not available on a session */
/* (they cannot move to another socket): lease a connection for a            */
/* transaction, use surpool_live_start() for a live query.                   */
/* Needs a lane (shared_connections > 0). On SurrealDB 2.x, which has no     */
/* sessions, surpool_session_open() returns SURPOOL_ERR_UNSUPPORTED.          */
/* Results, errors and ownership as surpool_call(): `out` (may be NULL)      */
/* receives a NEW reference on SURPOOL_OK; json_t arguments are borrowed.    */
/* Thread safety of every function below: one thread at a time per session   */
/* (different sessions may be used from different threads at once); not from */
/* a surpool callback (SURPOOL_ERR_INVALID_ARG at once there); none may race */
/* surpool_pool_destroy() of its pool (finish the calls first; after it they */
/* return SURPOOL_ERR_CLOSED).                                               */
/* ------------------------------------------------------------------------- */

typedef struct surpool_session surpool_session;

/** How surpool_session_open() sets a session up. A value type: start from
 *  surpool_session_options_init(). Strings and values are copied by open. */
typedef struct surpool_session_options {
    const char *ns; /**< namespace to `use` after authenticating, or NULL (a new
                         session starts with none selected) */
    const char *db; /**< database (needs ns), or NULL */
    /** At most one of the three below (none: the session stays anonymous). */
    const surpool_credentials *signin; /**< sign in with these; kept (a secret, wiped
                                            at close) to sign in again when the token
                                            has expired by a rebuild */
    const char *signup_access;         /**< record access: sign up through this access
                                    method on ns/db with `signup_vars`; those are
                                    then kept as the session's sign-in parameters */
    const json_t *signup_vars;         /**< a JSON object, or NULL */
    const char *token;                 /**< authenticate with this token (no sign-in again) */
    long timeout_ms;            /**< each call's deadline, as surpool_call_options.timeout_ms
                          (< 0, the default: request_timeout_ms); a rebuild's calls
                          each get one too */
    unsigned char reserved[64]; /**< room to grow; keep zero (the init does) */
} surpool_session_options;

/** Fill `opts` with the defaults (everything NULL, timeout_ms = -1). NULL is a
 *  no-op. Thread safety: Any thread. */
SURPOOL_API void surpool_session_options_init(surpool_session_options *opts);

/** Open a session on the pool: attach it on the lane socket carrying the
 *  fewest sessions (the lane grows to shared_connections sockets to spread
 *  them), authenticate it as `opts` says, then `use` ns/db.
 *  @param opts  NULL: an anonymous session with nothing selected.
 *  @param out   receives the session (close it with surpool_session_close()),
 *               set only on SURPOOL_OK, else NULL.
 *  @return SURPOOL_OK; SURPOOL_ERR_INVALID_ARG (NULL pool/out, bad options, more
 *          than one authentication, no lane); SURPOOL_ERR_UNSUPPORTED (the
 *          server has no sessions: SurrealDB 2.x); SURPOOL_ERR_AUTH (the server
 *          refused the credentials or token: nothing is left open);
 *          SURPOOL_ERR_CLOSED; SURPOOL_ERR_NOMEM; the errors of surpool_call().
 *  Thread safety: Any thread. Not from a surpool callback. */
SURPOOL_API surpool_err surpool_session_open(surpool_pool *pool,
                                             const surpool_session_options *opts,
                                             surpool_session **out, surpool_error *err);

/** Detach the session on the server (best effort: when its socket is gone the
 *  server ended it already) and free it, its stored secrets wiped. NULL is a
 *  no-op. After surpool_pool_destroy() it only frees (sessions outlive the pool
 *  as handles: every call on them returns SURPOOL_ERR_CLOSED).
 *  Thread safety: as the session's other calls; must not race with
 *  surpool_pool_destroy(). */
SURPOOL_API void surpool_session_close(surpool_session *session);

/** The session's id (UUID text, the `session` field of its requests), valid
 *  until surpool_session_close(); "" for NULL. Thread safety: Any thread. */
SURPOOL_API const char *surpool_session_id(const surpool_session *session);

/** Any RPC method in the session, rebuilding it first if its socket died.
 *  Refused with SURPOOL_ERR_INVALID_ARG (nothing sent): attach, detach,
 *  sessions, reset, begin, commit, cancel, live, kill; let, unset, use, signin,
 *  signup and authenticate whose params do not have the method's shape (the
 *  session keeps a copy of what they set).
 *  @return as surpool_call(), plus SURPOOL_ERR_CLOSED once the pool is closed
 *          or destroyed, and the errors of a rebuild (SURPOOL_ERR_AUTH when the
 *          session can no longer authenticate: its token expired and it has no
 *          credentials; the next call tries again). */
SURPOOL_API surpool_err surpool_session_call(surpool_session *session, const char *method,
                                             const json_t *params, json_t **out,
                                             surpool_error *err);

/** SurrealQL in the session; `vars` (a JSON object, or NULL) and `*out` as
 *  surpool_query(); returns as surpool_session_call(). */
SURPOOL_API surpool_err surpool_session_query(surpool_session *session, const char *sql,
                                              const json_t *vars, json_t **out,
                                              surpool_error *err);

/** `use` in the session (as surpool_conn_use()); kept for rebuilds. */
SURPOOL_API surpool_err surpool_session_use(surpool_session *session, const char *ns,
                                            const char *db, surpool_error *err);

/** `let`: set variable `name` (without `$`) to a copy of `value` in this
 *  session only, checked as surpool_conn_let() checks them; the copy is kept
 *  for rebuilds (it counts in the session's memory). */
SURPOOL_API surpool_err surpool_session_let(surpool_session *session, const char *name,
                                            const json_t *value, surpool_error *err);

/** `unset`: remove variable `name` (and the kept copy); `name` as for
 *  surpool_session_let(). */
SURPOOL_API surpool_err surpool_session_unset(surpool_session *session, const char *name,
                                              surpool_error *err);

/** `signin` in this session only (as surpool_conn_signin(); wrong credentials:
 *  SURPOOL_ERR_AUTH). On success the token and the credentials are kept for
 *  rebuilds (secrets, wiped when replaced and at close). */
SURPOOL_API surpool_err surpool_session_signin(surpool_session *session,
                                               const surpool_credentials *cred, json_t **out,
                                               surpool_error *err);

/** `signup` in this session only (as surpool_conn_signup()); the token and the
 *  parameters are kept as for surpool_session_signin(). */
SURPOOL_API surpool_err surpool_session_signup(surpool_session *session, const char *ns,
                                               const char *db, const char *access,
                                               const json_t *vars, json_t **out,
                                               surpool_error *err);

/** `authenticate` the session with a token; kept for rebuilds (stored
 *  credentials are forgotten: the token is the session's identity now). */
SURPOOL_API surpool_err surpool_session_authenticate(surpool_session *session,
                                                     const char *token, surpool_error *err);

/** `invalidate`: the session is anonymous again (token and credentials
 *  forgotten). */
SURPOOL_API surpool_err surpool_session_invalidate(surpool_session *session,
                                                   surpool_error *err);

/** Library version, "MAJOR.MINOR.PATCH". Thread safety: Any thread. */
SURPOOL_API const char *surpool_version(void);

/* ------------------------------------------------------------------------- */
/* Typed values (docs/values.md)                                              */
/* ------------------------------------------------------------------------- */

/* SurrealDB values that JSON has no type for travel inside json_t trees in one
 * reserved form: an object whose "$surreal" member names the type, e.g.
 *   {"$surreal":"record","tb":"person","id":1}
 *   {"$surreal":"datetime","value":"2024-01-01T00:00:00Z"}
 * Results decode into this form and parameters in this form are sent as that
 * type (over CBOR; over JSON they are sent as their text, see docs/values.md).
 * An object without a "$surreal" member is always a plain object. An object
 * with one that is malformed makes the call fail with SURPOOL_ERR_INVALID_ARG
 * before anything is sent. docs/values.md lists every type and its fields. */

/** The types of the reserved form. Values are explicit and append-only. */
typedef enum surpool_value_type {
    SURPOOL_VALUE_INVALID = -1,      /**< has "$surreal" but no known type name */
    SURPOOL_VALUE_PLAIN = 0,         /**< not a typed value (any other json_t) */
    SURPOOL_VALUE_NONE = 1,          /**< NONE (absent), {"$surreal":"none"} */
    SURPOOL_VALUE_TABLE = 2,         /**< table name: "value" */
    SURPOOL_VALUE_RECORD = 3,        /**< record id: "tb" and "id" (or text "value") */
    SURPOOL_VALUE_UUID = 4,          /**< "value": canonical lower-case text */
    SURPOOL_VALUE_DECIMAL = 5,       /**< "value": decimal text */
    SURPOOL_VALUE_DATETIME = 6,      /**< "value": RFC 3339 UTC text */
    SURPOOL_VALUE_DURATION = 7,      /**< "value": SurrealQL duration text */
    SURPOOL_VALUE_BYTES = 8,         /**< "value": base64 text */
    SURPOOL_VALUE_SET = 9,           /**< "value": array */
    SURPOOL_VALUE_FUTURE = 10,       /**< "value": the future's body */
    SURPOOL_VALUE_RANGE = 11,        /**< "begin", "end": null or {"included"|"excluded": v} */
    SURPOOL_VALUE_FILE = 12,         /**< "bucket", "key" */
    SURPOOL_VALUE_POINT = 13,        /**< "value": [x, y] */
    SURPOOL_VALUE_LINE = 14,         /**< "value": array of points */
    SURPOOL_VALUE_POLYGON = 15,      /**< "value": array of lines */
    SURPOOL_VALUE_MULTIPOINT = 16,   /**< "value": array of points */
    SURPOOL_VALUE_MULTILINE = 17,    /**< "value": array of lines */
    SURPOOL_VALUE_MULTIPOLYGON = 18, /**< "value": array of polygons */
    SURPOOL_VALUE_COLLECTION = 19,   /**< "value": array of geometries */
    SURPOOL_VALUE_BIGINT = 20,       /**< "value": integer text outside int64 */
    SURPOOL_VALUE_FLOAT = 21,        /**< "value": "NaN", "Infinity" or "-Infinity" */
    SURPOOL_VALUE_OBJECT = 22,       /**< "value": an object that has its own "$surreal" key */
    SURPOOL_VALUE_TAG = 23,          /**< unknown CBOR tag: "tag" (integer), "value" */
} surpool_value_type;

/** The type of v, from its "$surreal" member only (the other fields are not
 *  checked: surpool_value_check() does that). NULL → SURPOOL_VALUE_PLAIN.
 *  Thread safety: Any thread (v is only read). */
SURPOOL_API surpool_value_type surpool_value_type_of(const json_t *v);

/** The type's name as used under "$surreal" ("record", "datetime", ...);
 *  "plain" and "invalid" for those two. Static text, never NULL.
 *  Thread safety: Any thread. */
SURPOOL_API const char *surpool_value_type_name(surpool_value_type type);

/** Check that every typed value anywhere in v is well-formed, as a call would
 *  before sending v. v is borrowed.
 *  @return SURPOOL_OK; SURPOOL_ERR_INVALID_ARG with a message naming the
 *          problem; SURPOOL_ERR_NOMEM. Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_value_check(const json_t *v, surpool_error *err);

/** NONE. *out: a new reference. @return SURPOOL_OK or SURPOOL_ERR_NOMEM.
 *  Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_value_none(json_t **out, surpool_error *err);

/** A table name (any non-empty UTF-8 text, sent as is). *out: a new reference.
 *  @return SURPOOL_OK; SURPOOL_ERR_INVALID_ARG (NULL or empty name, invalid
 *  UTF-8); SURPOOL_ERR_NOMEM. Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_value_table(const char *name, json_t **out, surpool_error *err);

/** A record id from its table and its id: a string (sent as is, never parsed),
 *  an integer, an array, a plain object, a typed UUID or a typed range. id is
 *  borrowed (deep-copied). *out: a new reference.
 *  @return SURPOOL_OK; SURPOOL_ERR_INVALID_ARG; SURPOOL_ERR_NOMEM.
 *  Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_value_record(const char *table, const json_t *id, json_t **out,
                                             surpool_error *err);

/** Parse "table" or "table:id" text by SurrealQL's rules (docs/values.md,
 *  "Thing text"): "table" gives a table, "table:id" a record id whose id is an
 *  integer (digits that fit int64, so "person:01" has the id 1), an identifier
 *  ([A-Za-z0-9_]+, not all digits) as a string, ⟨…⟩ or `…` escaped text as a
 *  string, or u'…' / u"…" as a UUID. *out: a new reference.
 *  @return SURPOOL_OK; SURPOOL_ERR_INVALID_ARG (anything else, e.g. array,
 *  object or range ids: build those with surpool_value_record()); NOMEM.
 *  Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_value_thing(const char *text, json_t **out, surpool_error *err);

/** A UUID from its 36-character text (either case; stored lower case).
 *  *out: a new reference. @return SURPOOL_OK; SURPOOL_ERR_INVALID_ARG;
 *  SURPOOL_ERR_NOMEM. Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_value_uuid(const char *text, json_t **out, surpool_error *err);

/** A decimal from its text ([+-]digits[.digits][e[+-]digits]), kept exactly
 *  as given. *out: a new reference. @return SURPOOL_OK;
 *  SURPOOL_ERR_INVALID_ARG; SURPOOL_ERR_NOMEM. Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_value_decimal(const char *text, json_t **out,
                                              surpool_error *err);

/** A datetime from RFC 3339 text ("2024-01-01", "2024-01-01T10:00:00.5+02:00"),
 *  stored as canonical UTC text ("2024-01-01T08:00:00.500Z"). Years 0000-9999.
 *  *out: a new reference. @return SURPOOL_OK; SURPOOL_ERR_INVALID_ARG;
 *  SURPOOL_ERR_NOMEM. Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_value_datetime(const char *text, json_t **out,
                                               surpool_error *err);

/** A datetime from seconds since the Unix epoch and nanoseconds (< 10^9).
 *  *out: a new reference. @return SURPOOL_OK; SURPOOL_ERR_INVALID_ARG (nanos
 *  out of range, year outside 0000-9999); SURPOOL_ERR_NOMEM.
 *  Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_value_datetime_unix(int64_t secs, uint32_t nanos, json_t **out,
                                                    surpool_error *err);

/** The seconds and nanoseconds of a typed datetime (either may be NULL).
 *  @return SURPOOL_OK or SURPOOL_ERR_INVALID_ARG (not a valid datetime).
 *  Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_value_datetime_get(const json_t *v, int64_t *secs,
                                                   uint32_t *nanos, surpool_error *err);

/** A duration from SurrealQL text ("1h30m", "1y2w3d4h5m6s7ms8us9ns", units y w
 *  d h m s ms us µs ns), stored as SurrealDB prints it ("90m" → "1h30m").
 *  *out: a new reference. @return SURPOOL_OK; SURPOOL_ERR_INVALID_ARG;
 *  SURPOOL_ERR_NOMEM. Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_value_duration(const char *text, json_t **out,
                                               surpool_error *err);

/** Bytes (a CBOR byte string on the wire), copied; data may be NULL when len is
 *  0. *out: a new reference. @return SURPOOL_OK; SURPOOL_ERR_INVALID_ARG;
 *  SURPOOL_ERR_NOMEM. Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_value_bytes(const void *data, size_t len, json_t **out,
                                            surpool_error *err);

/** The table name of a typed record id ("tb"), or NULL when v is not one.
 *  Borrowed: valid while v is. Thread safety: Any thread. */
SURPOOL_API const char *surpool_value_record_table(const json_t *v);

/** The id of a typed record id ("id"), or NULL when v is not one (or holds the
 *  text form). Borrowed: valid while v is. Thread safety: Any thread. */
SURPOOL_API json_t *surpool_value_record_id(const json_t *v);

/** The text form of any value: a typed value's SurrealQL-style text
 *  ("person:tobie", "2024-01-01T00:00:00Z", "NONE", ...), a string itself, and
 *  the compact JSON text of anything else (typed values inside shown by their
 *  text). *out: a new reference to a JSON string.
 *  @return SURPOOL_OK; SURPOOL_ERR_INVALID_ARG (NULL or malformed typed value);
 *  SURPOOL_ERR_NOMEM. Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_value_text(const json_t *v, json_t **out, surpool_error *err);

/** A copy of v with every typed value replaced by plain JSON, for printing and
 *  logs: text forms as strings, NONE as null, sets as arrays, geometries as
 *  GeoJSON objects. Not meant to be sent back (types are lost).
 *  *out: a new reference. @return SURPOOL_OK; SURPOOL_ERR_INVALID_ARG;
 *  SURPOOL_ERR_NOMEM. Thread safety: Any thread. */
SURPOOL_API surpool_err surpool_value_to_plain(const json_t *v, json_t **out,
                                               surpool_error *err);

/* ------------------------------------------------------------------------- */
/* Live queries (docs/live.md)                                                */
/* ------------------------------------------------------------------------- */
/* A live query started on the pool, not on a lease: the pool carries it on a
 * connection of its own (authenticated and with ns/db as configured), starts
 * it again on another connection when that one dies or reaches
 * max_lifetime_ms, and delivers its notifications to a callback on the pool's
 * live delivery thread, in order, through a bounded queue. */

typedef struct surpool_live surpool_live;

/** What a live event says. Values are explicit and append-only. */
typedef enum surpool_live_event_type {
    SURPOOL_LIVE_CREATE = 1,       /**< a record was created: record_id, result */
    SURPOOL_LIVE_UPDATE = 2,       /**< a record was updated: record_id, result */
    SURPOOL_LIVE_DELETE = 3,       /**< a record was deleted: record_id, result (the
                                        record as it was, when the server sends it) */
    SURPOOL_LIVE_KILLED = 4,       /**< the server ended the live query by itself
                                        (CLOSED follows) */
    SURPOOL_LIVE_RESUBSCRIBED = 5, /**< its connection was lost and the live query was
                                        started again (a new live_id): changes made in
                                        between may have been missed */
    SURPOOL_LIVE_OVERFLOW = 6,     /**< `dropped` notifications were dropped here because
                                        the queue was full (the callback is too slow) */
    SURPOOL_LIVE_CLOSED = 7,       /**< the last event of the handle: nothing follows.
                                        `code`: SURPOOL_OK after surpool_live_kill() or
                                        a KILLED; SURPOOL_ERR_CLOSED at pool destroy;
                                        another error when it could not be started
                                        again (message says why) */
} surpool_live_event_type;

/** One event. Every pointer is borrowed for the duration of the callback
 *  (json_incref() a json_t, copy a string, to keep it). */
typedef struct surpool_live_event {
    surpool_live_event_type type;
    const char *live_id;     /**< the server's live query id this came through
                                  (lower-case UUID text); it changes on RESUBSCRIBED
                                  and on a move at max_lifetime_ms */
    const json_t *record_id; /**< CREATE/UPDATE/DELETE: the record's id (a typed
                                  record on CBOR pools, a string on JSON pools); else
                                  NULL. NULL too when the server's frame has none */
    const json_t *result;    /**< CREATE/UPDATE/DELETE: the record, or with DIFF the
                                  array of JSON Patch operations; else NULL. NULL too
                                  when the server's frame has none */
    uint64_t dropped;        /**< OVERFLOW: how many notifications were dropped */
    surpool_err code;        /**< CLOSED: why it ended; else SURPOOL_OK */
    const char *message;     /**< CLOSED/RESUBSCRIBED: a sentence; else "" */
    const void *reserved[4]; /**< NULL */
} surpool_live_event;

/** The live callback. Runs on the pool's live delivery thread, one event at a
 *  time for the whole pool, each live query's events in order; never on the
 *  thread that moves the pool's bytes. It must not block for long (every live
 *  query of the pool waits behind it; its own notifications queue up to the
 *  bound and then overflow). It may call surpool_live_kill() (of any handle,
 *  its own included), surpool_live_start(), the pool-level calls and leases;
 *  not surpool_pool_destroy() of this pool (refused: it would wait for its
 *  own thread). `live` is the handle the event is for. */
typedef void (*surpool_live_fn)(void *userdata, surpool_live *live,
                                const surpool_live_event *ev);

/** What to watch. A value type: start from surpool_live_options_init(). Set
 *  exactly one of `table` and `sql`. */
typedef struct surpool_live_options {
    const char *table;          /**< a table name: `live [table, diff]`; copied */
    const char *sql;            /**< one `LIVE SELECT ...` statement (DIFF, WHERE with
                                     $vars, FETCH as SurrealQL allows); copied */
    const json_t *vars;         /**< variables of `sql`, or NULL; deep-copied (kept to
                                     start it again after a reconnect) */
    int diff;                   /**< with `table`: 1 = notifications carry JSON Patch
                                     operations instead of the record; with `sql`
                                     write DIFF in the statement instead */
    int queue_max;              /**< notifications queued for this live query before
                                     they overflow; 0 = config.live_queue_max */
    unsigned char reserved[32]; /**< room to grow; keep zero (the init does) */
} surpool_live_options;

/** Fill `opts` with the defaults (all zero/NULL). NULL is a no-op.
 *  Thread safety: Any thread. */
SURPOOL_API void surpool_live_options_init(surpool_live_options *opts);

/** Start a live query on the pool. Blocks until the server answered: on a
 *  connection the pool keeps for live queries (taking one from the pool when
 *  none has room: up to acquire_timeout_ms), then the `live` or `query` RPC
 *  (up to request_timeout_ms, or connect_timeout_ms when that is 0).
 *  @param opts      what to watch; borrowed (strings and vars are copied).
 *  @param cb        the callback (required); see surpool_live_fn.
 *  @param userdata  passed to cb.
 *  @param out       receives the handle on success; untouched on failure. The
 *                   callback may run (on the delivery thread) before this call
 *                   returns; it receives the same handle.
 *  @return SURPOOL_OK; SURPOOL_ERR_INVALID_ARG (bad options, NULL cb/out, sql that
 *          does not start exactly one live query, called from a
 *          surpool_result_fn); SURPOOL_ERR_SERVER (the server refused it: message
 *          and server code kept); SURPOOL_ERR_UNSUPPORTED (the server has no live
 *          queries); SURPOOL_ERR_CLOSED; an acquire error (TIMEOUT, CONNECT,
 *          AUTH, UNAVAILABLE, ...); a transport error; SURPOOL_ERR_NOMEM. On
 *          error the callback is never called; on success it is called until
 *          exactly one SURPOOL_LIVE_CLOSED event, its last.
 *  Ownership: the handle is freed by surpool_live_kill() (after its CLOSED event
 *  was delivered) or by surpool_pool_destroy().
 *  Thread safety: Any thread, a surpool_live_fn included. Not from a
 *  surpool_result_fn. */
SURPOOL_API surpool_err surpool_live_start(surpool_pool *pool, const surpool_live_options *opts,
                                           surpool_live_fn cb, void *userdata,
                                           surpool_live **out, surpool_error *err);

/** Stop a live query: no notification is delivered after this returns, except
 *  in a callback for it already running on another thread; then the callback
 *  gets SURPOOL_LIVE_CLOSED (code SURPOOL_OK) as its last event, unless it had
 *  it already. The server's `kill` is sent in the background (best effort).
 *  Never blocks. Call it once per handle (a second call before the CLOSED
 *  event was delivered is a no-op); the handle's memory is freed once both the
 *  kill was asked and its CLOSED callback returned: after that the handle must
 *  not be used (as after free()). A handle the server ended (KILLED, or it could
 *  not be started again) still needs this call, or pool destroy, to be freed.
 *  NULL is a no-op. Handles are also freed by surpool_pool_destroy(): do not
 *  kill after it.
 *  Thread safety: Any thread, a surpool_live_fn included (its own handle too);
 *  from another thread it must not race with surpool_pool_destroy(), which
 *  frees the handle. */
SURPOOL_API void surpool_live_kill(surpool_live *live);

/* ------------------------------------------------------------------------- */
/* Raw results                                                                */
/*                                                                            */
/* A result as the bytes the server sent, for results too large to hold as a  */
/* json_t tree (a tree of small rows costs ~8x the reply's size; docs/raw.md). */
/* The reply frame the connection received is handed over whole, without a   */
/* copy and without decoding its "result": surpool_raw_data() points at that  */
/* value inside it, in the pool's wire format: one CBOR data item with        */
/* SurrealDB's tags (SURPOOL_WIRE_CBOR; parse it with libcbor's               */
/* cbor_stream_decode(), for instance) or JSON text (SURPOOL_WIRE_JSON; a     */
/* streaming JSON parser). The bytes are the server's, only framed: the       */
/* library checks the envelope (an object/map with this request's integer id, */
/* "result" and "error" at most once each) and where the value ends, NOT the   */
/* value itself (its UTF-8, its nesting, its keys): validate what you parse.  */
/* A server error never comes back raw: it is the usual SURPOOL_ERR_SERVER /  */
/* SURPOOL_ERR_AUTH with err filled from the server's error object (only that */
/* small object is decoded).                                                  */
/* ------------------------------------------------------------------------- */

/** A raw result: owned by the caller, freed with surpool_raw_free(). Not tied
 *  to its connection or pool: it may outlive both, and be used and freed on
 *  any thread (one at a time: it is plain memory). */
typedef struct surpool_raw surpool_raw;

/** surpool_conn_call() with the result as bytes (see "Raw results").
 *  @param method, params  as surpool_conn_call().
 *  @param out     required; receives a new surpool_raw on SURPOOL_OK, NULL
 *                 otherwise (set to NULL first).
 *  @return as surpool_conn_call(); SURPOOL_ERR_INVALID_ARG for a NULL out, a
 *          stale handle (its lease ended) or a lease another thread is calling
 *          on; SURPOOL_ERR_PROTOCOL for a reply whose envelope is malformed
 *          (the connection is then not lent again).
 *  Thread safety: One thread at a time per handle. Not from a surpool callback. */
SURPOOL_API surpool_err surpool_conn_call_raw(surpool_conn *conn, const char *method,
                                              const json_t *params, surpool_raw **out,
                                              surpool_error *err);

/** surpool_conn_query() with the result as bytes: the server's per-statement
 *  array, [{"status":..,"result":..,"time":..}, ...], raw. A statement that
 *  failed is inside it, not an error of this call (check each status).
 *  @param sql, vars  as surpool_conn_query().
 *  @param out        as surpool_conn_call_raw().
 *  @return as surpool_conn_call_raw().
 *  Thread safety: One thread at a time per handle. Not from a surpool callback. */
SURPOOL_API surpool_err surpool_conn_query_raw(surpool_conn *conn, const char *sql,
                                               const json_t *vars, surpool_raw **out,
                                               surpool_error *err);

/** surpool_query() with the result as bytes. Not sent on the shared lane: it
 *  leases a connection of the pool for the call (acquire_timeout_ms, then
 *  request_timeout_ms), so one large reply never holds up the lane's small
 *  requests on the same socket.
 *  @param out  as surpool_conn_call_raw().
 *  @return as surpool_conn_query_raw(), plus the errors of
 *          surpool_pool_acquire(); SURPOOL_ERR_INVALID_ARG for a NULL pool or
 *          out, or from inside a surpool_result_fn (it would deadlock).
 *  Thread safety: Any thread. Not from a surpool callback. */
SURPOOL_API surpool_err surpool_query_raw(surpool_pool *pool, const char *sql,
                                          const json_t *vars, surpool_raw **out,
                                          surpool_error *err);

/** surpool_call() with the result as bytes, as surpool_query_raw(). Methods
 *  that change session state are refused (SURPOOL_ERR_INVALID_ARG), as by
 *  surpool_call().
 *  Thread safety: Any thread. Not from a surpool callback. */
SURPOOL_API surpool_err surpool_call_raw(surpool_pool *pool, const char *method,
                                         const json_t *params, surpool_raw **out,
                                         surpool_error *err);

/** The result's first byte (BORROWED: valid until surpool_raw_free()). The
 *  byte at data[size] is a NUL (not part of the value), so JSON text can be
 *  passed where a C string is wanted. NULL for a NULL raw.
 *  Thread safety: Any thread (the raw is not changed). */
SURPOOL_API const void *surpool_raw_data(const surpool_raw *raw);

/** The result's length in bytes (a JSON null is 4, a CBOR null 1; never 0
 *  for a result). 0 for a NULL raw. Thread safety: Any thread. */
SURPOOL_API size_t surpool_raw_size(const surpool_raw *raw);

/** How the bytes are encoded: SURPOOL_WIRE_CBOR or SURPOOL_WIRE_JSON (the
 *  pool's wire format); SURPOOL_WIRE_DEFAULT for a NULL raw.
 *  Thread safety: Any thread. */
SURPOOL_API surpool_wire_format surpool_raw_format(const surpool_raw *raw);

/** Free a raw result and the frame it lives in. NULL is a no-op.
 *  Thread safety: Any thread; must not race with any other use of `raw`. */
SURPOOL_API void surpool_raw_free(surpool_raw *raw);

/* ------------------------------------------------------------------------- */
/* Allocator                                                                  */
/* ------------------------------------------------------------------------- */

typedef void *(*surpool_malloc_fn)(size_t size);
typedef void *(*surpool_realloc_fn)(void *ptr, size_t size);
typedef void (*surpool_free_fn)(void *ptr);

/** Route every allocation surpool itself makes through these functions (all
 *  three, or all NULL to restore malloc/realloc/free). jansson values are
 *  allocated by jansson: use json_set_alloc_funcs() for those. One exception:
 *  the process-wide table behind lease handles (see surpool_conn) grows with
 *  calloc() in chunks of 256 slots (6 KB on 64-bit platforms) that are kept
 *  until the process exits, since handles of every pool, and of pools already
 *  destroyed, must stay safe to look up (its chunk failing to allocate fails
 *  that connect with SURPOOL_ERR_NOMEM).
 *  @return SURPOOL_OK or SURPOOL_ERR_INVALID_ARG (some but not all NULL).
 *  Thread safety: Must not race with any other surpool call: call it once,
 *  before the first pool is created. */
SURPOOL_API surpool_err surpool_set_allocator(surpool_malloc_fn m, surpool_realloc_fn r,
                                              surpool_free_fn f);

#ifdef __cplusplus
}
#endif

#endif /* SURPOOL_H */
