// Node preload (`node --require scripts/loopback-only.cjs ...`) for third-party servers run by tests:
// forces every TCP listen() onto 127.0.0.1, whatever host the program asked for, and prints
// "LISTENING http://127.0.0.1:PORT" on stderr once bound, so PORT=0 works as a readiness signal.
'use strict';
const net = require('node:net');

const HOST = '127.0.0.1';
const listen = net.Server.prototype.listen;

net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if (first !== null && typeof first === 'object') {
    if (first.path === undefined && first.fd === undefined && first.handle === undefined) {
      args[0] = { ...first, host: HOST };
    }
  } else if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
    if (typeof args[1] === 'string') {
      args[1] = HOST;
    } else {
      args.splice(1, 0, HOST);
    }
  } else if (first === undefined || typeof first === 'function') {
    args.unshift(0, HOST);
  } // else: a Unix socket path or a pipe name, which no network can reach
  this.once('listening', () => {
    const address = this.address();
    if (address !== null && typeof address === 'object') {
      process.stderr.write(`LISTENING http://${HOST}:${address.port}\n`);
    }
  });
  return listen.apply(this, args);
};
