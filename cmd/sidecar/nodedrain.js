// sidecar's drain preload. The master loads it into its Node.js workers
// (NODE_OPTIONS=--require=…) unless --node-drain=false. In a cluster
// worker of sidecar it does for the app what the README's opt-in does: it
// asks the master to say when draining begins, and from then on every
// HTTP response closes its keep-alive connection, so that no client sends
// a request on a connection the worker is about to close. It speaks to
// the master with the cluster's internal messages (NODE_CLUSTER), which
// Node never delivers to the app's process.on('message'), and which do
// not hold the channel open. Anywhere else (the app's own child
// processes, node -e, a Node without the diagnostics channel) it does
// nothing.
'use strict';
(function sidecarDrain() {
  const token = process.env.SIDECAR_DRAIN_PRELOAD; // our NODE_OPTIONS option
  if (token) {
    // Not inherited by the app's own Node children.
    const opts = (process.env.NODE_OPTIONS || '').split(token).join('').trim();
    if (opts) process.env.NODE_OPTIONS = opts;
    else delete process.env.NODE_OPTIONS;
    delete process.env.SIDECAR_DRAIN_PRELOAD;
  }
  let cluster, dc;
  try {
    cluster = require('cluster');
    dc = require('diagnostics_channel');
  } catch (e) {
    return;
  }
  // cluster.worker: Node set this process up as a worker (it does not
  // for node -e or a script on stdin).
  if (!cluster.isWorker || !cluster.worker || typeof process.send !== 'function') return;
  let draining = false;
  const onRequest = (m) => {
    const res = m && m.response;
    if (draining && res && !res.headersSent) res.setHeader('Connection', 'close');
  };
  const name = 'http.server.request.start';
  const onDrain = (m) => {
    if (m && m.cmd === 'NODE_CLUSTER' && m.act === 'sidecar.drain') draining = true;
  };
  if (typeof dc.subscribe === 'function') {
    dc.subscribe(name, onRequest);
  } else if (typeof dc.channel === 'function') {
    // Before dc.subscribe (Node < 16.17, 18.7), a channel nobody holds
    // loses its subscribers at the next GC (nodejs/node#42170): the
    // listener below, held by process, holds it.
    onDrain.channel = dc.channel(name);
    onDrain.channel.subscribe(onRequest);
  } else {
    return;
  }
  process.on('internalMessage', onDrain);
  process.send({ cmd: 'NODE_CLUSTER', act: 'sidecar.drainfirst' });
})();
