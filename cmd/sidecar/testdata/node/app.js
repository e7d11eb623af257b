// app.js: an ordinary Node.js HTTP app for the conformance tests
// (node_*test.go). It knows nothing of sidecar; it reads `cluster` only to
// report who it is. Its servers come from APP_LISTEN, a comma-separated list:
//   port       listen(process.env.PORT)
//   host       listen(process.env.PORT, '127.0.0.1', callback): the usual
//              Express call; Node then sends "backlog": false
//   0          listen(0)
//   v6         listen(process.env.PORT, '::1')
//   v6:0       listen(0, '::1')
//   unix:PATH  listen(PATH)
//   unixall:PATH  listen({ path: PATH, readableAll: true, writableAll: true })
// APP_MAXCONN_WORKER=N[,M…] sets maxConnections = 1 on those workers' servers.
// APP_DRAINABLE=1 asks the master to say when it drains (see below).
// APP_LINGER=1 keeps a timer running, so the event loop never empties on
// its own (a database pool or a metrics timer in a real app).
// What it does per request is chosen by the path (see handle below). It
// reports its events on stderr as "app worker=N event=…" lines.
'use strict';
const cluster = require('cluster');
const http = require('http');
const net = require('net');

const id = cluster.isWorker ? cluster.worker.id : 0;
const log = (msg) => console.error(`app worker=${id} pid=${process.pid} ${msg}`);
const servers = [];

function info(extra) {
  return JSON.stringify({
    isWorker: cluster.isWorker,
    isPrimary: cluster.isPrimary,
    id,
    pid: process.pid,
    addresses: servers.map((s) => s.address()),
    ...extra,
  });
}

// after answers req with info, then runs fn once the answer is written.
function after(res, fn) {
  res.writeHead(200, { 'content-type': 'application/json', 'x-worker-id': id });
  res.end(info(), fn);
}

// oddValues are user messages of every JSON shape.
function oddValues(i) {
  return [
    `msg-${i}`,
    i,
    -1.5e300,
    null,
    true,
    ['msg', i, { deep: [[[{ deeper: 'x' }]]] }],
    { cmd: 'user', i, nested: { s: 'line\nbreak "quoted" \u2028 é 🙂', n: [1, 2, 3] } },
    { cmd: 'NODE', note: 'not an internal message: no underscore' },
    'x'.repeat(100000),
  ][i % 9];
}

function sendMany(n, done) {
  let left = n;
  for (let i = 0; i < n; i++) {
    process.send(oddValues(i), (err) => {
      if (err) log(`event=send-error err=${err.message}`);
      if (--left === 0) done();
    });
  }
}

// APP_DRAINABLE=1: the opt-in of sidecar's README (the master says when
// it drains; every response from then on closes its connection).
let draining = false;
if (process.env.APP_DRAINABLE === '1') {
  process.on('message', (m) => { if (m && m.sidecar === 'drain') draining = true; });
  process.send({ sidecar: 'drainable' });
}

function handle(req, res) {
  if (draining) res.setHeader('Connection', 'close');
  const url = new URL(req.url, 'http://app');
  switch (url.pathname) {
    case '/slow': // the answer's headers at once, its body after ms
      res.writeHead(200, { 'x-worker-id': id });
      res.flushHeaders();
      setTimeout(() => {
        log('event=slow-done'); // before the body: a test orders it against the master's lines
        res.end(info({ slow: true }));
      }, Number(url.searchParams.get('ms') || 500));
      return;
    case '/hold': // headers at once; the body when the client goes away
      res.writeHead(200, { 'x-worker-id': id });
      res.flushHeaders();
      req.socket.once('close', () => res.destroy());
      return;
    case '/exit':
      return after(res, () => process.exit(1));
    case '/throw':
      throw new Error('boom on a request path');
    case '/throw-later':
      return after(res, () => setTimeout(() => { throw new Error('boom in a timer'); }, 1));
    case '/kill':
      return after(res, () => process.kill(process.pid));
    case '/disconnect':
      return after(res, () => cluster.worker.disconnect());
    case '/destroy':
      return after(res, () => cluster.worker.destroy());
    case '/node-options': // what the app (and so its children) see of NODE_OPTIONS
      res.end(info({ nodeOptions: process.env.NODE_OPTIONS ?? null, preloadToken: process.env.SIDECAR_NODE_DRAIN ?? null }));
      return;
    case '/send':
      return sendMany(Number(url.searchParams.get('n') || 1), () => after(res));
    case '/send-handle': { // process.send(msg, socket), msg the JSON in ?msg=
      const c = net.connect(req.socket.localPort, '127.0.0.1', () => {
        process.send(JSON.parse(url.searchParams.get('msg') || '"a socket"'), c, (err) => {
          if (err) log(`event=send-error err=${err.message}`);
          after(res);
        });
      });
      return;
    }
    default:
      return after(res);
  }
}

for (const spec of (process.env.APP_LISTEN || 'port').split(',')) {
  const server = http.createServer(handle);
  if ((process.env.APP_MAXCONN_WORKER || '').split(',').includes(String(id))) server.maxConnections = 1;
  server.on('listening', () => log(`event=listening address=${JSON.stringify(server.address())}`));
  server.on('error', (err) => log(`event=error spec=${spec} err=${err.message}`));
  servers.push(server);
  if (spec === 'port') server.listen(process.env.PORT);
  else if (spec === 'host') server.listen(process.env.PORT, '127.0.0.1', () => log('event=listen-callback'));
  else if (spec === '0') server.listen(0);
  else if (spec === 'v6') server.listen(process.env.PORT, '::1');
  else if (spec === 'v6:0') server.listen(0, '::1');
  else if (spec.startsWith('unix:')) server.listen(spec.slice(5));
  else if (spec.startsWith('unixall:')) server.listen({ path: spec.slice(8), readableAll: true, writableAll: true });
  else throw new Error(`APP_LISTEN: unknown server ${spec}`);
}
if (process.env.APP_LINGER) setInterval(() => {}, 1 << 30);
if (cluster.isWorker) cluster.worker.on('disconnect', () => log('event=disconnect'));
process.on('exit', (code) => log(`event=exit code=${code}`));
