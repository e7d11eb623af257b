// sidecar's drain preload. The master loads it into its Node.js workers
// (NODE_OPTIONS=--require=…) unless --node-drain=false. In a cluster
// worker of sidecar it does for the app what the README's three-line
// opt-in does: it asks the master to say when draining begins, and from
// then on every HTTP response closes its keep-alive connection, so that
// no client sends a request on a connection the worker is about to close.
// Anywhere else (the app's own child processes, a Node without the
// diagnostics channel) it does nothing.
'use strict';
(function sidecarDrain() {
  const me = process.env.SIDECAR_NODE_DRAIN; // our NODE_OPTIONS token
  if (me) {
    // Not inherited by the app's own Node children.
    const opts = (process.env.NODE_OPTIONS || '').split(me).join('').trim();
    if (opts) process.env.NODE_OPTIONS = opts; else delete process.env.NODE_OPTIONS;
    delete process.env.SIDECAR_NODE_DRAIN;
  }
  let cluster, dc;
  try {
    cluster = require('cluster');
    dc = require('diagnostics_channel');
  } catch (e) {
    return;
  }
  if (!cluster.isWorker || typeof process.send !== 'function' || typeof dc.channel !== 'function') return;
  let draining = false;
  dc.channel('http.server.request.start').subscribe((m) => {
    const res = m && m.response;
    if (draining && res && !res.headersSent) res.setHeader('Connection', 'close');
  });
  process.on('message', (m) => {
    if (m && m.sidecar === 'drain') draining = true;
  });
  // The listener does not change when the worker exits: cluster's own
  // 'disconnect' listener already holds the channel open until the
  // master disconnects.
  process.send({ sidecar: 'drainable' });
})();
