// preload.js: a module loaded with node --require before the app, as
// node -r ts-node/register or node --import tsx load a compiler
// (wrapper_test.go). It says it ran, in which process.
'use strict';
console.error(`preload: loaded in pid ${process.pid}`);
