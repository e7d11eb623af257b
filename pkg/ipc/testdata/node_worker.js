// A plain Node.js cluster worker for node_test.go: the test plays the master
// over the channel on fd 3 and passes the port it bound in PORT.
'use strict';
const cluster = require('cluster');
const http = require('http');

if (!cluster.isWorker) {
  console.error('node_worker.js: not started as a cluster worker');
  process.exit(2);
}
http
  .createServer((req, res) => res.end('hi from ' + cluster.worker.id))
  .listen(Number(process.env.PORT));
