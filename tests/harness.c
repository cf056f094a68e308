#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
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
    /* Read "LISTENING <port>\n" (the server prints nothing else on stdout). */
    FILE *f = fdopen(out[0], "r");
    char line[128];
    int got = f != NULL && fgets(line, sizeof(line), f) != NULL &&
              sscanf(line, "LISTENING %d", &s->port) == 1;
    if (f != NULL)
        fclose(f);
    else
        close(out[0]);
    if (!got) {
        harness_stop(s);
        return -1;
    }
    snprintf(s->url, sizeof(s->url), "ws://127.0.0.1:%d/rpc", s->port);
    return 0;
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

int harness_control(const test_server *s, const char *body)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)s->port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    char req[1024];
    int n = snprintf(req, sizeof(req),
                     "POST /control HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     "application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     strlen(body), body);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    char resp[256] = {0};
    ssize_t r = read(fd, resp, sizeof(resp) - 1);
    close(fd);
    return r > 12 && strncmp(resp + 9, "200", 3) == 0 ? 0 : -1;
}
