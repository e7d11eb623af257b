// The benchmark's Node hello app: a plain single-process server, unmodified
// between Node's own cluster primary and sidecar. It answers "hello" and
// names the cluster worker that served the request.
'use strict';
const http = require('http');
const cluster = require('cluster');

const id = cluster.isWorker ? String(cluster.worker.id) : '0';

http
  .createServer((req, res) => {
    res.setHeader('X-Sidecar-Worker', id);
    res.setHeader('Content-Type', 'text/plain');
    res.end('hello\n');
  })
  .listen(process.env.PORT);
