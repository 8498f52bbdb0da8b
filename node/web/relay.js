// relay.js: Relay's browser SDK (docs/CLIENTS.md). One ES module without
// dependencies or build step, served by every node at /relay.js:
//
//   import { Relay } from '/relay.js';
//   const relay = new Relay('ws://localhost:8080', { shared: true });
//   relay.addEventListener('connected', (e) => console.log('on node', e.node));
//   await relay.subscribe('chat:lobby', (m) => console.log(m.data));
//   await relay.publish('chat:lobby', { text: 'hi' }); // resolved on the ack
//
// It speaks protocol mode (docs/PROTOCOL.md) on one WebSocket that
// reconnects by itself and subscribes again to every channel. With
// { shared: true } the tabs of an origin share one WebSocket, held by a
// SharedWorker that runs this same file.

/** Names the messages between a tab and the shared worker: tabs of another
 * version of this file get a worker of their own. */
const workerProtocol = 2;

const defaults = {
  shared: false,
  echo: false,
  /** @type {string[]} */ urls: [],
  token: '',
  /** @type {(() => Promise<string>)|null} */ getToken: null,
  minBackoff: 100,
  maxBackoff: 10000,
  pingInterval: 25000,
  timeout: 10000,
};

/**
 * @typedef {object} Options
 * @property {boolean} [shared] share one connection among all tabs of this
 *   origin through a SharedWorker (one connection per tab where there is
 *   none); default false
 * @property {boolean} [echo] receive this client's own publishes on the
 *   channels it subscribed to; default false
 * @property {string[]} [urls] more addresses of the same deployment, tried in
 *   turn after the first
 * @property {number} [minBackoff] ms; attempt n after a failure waits a random
 *   time up to min(maxBackoff, minBackoff·2ⁿ); default 100
 * @property {number} [maxBackoff] ms; default 10000
 * @property {number} [pingInterval] ms between pings that find a dead
 *   connection; default 25000
 * @property {number} [timeout] ms a connection attempt (with its
 *   resubscriptions) or a ping may take; default 10000
 * @property {string} [token] a token (docs/AUTH.md), sent in a connect
 *   command first on each connection, never in the URL
 * @property {() => Promise<string>} [getToken] fetches a token from the
 *   app's backend: called for each new connection and when the node asks
 *   for a refresh; instead of token
 */

/**
 * @typedef {object} Message
 * @property {string} channel
 * @property {any} data the JSON value published: an object, array, string,
 *   number, boolean or null (a raw-mode text frame that is not JSON is a
 *   string); a Uint8Array when binary
 * @property {boolean} binary
 * @property {number} offset the message's place in the channel's history
 *   (1, 2, 3, …); 0 when the channel keeps none
 */

/**
 * A refusal of the node, or a failure of the client. code is a stable code of
 * docs/PROTOCOL.md (forbidden, invalid_channel, limit_exceeded, unavailable,
 * …) or one of the client's: closed (the client stopped), unknown_outcome
 * (the connection ended before a publish's ack), already_subscribed,
 * not_subscribed (unsubscribed before the subscription was live).
 */
export class RelayError extends Error {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(message);
    this.name = 'RelayError';
    /** @type {string} */
    this.code = code;
  }
}

/**
 * What happened to a client's connection; a Relay dispatches one per event:
 * connected (url, node), disconnected (url, node, code, reason, retry,
 * error), gap (channel), recovered (channel), unsubscribed (channel, error),
 * closed (error). recovered: the channel's messages missed while
 * disconnected follow, from its history, so that none is lost; gap: some
 * may be missing.
 */
export class RelayEvent extends Event {
  /** @param {string} type @param {object} [fields] */
  constructor(type, fields = {}) {
    super(type);
    /** the connection's URL @type {string} */ this.url = '';
    /** the ID of the node serving it @type {string} */ this.node = '';
    /** close code, -1 when there was no connection @type {number} */ this.code = 0;
    /** close reason @type {string} */ this.reason = '';
    /** ms until the next attempt @type {number} */ this.retry = 0;
    /** why it failed, or why the client stopped @type {RelayError|null} */ this.error = null;
    /** the channel of gap, recovered and unsubscribed @type {string} */ this.channel = '';
    Object.assign(this, fields);
  }
}

/** A live subscription of a channel. */
export class Subscription {
  /** @param {Relay} relay @param {string} channel */
  constructor(relay, channel) {
    this.relay = relay;
    this.channel = channel;
  }

  /** Ends the subscription: its handler is not called again. */
  unsubscribe() {
    return this.relay.unsubscribe(this.channel);
  }
}

const channelPattern = /^[A-Za-z0-9_\-:.@/=]{1,255}$/;

/**
 * A protocol-mode client of Relay that reconnects by itself. Events:
 * connected, disconnected, gap, recovered, unsubscribed, closed
 * (RelayEvent).
 */
export class Relay extends EventTarget {
  /**
   * Starts connecting at once; the connected event tells when it is.
   * @param {string} [url] ws:// or wss:// (or http:// https://) address of a
   *   node or load balancer; default: the host this page came from
   * @param {Options} [options]
   */
  constructor(url = location.origin, options = {}) {
    super();
    const opts = { ...defaults, ...options };
    /** @type {'connecting'|'connected'|'closed'} */
    this.state = 'connecting';
    /** the ID of the node serving this client, '' while not connected */
    this.node = '';
    /** true when the connection is shared with other tabs */
    this.shared = false;
    /** @type {Map<string, (m: Message) => void>} */
    this.handlers = new Map();
    const urls = [url, ...opts.urls].map((u) => endpoint(u, false));
    const emit = (/** @type {object} */ e) => this.onEvent(e);
    const deliver = (/** @type {Message} */ m) => this.deliver(m);
    /** @type {Conn|PortConn} */
    this.conn = null;
    // getToken is a function of this tab: a worker cannot call it.
    if (opts.shared && !opts.getToken && typeof SharedWorker === 'function') {
      try {
        this.conn = new PortConn(urls, opts, emit, deliver);
        this.shared = true;
      } catch {
        // A worker script refused (e.g. by a policy): one connection per tab.
      }
    }
    if (!this.conn) {
      // The shared worker's connection never echoes: it hands a tab's
      // publishes to the other tabs itself.
      const own = [url, ...opts.urls].map((u) => endpoint(u, opts.echo));
      this.conn = new Conn(own, opts, emit, deliver);
    }
  }

  /**
   * Subscribes to channel. Resolves once the subscription is live: every
   * message published afterwards reaches handler, in order, across
   * reconnections: on a channel with history the missed messages follow
   * and a recovered event says so; otherwise a gap event says some may be
   * missing. While the client is
   * reconnecting, it waits for the next connection.
   * @param {string} channel
   * @param {(m: Message) => void} handler
   * @returns {Promise<Subscription>}
   */
  async subscribe(channel, handler) {
    checkChannel(channel);
    if (this.handlers.has(channel)) {
      throw new RelayError('already_subscribed', `this client is already subscribed to ${channel}`);
    }
    this.handlers.set(channel, handler);
    try {
      await this.conn.subscribe(channel);
    } catch (err) {
      if (this.handlers.get(channel) === handler) this.handlers.delete(channel);
      throw err;
    }
    return new Subscription(this, channel);
  }

  /**
   * Ends the subscription of channel.
   * @param {string} channel
   * @returns {Promise<void>}
   */
  async unsubscribe(channel) {
    if (!this.handlers.delete(channel)) return;
    await this.conn.unsubscribe(channel);
  }

  /**
   * Publishes data to channel on every node. Resolves on the node's ack
   * (the broker has the message); rejects with a RelayError: the node's
   * code, closed, or unknown_outcome when the connection ended after the
   * message was sent and before the ack (it may or may not have been
   * published). While the client is reconnecting, it waits for the next
   * connection.
   * @param {string} channel
   * @param {any} data any value JSON.stringify takes
   * @returns {Promise<void>}
   */
  async publish(channel, data) {
    checkChannel(channel);
    if (data === undefined) throw new RelayError('bad_request', 'data is undefined');
    await this.conn.publish(channel, data);
  }

  /** Closes the connection (1000) and stops the client for good; pending
   * calls reject with code closed. */
  close() {
    this.conn.close();
  }

  /** @param {Message} m */
  deliver(m) {
    const handler = this.handlers.get(m.channel);
    if (!handler) return;
    try {
      handler(m);
    } catch (err) {
      reportError(err);
    }
  }

  /** @param {any} e an event of the connection, errors as {code, message} */
  onEvent(e) {
    const { type, ...fields } = e; // an Event's type is read-only
    if (e.error) fields.error = new RelayError(e.error.code, e.error.message);
    switch (type) {
      case 'connected':
        this.state = 'connected';
        this.node = e.node;
        break;
      case 'disconnected':
        this.state = 'connecting';
        this.node = '';
        break;
      case 'unsubscribed':
        this.handlers.delete(e.channel);
        break;
      case 'closed':
        this.state = 'closed';
        this.node = '';
        break;
    }
    this.dispatchEvent(new RelayEvent(type, fields));
  }
}

/**
 * A subscribed channel of a Conn.
 * @typedef {object} Sub
 * @property {boolean} live subscribed on a connection
 * @property {{resolve: Function, reject: Function}[]} waiters subscribe calls
 * @property {string} epoch of the last subscribe reply; '' without history
 * @property {number} offset of the last message handled
 */

/** The subscribe command of channel: with since when it has a position.
 * @param {string} channel @param {Sub} sub */
function subscribeCmd(channel, sub) {
  if (!sub.epoch) return { cmd: 'subscribe', channel };
  return { cmd: 'subscribe', channel, since: { offset: sub.offset, epoch: sub.epoch } };
}

/** @param {string} channel */
function checkChannel(channel) {
  if (typeof channel !== 'string' || !channelPattern.test(channel) || channel.startsWith('__relay')) {
    throw new RelayError('invalid_channel', `invalid channel name ${JSON.stringify(channel)}: 1-255 bytes of A-Z a-z 0-9 _ - : . @ / =`);
  }
}

/**
 * The protocol-mode URL of a user's URL: ws(s), /ws when there is no path,
 * and hello=true so that the node names itself (browsers cannot read the
 * X-Relay-Node header).
 * @param {string} raw
 * @param {boolean} echo
 */
function endpoint(raw, echo) {
  const u = new URL(raw, location.href);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') {
    throw new RelayError('bad_request', `url ${raw}: want ws:// or wss://`);
  }
  if (u.pathname === '' || u.pathname === '/') u.pathname = '/ws';
  u.searchParams.set('hello', 'true');
  if (echo) u.searchParams.set('echo', 'true');
  return u.toString();
}

/** A random delay in [0, limit] ms. @param {number} limit */
const jitter = (limit) => Math.random() * limit;

/** A connection ended before a call's reply. */
const lost = new RelayError('connection_lost', 'connection lost');

/** @param {any} err */
const plain = (err) => err && { code: err.code || 'internal', message: err.message || String(err) };

/**
 * Conn is one reconnecting WebSocket: a tab's own, or the shared worker's.
 * It reports events as plain objects (errors as {code, message}, so that
 * they cross postMessage) and messages to deliver.
 */
class Conn {
  /**
   * @param {string[]} urls protocol-mode URLs, tried in turn
   * @param {typeof defaults} opts
   * @param {(e: object) => void} emit
   * @param {(m: Message) => void} deliver
   */
  constructor(urls, opts, emit, deliver) {
    this.urls = urls;
    this.opts = opts;
    this.emit = emit;
    this.deliver = deliver;
    /** channel -> live: subscribed on a connection; waiters: subscribe
     * calls; epoch and offset: the position of the last message handled
     * (epoch '' when the channel keeps no history or it was lost)
     * @type {Map<string, Sub>} */
    this.channels = new Map();
    /** replies awaited, by command id @type {Map<number, {resolve: Function, reject: Function}>} */
    this.pending = new Map();
    /** calls waiting for a ready connection @type {{resolve: Function, reject: Function}[]} */
    this.waiting = [];
    this.nextID = 0;
    this.attempt = 0; // failed attempts in a row
    this.next = 0; // index of the next URL
    /** @type {WebSocket|null} */
    this.ws = null;
    this.ready = false; // every channel subscribed on ws
    this.url = '';
    this.node = '';
    /** @type {RelayError|null} why the client stopped */
    this.stopped = null;
    this.timer = 0; // the next attempt, or the ping
    this.open();
  }

  open() {
    const url = this.urls[this.next % this.urls.length];
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      this.stop(new RelayError('bad_request', String(err)));
      return;
    }
    this.ws = ws;
    this.url = url;
    this.node = '';
    let opened = false;
    const deadline = setTimeout(() => this.drop(ws, opened, 'timeout'), this.opts.timeout);
    ws.onopen = () => {
      opened = true;
      this.resubscribe(ws, deadline);
    };
    ws.onmessage = (e) => this.onFrame(ws, e.data);
    ws.onclose = (e) => {
      clearTimeout(deadline);
      this.ended(ws, opened, e.code, e.reason);
    };
  }

  /**
   * Sends the token, then subscribes a new connection to every channel (from
   * its position, when it has one) before anything else, then reports it
   * connected (the node's hello, its first object, has named it by then).
   * @param {WebSocket} ws
   * @param {number} deadline
   */
  async resubscribe(ws, deadline) {
    if (!(await this.connect(ws))) return;
    const channels = [...this.channels];
    const calls = channels.map(([channel, sub]) => this.call(ws, subscribeCmd(channel, sub)).then((r) => this.position(sub, r), (err) => ({ err })));
    const ping = this.call(ws, { cmd: 'ping' }).then(() => true, () => false);
    const results = await Promise.all(calls);
    if (!(await ping) || this.ws !== ws) return; // ended: ended() reports it
    clearTimeout(deadline);
    channels.forEach(([channel, sub], i) => this.settle(ws, channel, sub, results[i], true));
    this.attempt = 0;
    this.ready = true;
    for (const [channel, sub] of this.channels) {
      if (!sub.live && !channels.some(([, s]) => s === sub)) this.subscribeOn(ws, channel, sub);
    }
    this.emit({ type: 'connected', url: this.url, node: this.node });
    for (const w of this.waiting.splice(0)) w.resolve(ws);
    this.timer = setInterval(() => this.ping(ws), this.opts.pingInterval);
  }

  /**
   * Records the outcome of a subscribe command.
   * @param {WebSocket} ws
   * @param {string} channel
   * @param {Sub} sub
   * @param {{err?: any, recovered?: boolean}} outcome
   * @param {boolean} again a resubscription
   */
  settle(ws, channel, sub, { err = null, recovered = false }, again) {
    if (err === lost) return; // the next connection subscribes it
    const ok = !err || err.code === 'already_subscribed';
    if (this.channels.get(channel) !== sub) {
      // Unsubscribed meanwhile; if subscribed again, that subscribe counts.
      if (ok && !this.channels.has(channel)) this.send(ws, { cmd: 'unsubscribe', channel });
      return;
    }
    if (ok) {
      if (again && sub.live) this.emit({ type: recovered ? 'recovered' : 'gap', url: this.url, node: this.node, channel });
      sub.live = true;
      for (const w of sub.waiters.splice(0)) w.resolve();
      return;
    }
    this.channels.delete(channel);
    for (const w of sub.waiters.splice(0)) w.reject(err);
    if (sub.live) this.emit({ type: 'unsubscribed', url: this.url, node: this.node, channel, error: plain(err) });
  }

  /**
   * Takes the channel's position from a subscribe reply. When recovered,
   * the missed messages follow the reply and move the offset themselves.
   * @param {Sub} sub
   * @param {any} result {offset, epoch, recovered} on a channel with history
   * @returns {{recovered: boolean}}
   */
  position(sub, result) {
    const recovered = result?.recovered === true;
    if (!recovered) {
      const epoch = typeof result?.epoch === 'string' ? result.epoch : '';
      const offset = typeof result?.offset === 'number' ? result.offset : 0;
      // A push can come before the reply: keep the later of the two.
      sub.offset = sub.epoch === epoch || sub.epoch === '' ? Math.max(sub.offset, offset) : offset;
      sub.epoch = epoch;
    }
    return { recovered };
  }

  /** The token of the options, or a new one from getToken. */
  async token() {
    return this.opts.getToken ? await this.opts.getToken() : this.opts.token;
  }

  /**
   * Sends the token, when there is one, as the connection's first command.
   * A refused token stops the client; a failed getToken is retried with
   * backoff, like a failed handshake. false when ws is done with.
   * @param {WebSocket} ws
   */
  async connect(ws) {
    if (!this.opts.token && !this.opts.getToken) return true;
    let token;
    try {
      token = await this.token();
    } catch (err) {
      this.drop(ws, false, `getToken: ${err}`); // retried with backoff
      return false;
    }
    try {
      await this.call(ws, { cmd: 'connect', token });
      return true;
    } catch (err) {
      if (err !== lost) this.stop(err);
      return false;
    }
  }

  /** Answers the node's refresh request with a new token; without one the
   * node closes the connection when the grace ends. @param {WebSocket} ws */
  async refresh(ws) {
    try {
      await this.call(ws, { cmd: 'refresh', token: await this.token() });
    } catch (err) {
      if (err !== lost) reportError(err);
    }
  }

  /** @param {WebSocket} ws @param {string} channel @param {Sub} sub */
  subscribeOn(ws, channel, sub) {
    this.call(ws, subscribeCmd(channel, sub)).then(
      (r) => this.settle(ws, channel, sub, this.position(sub, r), false),
      (err) => this.settle(ws, channel, sub, { err }, false),
    );
  }

  /** @param {string} channel @returns {Promise<void>} */
  subscribe(channel) {
    if (this.stopped) return Promise.reject(this.stopped);
    /** @type {Sub} */
    const sub = { live: false, waiters: [], epoch: '', offset: 0 };
    this.channels.set(channel, sub);
    const p = new Promise((resolve, reject) => sub.waiters.push({ resolve, reject }));
    if (this.ready) this.subscribeOn(this.ws, channel, sub);
    return p; // otherwise the next connection subscribes it
  }

  /** @param {string} channel */
  async unsubscribe(channel) {
    const sub = this.channels.get(channel);
    if (!sub) return;
    this.channels.delete(channel);
    for (const w of sub.waiters.splice(0)) w.reject(new RelayError('not_subscribed', `unsubscribed from ${channel} before it was live`));
    if (!this.ready || !sub.live) return; // a subscribe in flight undoes itself
    try {
      await this.call(this.ws, { cmd: 'unsubscribe', channel });
    } catch (err) {
      if (err !== lost && err.code !== 'not_subscribed') throw err;
    }
  }

  /** @param {string} channel @param {any} data */
  async publish(channel, data) {
    let ws = await this.whenReady();
    while (ws !== this.ws) ws = await this.whenReady(); // it ended meanwhile
    try {
      await this.call(ws, { cmd: 'publish', channel, data });
    } catch (err) {
      if (err === lost) {
        throw new RelayError('unknown_outcome', 'connection lost before the node answered: the publish may or may not have taken effect');
      }
      throw err;
    }
  }

  /** @returns {Promise<WebSocket>} */
  whenReady() {
    if (this.stopped) return Promise.reject(this.stopped);
    if (this.ready) return Promise.resolve(this.ws);
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  /**
   * Sends cmd and resolves with its result, or rejects with the node's
   * RelayError, or lost when the connection ends first.
   * @param {WebSocket} ws
   * @param {object} cmd
   */
  call(ws, cmd) {
    if (ws !== this.ws) return Promise.reject(lost);
    return new Promise((resolve, reject) => {
      const id = ++this.nextID;
      this.pending.set(id, { resolve, reject });
      this.send(ws, { id, ...cmd });
    });
  }

  /** @param {WebSocket} ws @param {object} cmd */
  send(ws, cmd) {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(cmd));
  }

  /** Pings the node; no reply within the timeout ends the connection.
   * @param {WebSocket} ws */
  ping(ws) {
    const deadline = setTimeout(() => this.drop(ws, true, 'ping timeout'), this.opts.timeout);
    this.call(ws, { cmd: 'ping' }).then(() => clearTimeout(deadline), () => clearTimeout(deadline));
  }

  /**
   * A frame holds one or more objects, one per line (batching): replies,
   * pushes, and the hello.
   * @param {WebSocket} ws
   * @param {any} data
   */
  onFrame(ws, data) {
    if (this.ws !== ws || typeof data !== 'string') return;
    for (const line of data.split('\n')) {
      let o;
      try {
        o = JSON.parse(line);
      } catch {
        this.drop(ws, true, 'unreadable frame');
        return;
      }
      if (o === null || typeof o !== 'object') continue;
      if ('result' in o || 'error' in o) {
        const call = this.pending.get(o.id);
        if (!call) continue; // an error reply to no command of ours
        this.pending.delete(o.id);
        if (o.error) call.reject(new RelayError(o.error.code, o.error.message));
        else call.resolve(o.result);
      } else if (typeof o.channel === 'string') {
        const sub = this.channels.get(o.channel);
        if (!sub) continue; // just unsubscribed
        const binary = o.binary === true;
        const offset = typeof o.offset === 'number' ? o.offset : 0;
        if (offset) sub.offset = offset;
        this.deliver({ channel: o.channel, data: binary ? Uint8Array.from(atob(o.data), (c) => c.charCodeAt(0)) : o.data, binary, offset });
      } else if (o.gap && typeof o.gap.channel === 'string') {
        const sub = this.channels.get(o.gap.channel);
        if (!sub) continue;
        // Messages may be missing, or the epoch changed: the position is
        // worthless until the next subscribe reply.
        sub.epoch = '';
        sub.offset = 0;
        this.emit({ type: 'gap', url: this.url, node: this.node, channel: o.gap.channel });
      } else if (o.refresh) {
        this.refresh(ws);
      } else if (typeof o.node === 'string') {
        this.node = o.node;
      }
    }
  }

  /**
   * Gives up on ws at once: a connection that does not answer may take
   * long to close.
   * @param {WebSocket} ws @param {boolean} opened @param {string} reason
   */
  drop(ws, opened, reason) {
    if (this.ws !== ws) return;
    ws.close();
    this.ended(ws, opened, 1006, reason);
  }

  /**
   * ws has ended: fail its calls, then reconnect, or stop when the node's
   * close says reconnecting cannot help.
   * @param {WebSocket} ws
   * @param {boolean} opened whether the handshake had succeeded
   * @param {number} code
   * @param {string} reason
   */
  ended(ws, opened, code, reason) {
    if (this.ws !== ws) return;
    this.ws = null;
    this.ready = false;
    clearInterval(this.timer);
    const calls = [...this.pending.values()];
    this.pending.clear();
    for (const c of calls) c.reject(lost);
    const { url, node } = this;
    let retry;
    if (opened) {
      if (code === 1008 || (code >= 4000 && code < 5000)) {
        const error = new RelayError('refused', `the node closed the connection with ${code} ${reason}; not reconnecting`);
        this.emit({ type: 'disconnected', url, node, code, reason, error: plain(error) });
        this.stop(error);
        return;
      }
      // 1012: a draining node; another one takes us now.
      retry = code === 1012 ? jitter(this.opts.minBackoff) : this.backoff(0);
    } else {
      // A browser does not tell why a handshake failed (HTTP status), so
      // every failed attempt is retried.
      this.attempt++;
      retry = this.backoff(this.attempt);
      code = -1;
    }
    this.next++;
    this.emit({ type: 'disconnected', url, node, code, reason, retry });
    this.timer = setTimeout(() => this.open(), retry);
  }

  /** The delay before attempt n: full jitter under an exponential cap.
   * @param {number} n */
  backoff(n) {
    return jitter(Math.min(this.opts.maxBackoff, this.opts.minBackoff * 2 ** Math.min(n, 30)));
  }

  /** Stops the client: closes the connection with 1000, fails every
   * pending call, reports closed. @param {RelayError|null} [error] */
  stop(error = null) {
    if (this.stopped) return;
    this.stopped = error || new RelayError('closed', 'relay client closed');
    clearTimeout(this.timer);
    clearInterval(this.timer);
    const ws = this.ws;
    this.ws = null;
    this.ready = false;
    if (ws) ws.close(1000);
    const calls = [...this.pending.values(), ...this.waiting.splice(0)];
    for (const sub of this.channels.values()) calls.push(...sub.waiters.splice(0));
    this.pending.clear();
    for (const c of calls) c.reject(this.stopped);
    this.emit({ type: 'closed', error: plain(error) });
  }

  close() {
    this.stop(null);
  }
}

/**
 * PortConn is a tab's side of the shared connection: the same calls as a
 * Conn, forwarded to the SharedWorker that holds it.
 */
class PortConn {
  /**
   * @param {string[]} urls
   * @param {typeof defaults} opts
   * @param {(e: object) => void} emit
   * @param {(m: Message) => void} deliver
   */
  constructor(urls, opts, emit, deliver) {
    const worker = new SharedWorker(import.meta.url, { type: 'module', name: `relay.js/${workerProtocol} ${urls.join(' ')}` });
    this.port = worker.port;
    /** @type {Map<number, {resolve: Function, reject: Function}>} */
    this.calls = new Map();
    this.nextID = 0;
    this.closed = false;
    this.port.onmessage = (e) => {
      const m = e.data;
      if (this.closed) return;
      if (m.op === 'event') {
        emit(m.event);
        if (m.event.type === 'closed') this.closed = true;
      } else if (m.op === 'message') {
        deliver(m.message);
      } else if (m.op === 'reply') {
        const call = this.calls.get(m.id);
        this.calls.delete(m.id);
        if (m.error) call?.reject(new RelayError(m.error.code, m.error.message));
        else call?.resolve();
      }
    };
    worker.addEventListener('error', () => {
      if (this.closed) return;
      this.fail(new RelayError('internal', 'the shared worker failed to start'));
      emit({ type: 'closed', error: { code: 'internal', message: 'the shared worker failed to start' } });
    });
    // The worker hears of a tab that goes away from this, or from the
    // port's close event where browsers have one.
    addEventListener('pagehide', (e) => {
      if (!e.persisted) this.close();
    });
    const { minBackoff, maxBackoff, pingInterval, timeout, token, echo } = opts;
    this.port.postMessage({ op: 'open', urls, opts: { minBackoff, maxBackoff, pingInterval, timeout, token }, echo });
  }

  /** @param {string} op @param {object} fields */
  call(op, fields) {
    if (this.closed) return Promise.reject(new RelayError('closed', 'relay client closed'));
    return new Promise((resolve, reject) => {
      const id = ++this.nextID;
      this.calls.set(id, { resolve, reject });
      this.port.postMessage({ op, id, ...fields });
    });
  }

  /** @param {string} channel */
  subscribe(channel) {
    return this.call('subscribe', { channel });
  }

  /** @param {string} channel */
  unsubscribe(channel) {
    return this.call('unsubscribe', { channel });
  }

  /** @param {string} channel @param {any} data */
  publish(channel, data) {
    return this.call('publish', { channel, data });
  }

  close() {
    if (this.closed) return;
    this.port.postMessage({ op: 'close' });
    this.port.close();
    this.fail(new RelayError('closed', 'relay client closed'));
  }

  /** Ends every call with err. @param {RelayError} err */
  fail(err) {
    this.closed = true;
    for (const c of this.calls.values()) c.reject(err);
    this.calls.clear();
  }
}

// The shared worker: one Conn for every tab of the origin. Each tab's
// subscriptions are counted: the channel is subscribed on the first tab's
// subscribe and unsubscribed after the last tab leaves it. A publish of one
// tab reaches the other tabs subscribed to its channel from here, since the
// node does not send a connection its own messages.
if (typeof SharedWorkerGlobalScope === 'function' && globalThis instanceof SharedWorkerGlobalScope) {
  /** @type {Conn|null} */
  let conn = null;
  /** @type {{type: string, url?: string, node?: string}|null} the last connected event */
  let connected = null;
  /** the tabs: their echo option and channels @type {Map<MessagePort, {echo: boolean, channels: Set<string>}>} */
  const tabs = new Map();
  /** channel -> the tabs subscribed, and the subscribe under way or done
   * @type {Map<string, {tabs: Set<MessagePort>, live: Promise<void>}>} */
  const channels = new Map();

  /** @param {MessagePort} port @param {object} m */
  const post = (port, m) => port.postMessage(m);

  /** @param {any} e */
  const onEvent = (e) => {
    if (e.type === 'connected') connected = e;
    if (e.type === 'disconnected' || e.type === 'closed') connected = null;
    if (e.type === 'gap' || e.type === 'recovered' || e.type === 'unsubscribed') {
      const ch = channels.get(e.channel);
      if (!ch) return;
      if (e.type === 'unsubscribed') channels.delete(e.channel);
      for (const port of ch.tabs) {
        if (e.type === 'unsubscribed') tabs.get(port)?.channels.delete(e.channel);
        post(port, { op: 'event', event: e });
      }
      return;
    }
    for (const port of tabs.keys()) post(port, { op: 'event', event: e });
    if (e.type === 'closed') {
      // The connection stopped for good, and so did every tab's client;
      // the next tab to come starts anew.
      tabs.clear();
      channels.clear();
    }
  };

  /** @param {Message} m @param {MessagePort|null} [from] the publishing tab */
  const deliver = (m, from = null) => {
    for (const port of channels.get(m.channel)?.tabs ?? []) {
      if (port !== from || tabs.get(port)?.echo) post(port, { op: 'message', message: m });
    }
  };

  /** @param {MessagePort} port @param {string} channel */
  const leave = (port, channel) => {
    tabs.get(port)?.channels.delete(channel);
    const ch = channels.get(channel);
    if (!ch || !ch.tabs.delete(port) || ch.tabs.size > 0) return Promise.resolve();
    channels.delete(channel);
    return conn.unsubscribe(channel);
  };

  /** @param {MessagePort} port */
  const gone = (port) => {
    const tab = tabs.get(port);
    if (!tab) return;
    for (const channel of [...tab.channels]) leave(port, channel).catch(() => {});
    tabs.delete(port);
    if (tabs.size === 0 && conn) {
      conn.close();
      conn = null;
    }
  };

  /** @param {MessagePort} port @param {any} m */
  const handle = async (port, m) => {
    const tab = tabs.get(port);
    switch (m.op) {
      case 'open':
        tabs.set(port, { echo: m.echo === true, channels: new Set() });
        if (!conn || conn.stopped) {
          connected = null;
          conn = new Conn(m.urls, { ...defaults, ...m.opts }, onEvent, deliver);
        } else if (connected) {
          post(port, { op: 'event', event: connected });
        }
        return;
      case 'close':
        gone(port);
        return;
    }
    if (!tab) return;
    try {
      switch (m.op) {
        case 'subscribe': {
          let ch = channels.get(m.channel);
          if (!ch) {
            ch = { tabs: new Set(), live: conn.subscribe(m.channel) };
            channels.set(m.channel, ch);
          }
          ch.tabs.add(port);
          tab.channels.add(m.channel);
          try {
            await ch.live;
          } catch (err) {
            if (channels.get(m.channel) === ch) channels.delete(m.channel);
            tab.channels.delete(m.channel);
            throw err;
          }
          break;
        }
        case 'unsubscribe':
          await leave(port, m.channel);
          break;
        case 'publish':
          await conn.publish(m.channel, m.data);
          // As the node would push it: the JSON value.
          deliver({ channel: m.channel, data: JSON.parse(JSON.stringify(m.data)), binary: false, offset: 0 }, port);
          break;
      }
      post(port, { op: 'reply', id: m.id });
    } catch (err) {
      post(port, { op: 'reply', id: m.id, error: plain(err) });
    }
  };

  globalThis.onconnect = (/** @type {MessageEvent} */ e) => {
    const port = e.ports[0];
    port.onmessage = (m) => handle(port, m.data);
    port.addEventListener('close', () => gone(port));
  };
}
