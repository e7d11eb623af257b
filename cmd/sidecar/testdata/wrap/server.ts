// server.ts: the app under a real ts-node when one is installed
// (wrapper_test.go; run with TS_NODE_TRANSPILE_ONLY=true: no type check,
// so no @types/node is needed).
import * as cluster from 'cluster';
import * as http from 'http';

const id: number = cluster.isWorker && cluster.worker ? cluster.worker.id : 0;
http.createServer((req, res) => {
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ isWorker: cluster.isWorker, isPrimary: cluster.isPrimary, id, pid: process.pid, addresses: [] }));
}).listen(process.env.PORT);
