// A plain, single-process Node.js server: nothing here knows about sidecar.
// Run it alone with `node server.js`, or as a cluster of N workers behind
// the Go master with `sidecar --workers 4 -- node server.js`.
const http = require('http');

let served = 0; // per process: every worker has its own copy

const server = http.createServer((req, res) => {
  served++;
  res.setHeader('Content-Type', 'text/plain');
  res.end(`hello from pid ${process.pid} (this process served ${served})\n`);
});

server.listen(process.env.PORT || 3000, () => {
  console.log(`listening on ${server.address().port} (pid ${process.pid})`);
});

// On SIGTERM the master sends `disconnect` to each worker: Node closes the
// server, lets requests in flight finish, and the process exits 0. Nothing to
// add here. Standalone, finish requests in flight on SIGTERM too:
process.on('SIGTERM', () => server.close());
