'use strict';
// Drives real socket.io-client 4.8 sockets for the trial interop harness
// (tests/support/clients.py).  Protocol: one JSON command per line on stdin,
// one JSON report per line on stdout.  The same protocol is spoken by
// sio_driver.py (python-socketio); keep the two in step.
//
// Commands (each but "quit" carries a numeric "ref" echoed in its reply):
//   connect    {client, url, namespace, namespaces?, opts?}
//              -> {type:"connect", ref, client, namespace, id, transport, recovered}
//               | {type:"connect_error", ref, client, namespace, message, data}
//              Extra "namespaces" are opened on the same Manager; their
//              connect reports carry ref null.
//   emit       {client, namespace, event, args, ack, timeout}
//              -> {type:"ack", ref, args} | {type:"emitted", ref}
//   onAck      {client, namespace, event, reply}  -> {type:"done", ref}
//   disconnect {client, namespace}                -> {type:"done", ref}
//   close      {client}   (every namespace, and forget the Manager) -> done
//   transport  {client}   -> {type:"transport", ref, name}
//   roundtrip  {value}    -> {type:"roundtrip", ref, value, buffers}
//   quit
// Unsolicited reports: event, disconnect, upgrade, connect (ref null, for
// reconnections and extra namespaces), connect_error (ref null).
// Binary travels as {"$bin": "<base64>"} anywhere inside args.

const readline = require('readline');
const { Manager } = require('socket.io-client');
const clientVersion = require('socket.io-client/package.json').version;

/** client name -> Manager */
const managers = new Map();
/** `${client}\0${namespace}` -> Socket */
const sockets = new Map();
/** `${client}\0${namespace}\0${event}` -> reply array, or null to echo */
const ackReplies = new Map();
/** engines whose "upgrade" we already listen to */
const watchedEngines = new WeakSet();

const key = (...parts) => parts.join('\0');

function send(report) {
  process.stdout.write(JSON.stringify(report) + '\n');
}

function isBinary(value) {
  return Buffer.isBuffer(value) || value instanceof ArrayBuffer || ArrayBuffer.isView(value);
}

function toBuffer(value) {
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof ArrayBuffer) return Buffer.from(value);
  return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

/** Replace every Buffer/ArrayBuffer/typed array with {"$bin": base64}. */
function encode(value) {
  if (isBinary(value)) return { $bin: toBuffer(value).toString('base64') };
  if (Array.isArray(value)) return value.map(encode);
  if (value !== null && typeof value === 'object') {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = encode(v);
    return out;
  }
  return value;
}

/** Replace every {"$bin": base64} with a Buffer. */
function decode(value) {
  if (Array.isArray(value)) return value.map(decode);
  if (value !== null && typeof value === 'object') {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === '$bin' && typeof value.$bin === 'string') {
      return Buffer.from(value.$bin, 'base64');
    }
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = decode(v);
    return out;
  }
  return value;
}

function countBuffers(value) {
  if (isBinary(value)) return 1;
  if (Array.isArray(value)) return value.reduce((n, v) => n + countBuffers(v), 0);
  if (value !== null && typeof value === 'object') {
    return Object.values(value).reduce((n, v) => n + countBuffers(v), 0);
  }
  return 0;
}

function transportName(manager) {
  const engine = manager && manager.engine;
  return engine && engine.transport ? engine.transport.name : null;
}

function watchEngine(client, manager) {
  const engine = manager.engine;
  if (!engine || watchedEngines.has(engine)) return;
  watchedEngines.add(engine);
  engine.on('upgrade', (transport) => {
    send({ type: 'upgrade', client, transport: transport.name });
  });
}

function getManager(client, url, opts) {
  let manager = managers.get(client);
  if (manager) return manager;
  const managerOpts = { reconnection: false, ...opts };
  delete managerOpts.auth;
  delete managerOpts.forceNew;
  delete managerOpts.multiplex;
  manager = new Manager(url, managerOpts);
  managers.set(client, manager);
  watchEngine(client, manager);
  manager.on('open', () => watchEngine(client, manager));
  return manager;
}

function openSocket(cmd, namespace, ref) {
  const { client } = cmd;
  const opts = cmd.opts || {};
  const k = key(client, namespace);
  const existing = sockets.get(k);
  if (existing && existing.connected) {
    throw new Error(`client ${client} is already connected to ${namespace}`);
  }
  const manager = getManager(client, cmd.url, opts);
  let socket = existing;
  if (!socket) {
    socket = manager.socket(namespace, opts.auth !== undefined ? { auth: opts.auth } : {});
    sockets.set(k, socket);
    attach(client, namespace, socket);
  }
  socket.pendingRef = ref;
  if (!socket.connected && !socket.active) socket.connect();
  watchEngine(client, manager);
}

function attach(client, namespace, socket) {
  socket.on('connect', () => {
    const ref = socket.pendingRef === undefined ? null : socket.pendingRef;
    socket.pendingRef = null;
    send({
      type: 'connect',
      ref,
      client,
      namespace,
      id: socket.id,
      transport: transportName(socket.io),
      recovered: socket.recovered === true,
    });
  });
  socket.on('connect_error', (err) => {
    const ref = socket.pendingRef === undefined ? null : socket.pendingRef;
    socket.pendingRef = null;
    send({
      type: 'connect_error',
      ref,
      client,
      namespace,
      message: err && err.message !== undefined ? String(err.message) : String(err),
      data: err && err.data !== undefined ? encode(err.data) : null,
    });
  });
  socket.on('disconnect', (reason) => {
    send({ type: 'disconnect', client, namespace, reason });
  });
  socket.onAny((event, ...args) => {
    let ack = null;
    if (args.length > 0 && typeof args[args.length - 1] === 'function') ack = args.pop();
    send({ type: 'event', client, namespace, event, args: encode(args) });
    const ackKey = key(client, namespace, event);
    if (ack && ackReplies.has(ackKey)) {
      const reply = ackReplies.get(ackKey);
      if (reply === null) ack(...args);
      else ack(...decode(reply));
    }
  });
}

function findSocket(cmd) {
  const namespace = cmd.namespace || '/';
  const socket = sockets.get(key(cmd.client, namespace));
  if (!socket) throw new Error(`no socket for client ${cmd.client} on ${namespace}`);
  return socket;
}

function closeClient(client) {
  for (const [k, socket] of Array.from(sockets.entries())) {
    if (k.split('\0')[0] === client) {
      socket.disconnect();
      sockets.delete(k);
    }
  }
  const manager = managers.get(client);
  if (manager) {
    managers.delete(client);
    manager._close();
  }
}

const commands = {
  connect(cmd) {
    const namespace = cmd.namespace || '/';
    openSocket(cmd, namespace, cmd.ref);
    for (const extra of cmd.namespaces || []) {
      if (extra !== namespace) openSocket(cmd, extra, null);
    }
  },

  emit(cmd) {
    const socket = findSocket(cmd);
    const args = decode(cmd.args || []);
    if (!cmd.ack) {
      socket.emit(cmd.event, ...args);
      send({ type: 'emitted', ref: cmd.ref });
      return;
    }
    const timeout = typeof cmd.timeout === 'number' ? cmd.timeout : 10000;
    socket.timeout(timeout).emit(cmd.event, ...args, (err, ...reply) => {
      if (err) {
        send({ type: 'error', ref: cmd.ref, message: `ack timeout after ${timeout} ms: ${err.message}` });
      } else {
        send({ type: 'ack', ref: cmd.ref, args: encode(reply) });
      }
    });
  },

  onAck(cmd) {
    const reply = cmd.reply === undefined ? null : cmd.reply;
    ackReplies.set(key(cmd.client, cmd.namespace || '/', cmd.event), reply);
    send({ type: 'done', ref: cmd.ref });
  },

  disconnect(cmd) {
    findSocket(cmd).disconnect();
    send({ type: 'done', ref: cmd.ref });
  },

  close(cmd) {
    closeClient(cmd.client);
    send({ type: 'done', ref: cmd.ref });
  },

  transport(cmd) {
    const manager = managers.get(cmd.client);
    if (!manager) throw new Error(`no client ${cmd.client}`);
    send({ type: 'transport', ref: cmd.ref, name: transportName(manager) });
  },

  roundtrip(cmd) {
    const value = decode(cmd.value);
    send({ type: 'roundtrip', ref: cmd.ref, value: encode(value), buffers: countBuffers(value) });
  },

  quit() {
    for (const client of Array.from(managers.keys())) {
      try {
        closeClient(client);
      } catch (err) {
        // going away anyway
      }
    }
    process.exit(0);
  },
};

function handle(line) {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    send({ type: 'error', ref: null, message: `bad JSON: ${err.message}` });
    return;
  }
  const ref = cmd.ref === undefined ? null : cmd.ref;
  const fn = Object.prototype.hasOwnProperty.call(commands, cmd.cmd) ? commands[cmd.cmd] : null;
  if (!fn) {
    send({ type: 'error', ref, message: `unknown command ${JSON.stringify(cmd.cmd)}` });
    return;
  }
  try {
    fn(cmd);
  } catch (err) {
    send({ type: 'error', ref, message: err && err.message ? err.message : String(err) });
  }
}

process.on('uncaughtException', (err) => {
  send({ type: 'error', ref: null, message: `uncaught: ${err && err.stack ? err.stack : err}` });
});

const rl = readline.createInterface({ input: process.stdin, terminal: false });
rl.on('line', handle);
rl.on('close', () => commands.quit());

send({ type: 'ready', kind: 'node', version: clientVersion, pid: process.pid });
