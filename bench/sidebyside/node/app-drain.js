// app.js with sidecar's drain opt-in (the top-level README, "Clustering a
// Node.js app"): it asks the master to say when it drains, and from then
// on every response closes its connection (Connection: close), so a
// keep-alive client is never left holding a connection the worker is
// about to close. Otherwise the same hello app.
'use strict';
const http = require('http');
const cluster = require('cluster');

const id = cluster.isWorker ? String(cluster.worker.id) : '0';

let draining = false;
process.on('message', (m) => {
  if (m && m.sidecar === 'drain') draining = true;
});
if (process.send) process.send({ sidecar: 'drainable' });

http
  .createServer((req, res) => {
    if (draining) res.setHeader('Connection', 'close');
    res.setHeader('X-Sidecar-Worker', id);
    res.setHeader('Content-Type', 'text/plain');
    res.end('hello\n');
  })
  .listen(process.env.PORT);
