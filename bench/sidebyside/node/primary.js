// Node's own cluster primary for the benchmark: forks WORKERS copies of
// app.js with the scheduling policy in NODE_CLUSTER_SCHED_POLICY (rr|none).
'use strict';
const cluster = require('cluster');
const path = require('path');

cluster.schedulingPolicy =
  process.env.NODE_CLUSTER_SCHED_POLICY === 'none' ? cluster.SCHED_NONE : cluster.SCHED_RR;
cluster.setupPrimary({ exec: path.join(__dirname, 'app.js') });

const n = Number(process.env.WORKERS || 2);
let stopping = false;

cluster.on('listening', (worker, address) => {
  console.log(`BENCH listening worker=${worker.id} port=${address.port}`);
});
cluster.on('exit', (worker, code, signal) => {
  if (!stopping) console.error(`BENCH worker ${worker.id} exited code=${code} signal=${signal}`);
});
for (let i = 0; i < n; i++) cluster.fork();

process.on('SIGTERM', () => {
  stopping = true;
  cluster.disconnect(() => process.exit(0));
});
