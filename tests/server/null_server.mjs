// The "null server": a WebSocket JSON RPC endpoint that answers every request at
// once with a canned result, for the transport tests and the benchmarks. It has
// no database behind it (server.mjs is the real thing).
//
//   node null_server.mjs [--port N] [flags]
//
// Prints exactly one line on stdout, `LISTENING <port>`, once it accepts
// connections (port 0 = pick a free one). Nothing else is printed per request:
// it must stay fast enough to be the far end of a throughput benchmark.
//
// Requests are {"id":N,"method":M,"params":P}; the reply is {"id":N,"result":"ok"}
// except for these methods (test helpers):
//   sleep [ms]           answer after ms milliseconds
//   echo  P              result = params
//   big   [n]            result = a string of n bytes
//   close [code, reason] send a close frame (no reply); reason: a string, or an
//                        array of byte values sent raw (need not be UTF-8)
//   close_mute [ms, code] after ms milliseconds send a close frame and stop
//                        reading the socket (no reply)
//   binary               answer with a binary frame
//   garbage              answer with text that is not JSON
//   bad_frame            send a frame with a reserved bit set (no reply)
//   last_close           result = the close code the last connection to close
//                        got from the client (1006: none), or null
//   notify               send a live-query notification (no id) and then the reply
//   orphan               send an error without id (as for an undecodable request)
//
// Flags:
//   --reply-delay-ms N   delay every reply by N ms
//   --shuffle            answer the requests that arrived together in random order
//   --no-subprotocol     do not echo the `json` subprotocol
//   --big N              answer every request with an N-byte string
//   --no-upgrade         accept TCP, never answer the HTTP upgrade
//   --hangup-at-upgrade  read the upgrade request and end the connection without
//                        an answer (with --tls-cert: after the TLS handshake, with
//                        a close_notify)
//   --tls-cert F --tls-key F   serve wss:// with this PEM certificate and key
//   --tls-client-ca F    require a client certificate signed by this CA
//   --close-after N      drop a connection (TCP, no close frame) when its Nth
//                        request arrives, without answering it
//   --backpressure       stop reading a socket while its replies wait in the
//                        socket's write buffer (resume on 'drain'), as a server
//                        that writes each reply before it reads on does
import { createServer as createHttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createNetServer } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { readFileSync } from 'node:fs';
import { WebSocketServer } from 'ws';

function parseArgs(argv) {
    const o = {
        port: 0, replyDelayMs: 0, shuffle: false, noSubprotocol: false, big: -1,
        noUpgrade: false, tlsCert: null, tlsKey: null, closeAfter: 0, readPauseMs: 0, hangupAtUpgrade: false,
        tlsClientCa: null, backpressure: false,
    };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        const next = () => {
            if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
            return argv[++i];
        };
        switch (a) {
        case '--port': o.port = Number(next()); break;
        case '--reply-delay-ms': o.replyDelayMs = Number(next()); break;
        case '--shuffle': o.shuffle = true; break;
        case '--no-subprotocol': o.noSubprotocol = true; break;
        case '--big': o.big = Number(next()); break;
        case '--no-upgrade': o.noUpgrade = true; break;
        case '--hangup-at-upgrade': o.hangupAtUpgrade = true; break;
        case '--tls-cert': o.tlsCert = next(); break;
        case '--tls-key': o.tlsKey = next(); break;
        case '--tls-client-ca': o.tlsClientCa = next(); break;
        case '--close-after': o.closeAfter = Number(next()); break;
        case '--read-pause-ms': o.readPauseMs = Number(next()); break;
        case '--backpressure': o.backpressure = true; break;
        default: throw new Error(`unknown argument ${a}`);
        }
    }
    return o;
}

const opt = parseArgs(process.argv.slice(2));
const bigString = opt.big >= 0 ? JSON.stringify('x'.repeat(opt.big)) : null;

// Our client always writes the id first: take the fast path without a full
// JSON.parse for the common case, fall back to parsing for anything else.
const HEAD = /^\{"id":(-?\d+),"method":"([A-Za-z_]+)"/;
const SPECIAL = new Set(['sleep', 'echo', 'big', 'close', 'binary', 'garbage', 'notify',
    'orphan', 'fragmented', 'mute', 'close_mute', 'bad_frame', 'last_close']);

function handle(ws, text, out) {
    let id, method, params;
    const m = HEAD.exec(text);
    if (m !== null && !SPECIAL.has(m[2])) {
        id = m[1];
        method = m[2];
    } else {
        let req;
        try {
            req = JSON.parse(text);
        } catch {
            out.push('{"error":{"code":-32700,"message":"Parse error"}}');
            return;
        }
        // Keep the id's exact digits (it may not fit a double).
        id = m !== null ? m[1] : JSON.stringify(req.id);
        method = req.method;
        params = req.params;
    }
    if (bigString !== null) {
        out.push(`{"id":${id},"result":${bigString}}`);
        return;
    }
    switch (method) {
    case 'sleep': {
        const ms = Array.isArray(params) ? Number(params[0]) : 0;
        setTimeout(() => send(ws, `{"id":${id},"result":null}`), ms);
        return;
    }
    case 'echo':
        out.push(`{"id":${id},"result":${JSON.stringify(params ?? null)}}`);
        return;
    case 'big': {
        const n = Array.isArray(params) ? Number(params[0]) : 0;
        out.push(`{"id":${id},"result":${JSON.stringify('x'.repeat(n))}}`);
        return;
    }
    case 'close': {
        const code = Array.isArray(params) && params[0] ? Number(params[0]) : 1000;
        // A reason given as an array of byte values is sent as those raw bytes.
        const reason = !Array.isArray(params) || !params[1] ? ''
            : Array.isArray(params[1]) ? Buffer.from(params[1]) : String(params[1]);
        ws.close(code, reason);
        return;
    }
    case 'binary':
        ws.send(Buffer.from(`{"id":${id},"result":"ok"}`), { binary: true });
        return;
    case 'fragmented': {
        // [parts, n]: a reply of n 'x' sent as `parts` frames of one message,
        // with a ping between every two of them.
        const parts = Array.isArray(params) ? Math.max(1, Number(params[0])) : 2;
        const n = Array.isArray(params) ? Number(params[1]) : 0;
        const text = `{"id":${id},"result":${JSON.stringify('x'.repeat(n))}}`;
        const step = Math.ceil(text.length / parts);
        for (let i = 0; i < text.length; i += step) {
            if (i > 0 && ws.readyState === ws.OPEN) ws.ping(Buffer.from('are you there'));
            if (ws.readyState === ws.OPEN)
                ws.send(text.slice(i, i + step), { fin: i + step >= text.length });
        }
        return;
    }
    case 'mute':
        // Stop reading the socket and never answer again (not even pings).
        ws._muted = true;
        ws._socket.pause();
        return;
    case 'close_mute': {
        const ms = Array.isArray(params) ? Number(params[0]) : 0;
        const code = Array.isArray(params) && params[1] ? Number(params[1]) : 1001;
        setTimeout(() => {
            ws._muted = true;
            ws.close(code);
            ws._socket.pause();
        }, ms);
        return;
    }
    case 'garbage':
        out.push('this is not json');
        return;
    case 'bad_frame':
        ws._socket.write(Buffer.from([0xc1, 0x01, 0x78])); // FIN, RSV1, text, "x"
        return;
    case 'last_close':
        out.push(`{"id":${id},"result":${lastClose}}`);
        return;
    case 'notify':
        out.push('{"result":{"action":"CREATE","id":"0190a2b4-live","result":{"n":1}}}');
        out.push(`{"id":${id},"result":"ok"}`);
        return;
    case 'orphan':
        out.push('{"error":{"code":-32700,"message":"Parse error"}}');
        out.push(`{"id":${id},"result":"ok"}`);
        return;
    default:
        out.push(`{"id":${id},"result":"ok"}`);
    }
}

function send(ws, s) {
    if (ws.readyState === ws.OPEN) ws.send(s);
}

function shuffle(a) {
    for (let i = a.length - 1; i > 0; i--) {
        const j = Math.floor(Math.random() * (i + 1));
        [a[i], a[j]] = [a[j], a[i]];
    }
}

function flush(ws, out) {
    if (opt.shuffle) shuffle(out);
    for (const s of out) send(ws, s);
}

let lastClose = null; // last_close

function onConnection(ws) {
    let count = 0;
    if (opt.readPauseMs > 0) {
        // A slow reader: after each chunk read, stop reading for a while.
        ws._socket.on('data', () => {
            ws._socket.pause();
            setTimeout(() => { if (!ws._muted) ws._socket.resume(); }, opt.readPauseMs);
        });
    }
    // With --shuffle, replies wait for the end of the current I/O turn so that
    // requests that arrived together are answered together, out of order.
    let batch = null;
    ws.on('message', (data) => {
        count++;
        if (opt.closeAfter > 0 && count >= opt.closeAfter) {
            ws.terminate();
            return;
        }
        const out = [];
        handle(ws, data.toString(), out);
        if (out.length === 0) return;
        if (opt.replyDelayMs > 0) {
            setTimeout(() => flush(ws, out), opt.replyDelayMs);
        } else if (opt.shuffle) {
            if (batch === null) {
                batch = [];
                setImmediate(() => {
                    const b = batch;
                    batch = null;
                    flush(ws, b);
                });
            }
            batch.push(...out);
        } else {
            for (const s of out) ws.send(s);
        }
        if (opt.backpressure && ws._socket.writableNeedDrain && !ws._socket.isPaused()) {
            ws._socket.pause();
            ws._socket.once('drain', () => ws._socket.resume());
        }
    });
    ws.on('error', () => {});
    ws.on('close', (code) => { lastClose = code; });
}

function listening(server) {
    process.stdout.write(`LISTENING ${server.address().port}\n`);
}

if (opt.hangupAtUpgrade) {
    const onSocket = (s) => {
        s.on('error', () => {});
        s.once('data', () => s.end());
    };
    const server = opt.tlsCert
        ? createTlsServer({ cert: readFileSync(opt.tlsCert), key: readFileSync(opt.tlsKey) },
            onSocket)
        : createNetServer(onSocket);
    server.on('tlsClientError', () => {});
    server.listen(opt.port, '127.0.0.1', () => listening(server));
} else if (opt.noUpgrade) {
    // Accept TCP and then say nothing at all; keep the sockets so that the
    // client sees neither a response nor a close.
    const sockets = new Set();
    const server = createNetServer((s) => {
        sockets.add(s);
        s.on('error', () => {});
        s.on('close', () => sockets.delete(s));
        s.resume();
    });
    server.listen(opt.port, '127.0.0.1', () => listening(server));
} else {
    const server = opt.tlsCert
        ? createHttpsServer({
            cert: readFileSync(opt.tlsCert), key: readFileSync(opt.tlsKey),
            ...(opt.tlsClientCa ? {
                ca: readFileSync(opt.tlsClientCa), requestCert: true, rejectUnauthorized: true,
            } : {}),
        })
        : createHttpServer();
    server.on('tlsClientError', () => {});
    const wss = new WebSocketServer({
        server,
        path: '/rpc',
        perMessageDeflate: false,
        maxPayload: 256 * 1024 * 1024,
        handleProtocols: (protocols) => {
            if (opt.noSubprotocol) return false;
            return protocols.has('json') ? 'json' : false;
        },
    });
    wss.on('connection', onConnection);
    server.listen(opt.port, '127.0.0.1', () => listening(server));
}

for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
