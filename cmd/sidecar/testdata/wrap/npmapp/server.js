// server.js: the app of npmapp/package.json's start script. Started by
// npm it is npm's child, not a cluster worker: it binds PORT itself.
'use strict';
const cluster = require('cluster');
const http = require('http');

http.createServer((req, res) => {
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ isWorker: cluster.isWorker, id: cluster.isWorker ? cluster.worker.id : 0, pid: process.pid }));
}).listen(process.env.PORT);
