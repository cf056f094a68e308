#include "harness.h"
#include "testkit.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

int harness_start(test_server *s, const char *script, int port, const char *const *args)
{
    memset(s, 0, sizeof(*s));
    s->pid = -1;
    int out[2], in[2];
    if (pipe(out) != 0)
        return -1;
    if (pipe(in) != 0) {
        close(out[0]);
        close(out[1]);
        return -1;
    }
    char path[1024], portbuf[16];
    snprintf(path, sizeof(path), "%s/tests/server/%s", SURPOOL_SOURCE_DIR, script);
    snprintf(portbuf, sizeof(portbuf), "%d", port);
    const char *argv[64];
    int n = 0;
    argv[n++] = "node";
    argv[n++] = path;
    argv[n++] = "--host";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--port";
    argv[n++] = portbuf;
    argv[n++] = "--exit-on-stdin-close";
    /* SURPOOL_TEST_CORE=2: the test server over the SurrealDB 2.x core. */
    const char *core = getenv("SURPOOL_TEST_CORE");
    if (core != NULL && core[0] != '\0' && strcmp(script, "server.mjs") == 0) {
        argv[n++] = "--core";
        argv[n++] = core;
    }
    for (int i = 0; args != NULL && args[i] != NULL && n < 62; i++)
        argv[n++] = args[i];
    argv[n] = NULL;

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    posix_spawn_file_actions_addclose(&fa, in[1]);
    int rc = posix_spawnp(&s->pid, "node", &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    close(in[0]);
    if (rc != 0) {
        close(out[0]);
        close(in[1]);
        s->pid = -1;
        return -1;
    }
    s->stdin_fd = in[1];
    /* Read "LISTENING <port>\n" (the server prints nothing else on stdout),
     * bounded: a server that never gets there fails the start with a reason
     * instead of hanging the test. */
    char line[256];
    size_t len = 0;
    const char *why = NULL;
    int64_t end = tk_now_ms() + HARNESS_START_MS * TK_SLOW;
    while (why == NULL && memchr(line, '\n', len) == NULL) {
        int left = (int)(end - tk_now_ms());
        if (left <= 0) {
            why = "no LISTENING line in time";
            break;
        }
        struct pollfd pfd = {out[0], POLLIN, 0};
        int pr = poll(&pfd, 1, left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            continue; /* the deadline check above ends it */
        ssize_t r = read(out[0], line + len, sizeof(line) - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            why = "it exited before listening";
        else if ((len += (size_t)r) == sizeof(line) - 1)
            why = "unexpected output";
        line[len] = '\0';
    }
    close(out[0]);
    if (why == NULL && sscanf(line, "LISTENING %d", &s->port) != 1)
        why = "unexpected output";
    /* Cluster simulator: "LISTENING p1 p2 ... pN CONTROL pc". */
    const char *ctl = why == NULL ? strstr(line, " CONTROL ") : NULL;
    if (ctl != NULL) {
        const char *p = line + strlen("LISTENING");
        while (p < ctl && s->nnodes < HARNESS_MAX_NODES) {
            char *endp;
            long v = strtol(p, &endp, 10);
            if (endp == p)
                break;
            s->node_ports[s->nnodes++] = (int)v;
            p = endp;
        }
        s->control_port = atoi(ctl + strlen(" CONTROL "));
        if (s->nnodes < 2 || s->control_port <= 0)
            why = "unexpected output (cluster LISTENING line)";
    }
    if (why != NULL) {
        fprintf(stderr, "harness: cannot start tests/server/%s on port %d: %s\n", script, port,
                why);
        harness_stop(s);
        return -1;
    }
    if (s->nnodes == 0) {
        snprintf(s->url, sizeof(s->url), "ws://127.0.0.1:%d/rpc", s->port);
    } else {
        size_t off = (size_t)snprintf(s->url, sizeof(s->url), "ws://");
        for (int i = 0; i < s->nnodes && off < sizeof(s->url); i++)
            off += (size_t)snprintf(s->url + off, sizeof(s->url) - off, "%s127.0.0.1:%d",
                                    i > 0 ? "," : "", s->node_ports[i]);
        if (off < sizeof(s->url))
            snprintf(s->url + off, sizeof(s->url) - off, "/rpc");
    }
    return 0;
}

int harness_start_cluster(test_server *s, int nodes, const char *const *args)
{
    if (nodes < 2 || nodes > HARNESS_MAX_NODES) {
        fprintf(stderr, "harness: a cluster has 2..%d nodes\n", HARNESS_MAX_NODES);
        return -1;
    }
    char nbuf[16];
    snprintf(nbuf, sizeof(nbuf), "%d", nodes);
    const char *all[64];
    int n = 0;
    all[n++] = "--nodes";
    all[n++] = nbuf;
    for (int i = 0; args != NULL && args[i] != NULL && n < 63; i++)
        all[n++] = args[i];
    all[n] = NULL;
    if (harness_start(s, "server.mjs", 0, all) != 0)
        return -1;
    if (s->nnodes != nodes) {
        fprintf(stderr, "harness: asked for %d nodes, the server listed %d\n", nodes,
                s->nnodes);
        harness_stop(s);
        return -1;
    }
    return 0;
}

static int node_action(const test_server *s, int node, const char *action)
{
    if (s->nnodes == 0 || node < 1 || node > s->nnodes)
        return -1;
    char body[96];
    snprintf(body, sizeof(body), "{\"node\":%d,\"action\":\"%s\"}", node, action);
    return harness_control(s, body);
}

int harness_node_kill(const test_server *s, int node)
{
    return node_action(s, node, "kill");
}

int harness_node_revive(const test_server *s, int node)
{
    return node_action(s, node, "revive");
}

void harness_node_url(const test_server *s, int node, char *buf, size_t size)
{
    int port = node >= 1 && node <= s->nnodes ? s->node_ports[node - 1] : s->port;
    snprintf(buf, size, "ws://127.0.0.1:%d/rpc", port);
}

static int wait_exit(pid_t pid, int ms)
{
    for (int waited = 0; waited < ms; waited += 10) {
        pid_t r = waitpid(pid, NULL, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD))
            return 1;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return 0;
}

int harness_start_root(test_server *s)
{
    const char *args[] = {"--user", "root", "--pass", "root", NULL};
    if (harness_start(s, "server.mjs", 0, args) != 0) {
        fprintf(stderr, "cannot start tests/server/server.mjs (did npm ci run?)\n");
        return -1;
    }
    return 0;
}

void harness_stop(test_server *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGTERM);
        if (!wait_exit(s->pid, 5000)) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, NULL, 0);
        }
    }
    if (s->stdin_fd > 0)
        close(s->stdin_fd);
    s->stdin_fd = 0;
    s->pid = -1;
}

void harness_kill9(test_server *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
    }
    if (s->stdin_fd > 0)
        close(s->stdin_fd);
    s->stdin_fd = 0;
    s->pid = -1;
}

/* One HTTP request to the server; the reply (headers and body) in resp. */
static int http_exchange(const test_server *s, const char *req, char *resp, size_t size)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)(s->control_port > 0 ? s->control_port : s->port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    size_t n = strlen(req);
    if (write(fd, req, n) != (ssize_t)n) {
        close(fd);
        return -1;
    }
    size_t len = 0;
    ssize_t r;
    while (len < size - 1 && (r = read(fd, resp + len, size - 1 - len)) > 0)
        len += (size_t)r;
    resp[len] = '\0';
    close(fd);
    return 0;
}

long harness_stat(const test_server *s, const char *key)
{
    char resp[2048], pat[64];
    if (http_exchange(s, "GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                      resp, sizeof(resp)) != 0)
        return -1;
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *hit = strstr(resp, pat);
    return hit != NULL ? strtol(hit + strlen(pat), NULL, 10) : -1;
}

int harness_control(const test_server *s, const char *body)
{
    char req[1024], resp[256];
    snprintf(req, sizeof(req),
             "POST /control HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
             "application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
             strlen(body), body);
    if (http_exchange(s, req, resp, sizeof(resp)) != 0)
        return -1;
    return strlen(resp) > 12 && strncmp(resp + 9, "200", 3) == 0 ? 0 : -1;
}

int harness_restart(test_server *s, const char *script, int port, const char *const *args)
{
    /* Right after a SIGKILL the port may need a moment: retry for a while. */
    int64_t end = tk_now_ms() + HARNESS_START_MS * TK_SLOW;
    do {
        if (harness_start(s, script, port, args) == 0)
            return 0;
        tk_sleep_ms(100);
    } while (tk_now_ms() < end);
    return -1;
}

surpool_wire_format harness_wire(void)
{
    const char *wire = getenv("SURPOOL_TEST_WIRE");
    return wire != NULL && strcmp(wire, "cbor") == 0 ? SURPOOL_WIRE_CBOR : SURPOOL_WIRE_JSON;
}

void harness_root_config(surpool_config *cfg, const char *url, const char *db)
{
    surpool_config_init(cfg);
    cfg->url = url;
    cfg->wire_format = harness_wire();
    cfg->user = "root";
    cfg->pass = "root";
    cfg->ns = db != NULL ? "test" : NULL;
    cfg->db = db;
    cfg->acquire_timeout_ms = 30000;
    cfg->connect_timeout_ms = 10000;
    cfg->request_timeout_ms = 30000;
}

int harness_core_major(void)
{
    const char *core = getenv("SURPOOL_TEST_CORE");
    return core != NULL && strcmp(core, "2") == 0 ? 2 : 3;
}
