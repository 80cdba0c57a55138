// lobby dashboard (SPEC §16): every node and its labels, live from /v1/events.
//
// Data: GET /v1/discoveries paints the list at once (with last_check), then
// GET /v1/events streams a snapshot (join events, then a ": live" comment) and every
// change after it; the snapshot reconciles the first answer. The stream is read with
// fetch() and parsed here, so the token travels in a header, never in a URL; after a
// break it resumes with Last-Event-ID. Events are applied in batches, once per frame.
// Scale: a label -> nodes index makes filtering a few set unions; the list renders
// only the rows in view (fixed row height, rows recycled).
'use strict';

(() => {
  if (typeof document === 'undefined') {
    // the worker (see pollHeard): [hostname, last_check] of every node, off the main thread
    self.onmessage = async ({ data }) => {
      try {
        const headers = data.token ? { Authorization: `Token ${data.token}` } : {};
        const res = await fetch('/v1/discoveries', { headers, cache: 'no-store' });
        if (res.status === 403) return self.postMessage({ denied: true });
        if (!res.ok) return self.postMessage({ error: res.status });
        const list = await res.json();
        const hosts = list.map((d) => d.hostname);
        const lcs = Float64Array.from(list, (d) => d.last_check);
        self.postMessage({ hosts, lcs }, [lcs.buffer]);
      } catch (err) {
        self.postMessage({ error: String(err) });
      }
    };
    return;
  }
  const SCRIPT = document.currentScript.src;
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = 'lobby.token';
  const FLASH_MS = 1600; // how long a join/update/leave stays highlighted
  const LEAVE_MS = 1500; // a node that left stays (struck through) this long
  const STATS_EVERY = 3000;
  const OVERSCAN = 6;

  class Denied extends Error {}

  // -- state --------------------------------------------------------------------------

  const nodes = new Map(); // hostname -> node
  const byLabel = new Map(); // label -> Set of nodes (the filter's index)
  let order = []; // every node, sorted by hostname
  let orderDirty = false;
  let orderVersion = 0; // moves whenever a node enters or leaves `order`
  let visible = []; // order, filtered
  let visibleDirty = true;
  let filter = parseFilter('');
  let filterVersion = 0;
  let selected = ''; // hostname in the detail panel
  let view = 'nodes';
  let promService = '';
  let ownName = '';
  let skew = 0; // server clock minus ours, ms (from the Date header)
  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let lastEventId = null;
  let reconciling = null; // hostnames confirmed by a snapshot in progress
  let stream = null; // AbortController of the event stream
  let retryMs = 500;
  let generation = 0; // bumped on every (re)start: stale loops stop
  let firstRows = false;
  const queue = []; // parsed SSE events not applied yet, from queueHead on
  let queueHead = 0;
  const BUDGET_MS = 12; // of event work per frame
  let flushScheduled = false;
  const removals = []; // [time, node] of nodes that left, to drop after LEAVE_MS
  const counters = { resumed: 0, resets: 0, connects: 0, events: 0, heardPolls: 0 };
  let goneCount = 0; // nodes that left and are still shown

  // -- helpers ------------------------------------------------------------------------

  const nowServer = () => Date.now() + skew;

  function authHeaders() {
    return token ? { Authorization: `Token ${token}` } : {};
  }

  async function api(path, extra = {}) {
    const res = await fetch(path, { headers: { ...authHeaders(), ...extra }, cache: 'no-store' });
    if (res.status === 403) throw new Denied('access denied');
    if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
    const date = Date.parse(res.headers.get('date') || '');
    if (!Number.isNaN(date)) skew = date + 500 - Date.now(); // Date has whole seconds
    return res;
  }

  // A label name's hue: FNV-1a, mixed, mod 360. The seed and the turn were picked so
  // that the common names (service, location, role, prometheus, backup, public_ip4,
  // public_ip6) lie at least 46 degrees apart, with service blue.
  const hueCache = new Map();
  function hue(name) {
    let h = hueCache.get(name);
    if (h === undefined) {
      let x = 138846;
      for (let i = 0; i < name.length; i++) x = Math.imul(x ^ name.charCodeAt(i), 16777619);
      x ^= x >>> 16;
      x = Math.imul(x, 0x45d9f3b);
      x ^= x >>> 16;
      h = ((x >>> 0) + 250) % 360;
      hueCache.set(name, h);
    }
    return h;
  }

  function split(label) {
    const i = label.indexOf(':');
    return i < 0 ? [label, null] : [label.slice(0, i), label.slice(i + 1)];
  }

  function chip(label, tag = 'span') {
    const [name, value] = split(label);
    const el = document.createElement(tag);
    el.className = 'lb';
    el.style.setProperty('--h', hue(name));
    const k = document.createElement('span');
    k.className = 'k';
    k.textContent = name;
    el.append(k);
    if (value !== null) {
      const v = document.createElement('span');
      v.className = 'v';
      v.textContent = value;
      el.append(v);
    }
    el.dataset.label = label;
    return el;
  }

  const chipCache = new Map();
  function cachedChip(label) {
    let el = chipCache.get(label);
    if (!el) {
      if (chipCache.size > 50000) chipCache.clear();
      el = chip(label);
      chipCache.set(label, el);
    }
    return el.cloneNode(true);
  }

  function ago(seconds) {
    if (!Number.isFinite(seconds)) return '–';
    // below 0 only by our estimate of the server's clock (its Date header has whole
    // seconds and is refreshed once a second): heard just now
    if (seconds < 1) return 'now';
    if (seconds < 60) return `${Math.floor(seconds)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h`;
    return `${Math.floor(seconds / 86400)} d`;
  }

  function heard(node) {
    return node.lc ? ago(nowServer() / 1000 - node.lc) : '–';
  }

  const fmt = new Intl.NumberFormat('en');

  // -- filter -------------------------------------------------------------------------

  // `service:web` a label, `service:` a prefix (as labels= and prefixes= of the API;
  // several: any of them), anything else part of a hostname (all of them).
  function parseFilter(text) {
    const labels = new Set();
    const prefixes = [];
    const words = [];
    for (const term of text.split(/[\s,]+/)) {
      if (!term) continue;
      if (term.endsWith(':')) prefixes.push(term);
      else if (term.includes(':')) labels.add(term);
      else words.push(term.toLowerCase());
    }
    return { text, labels, prefixes, words, byLabel: labels.size + prefixes.length > 0 };
  }

  function matches(label) {
    return filter.labels.has(label) || filter.prefixes.some((p) => label.startsWith(p));
  }

  const byHost = (a, b) => (a.h < b.h ? -1 : a.h > b.h ? 1 : 0);

  function computeVisible() {
    const { byLabel: useIndex, labels, prefixes, words } = filter;
    if (!useIndex && !words.length) {
      visible = order;
      return;
    }
    const named = (n) => words.every((w) => n.hl.includes(w));
    if (!useIndex) {
      // typing a hostname narrows the last answer instead of scanning every node
      const last = lastWords;
      const base = last && last.version === orderVersion && extends_(words, last.words) ? last.visible : order;
      visible = base.filter(named);
      lastWords = { version: orderVersion, words, visible };
      return;
    }
    if (!indexReady) {
      visible = order.filter((n) => n.labels.some(matches) && named(n));
      return;
    }
    const pick = new Set();
    for (const label of labels) {
      const set = byLabel.get(label);
      if (set) for (const n of set) pick.add(n);
    }
    if (prefixes.length) {
      for (const [label, set] of byLabel) {
        if (prefixes.some((p) => label.startsWith(p))) for (const n of set) pick.add(n);
      }
    }
    if (pick.size * 8 < order.length) {
      visible = [...pick].filter(named).sort(byHost); // few: sort them
    } else {
      visible = order.filter((n) => pick.has(n) && named(n));
    }
  }
  let lastWords = null;
  function extends_(words, old) {
    return words.length === old.length && words.every((w, i) => w.includes(old[i]));
  }

  function setFilter(text, { fromInput = false } = {}) {
    if (text === filter.text) return;
    filter = parseFilter(text);
    filterVersion++;
    if (!fromInput) $('filter').value = text;
    const t0 = performance.now();
    computeVisible();
    visibleDirty = false;
    $('list').scrollTop = 0;
    render();
    performance.measure('lobby:filter', { start: t0 });
    // history.replaceState costs ~10 ms in Chromium: once typing pauses, not per key
    clearTimeout(hashTimer);
    if (fromInput) hashTimer = setTimeout(saveHash, 300);
    else saveHash();
  }
  let hashTimer = 0;

  // -- the model ------------------------------------------------------------------------

  function sameLabels(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  function index(node, labels, add) {
    for (const label of labels) {
      let set = byLabel.get(label);
      if (add) {
        if (!set) byLabel.set(label, (set = new Set()));
        set.add(node);
      } else if (set) {
        set.delete(node);
        if (!set.size) byLabel.delete(label);
      }
    }
  }

  // The index is built after the first rows are painted, a few milliseconds at a time;
  // until it is ready the filter scans the labels of every node instead.
  let indexReady = false;
  let indexing = null;
  function buildIndex() {
    if (indexReady) return;
    indexing = indexing || nodes.values();
    const t0 = performance.now();
    for (let i = 1; ; i++) {
      const { value: node, done } = indexing.next();
      if (done) break;
      if (!node.ix) {
        index(node, node.labels, true);
        node.ix = true;
      }
      if ((i & 255) === 0 && performance.now() - t0 > 8) {
        setTimeout(buildIndex, 0);
        return;
      }
    }
    indexReady = true;
    indexing = null;
    performance.mark('lobby:indexed');
  }

  function labelSets() {
    // label -> nodes; while the index is being built, made from the nodes themselves
    if (indexReady) return byLabel;
    const sets = new Map();
    for (const node of nodes.values()) {
      for (const label of node.labels) {
        let set = sets.get(label);
        if (!set) sets.set(label, (set = new Set()));
        set.add(node);
      }
    }
    return sets;
  }

  function flash(node, kind) {
    node.flash = kind;
    node.flashAt = performance.now();
  }

  // A node as the server told it: `lc` is its last_check (Unix seconds). For an `event`
  // (join/update) `lc` is now, and counts only when the event changed something: a
  // replayed event that changes nothing is no news (no highlight, no "heard").
  function upsert(hostname, labels, lc, event) {
    let node = nodes.get(hostname);
    let changed = '';
    if (!node) {
      node = { h: hostname, hl: hostname.toLowerCase(), labels: [], lc: 0, v: 0, flash: '', flashAt: 0, gone: false };
      nodes.set(hostname, node);
      order.push(node);
      orderDirty = true;
      orderVersion++;
      node.labels = labels;
      if (indexReady) {
        index(node, labels, true);
        node.ix = true;
      }
      changed = 'join';
    } else {
      if (node.gone) {
        node.gone = false;
        goneCount--;
        changed = 'join';
      }
      if (!sameLabels(node.labels, labels)) {
        if (node.ix) {
          index(node, node.labels, false);
          index(node, labels, true);
        }
        node.labels = labels;
        changed = changed || 'update';
      }
    }
    if (lc && (changed || !event)) node.lc = Math.max(node.lc, lc);
    if (changed) {
      if (event) flash(node, changed);
      node.v++;
      visibleDirty = true;
    }
    return node;
  }

  function leave(hostname) {
    const node = nodes.get(hostname);
    if (!node || node.gone) return;
    node.gone = true;
    goneCount++;
    flash(node, 'leave');
    node.v++;
    removals.push([performance.now() + LEAVE_MS, node]);
    wakeForRemovals();
  }

  let removalTimer = 0; // one timer for the next node to drop, however many left
  function wakeForRemovals() {
    if (removalTimer || !removals.length) return;
    const wait = Math.max(0, removals[0][0] - performance.now()) + 20;
    removalTimer = setTimeout(() => {
      removalTimer = 0;
      scheduleFlush();
    }, wait);
  }

  function dropLeft() {
    const now = performance.now();
    let dropped = false;
    while (removals.length && removals[0][0] <= now) {
      const [, node] = removals.shift();
      if (!node.gone || nodes.get(node.h) !== node) continue;
      nodes.delete(node.h);
      goneCount--;
      if (node.ix) index(node, node.labels, false);
      node.dropped = true;
      dropped = true;
    }
    if (dropped) {
      order = order.filter((n) => !n.dropped);
      orderVersion++;
      visibleDirty = true;
    }
    wakeForRemovals();
  }

  function liveCount() {
    return nodes.size - goneCount;
  }

  // -- events, applied once per frame ---------------------------------------------------

  function scheduleFlush() {
    if (flushScheduled) return;
    flushScheduled = true;
    requestAnimationFrame(flush);
    setTimeout(flush, 250); // a hidden tab gets no frames: still keep up
  }

  function flush() {
    if (!flushScheduled) return;
    flushScheduled = false;
    const t0 = performance.now();
    const now = nowServer() / 1000;
    let promTouched = false;
    while (queueHead < queue.length) {
      // a big batch (a fresh snapshot of 10,000 nodes) is spread over several frames
      if ((queueHead & 127) === 127 && performance.now() - t0 > BUDGET_MS) break;
      const item = queue[queueHead++];
      if (item.type === 'live') {
        finishSnapshot();
        setLive('live');
        if (!performance.getEntriesByName('lobby:live').length) performance.mark('lobby:live');
        continue;
      }
      if (item.type === 'reset') {
        counters.resets++;
        reconciling = new Set();
        continue;
      }
      let data;
      try {
        data = JSON.parse(item.data);
      } catch {
        continue;
      }
      if (typeof data.hostname !== 'string' || !Array.isArray(data.labels)) continue;
      counters.events++;
      if (reconciling !== null) reconciling.add(data.hostname);
      if (item.type === 'join' || item.type === 'update') {
        upsert(data.hostname, data.labels, now, firstRows);
      } else if (item.type === 'leave') {
        leave(data.hostname);
      }
      if (!promTouched && data.labels.some((l) => l.startsWith('prometheus:'))) promTouched = true;
    }
    if (queueHead >= queue.length) {
      queue.length = 0;
      queueHead = 0;
    } else {
      scheduleFlush();
    }
    dropLeft();
    if (orderDirty) {
      order.sort(byHost);
      orderDirty = false;
      visibleDirty = true;
    }
    if (visibleDirty) {
      computeVisible();
      visibleDirty = false;
    }
    render();
    if (promTouched && view === 'prometheus') refreshPrometheus();
  }

  function finishSnapshot() {
    if (reconciling === null) return;
    for (const [hostname, node] of nodes) if (!reconciling.has(hostname) && !node.gone) leave(hostname);
    reconciling = null;
  }

  // Server-Sent Events, parsed as the HTML standard says (fields id, event, data).
  function sseParser(onEvent, onComment) {
    let buf = '';
    let id = null;
    let type = '';
    let data = [];
    return (chunk) => {
      buf += chunk;
      let start = 0;
      for (;;) {
        const nl = buf.indexOf('\n', start);
        if (nl < 0) break;
        let line = buf.slice(start, nl);
        start = nl + 1;
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === '') {
          if (data.length) onEvent({ id, type: type || 'message', data: data.join('\n') });
          type = '';
          data = [];
          continue;
        }
        if (line[0] === ':') {
          onComment(line.slice(1).trim());
          continue;
        }
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? '' : line.slice(colon + 1);
        if (value[0] === ' ') value = value.slice(1);
        if (field === 'data') data.push(value);
        else if (field === 'event') type = value;
        else if (field === 'id' && !value.includes('\0')) id = value;
      }
      buf = buf.slice(start);
    };
  }

  async function follow(gen) {
    if (stream) stream.abort();
    const ctl = (stream = new AbortController());
    const headers = authHeaders();
    const resuming = lastEventId !== null;
    if (resuming) headers['Last-Event-ID'] = lastEventId;
    else reconciling = new Set();
    counters.connects++;
    setLive(resuming ? 'resuming' : 'connecting');
    try {
      const res = await fetch('/v1/events', { headers, signal: ctl.signal, cache: 'no-store' });
      if (res.status === 403) throw new Denied('access denied');
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      let sawReset = false;
      let first = true;
      const parse = sseParser(
        (ev) => {
          if (ev.type === 'reset') sawReset = true;
          if (ev.id !== null) lastEventId = ev.id;
          queue.push(ev);
          scheduleFlush();
        },
        (comment) => {
          if (comment !== 'live') return;
          if (first && resuming && !sawReset) counters.resumed++;
          first = false;
          retryMs = 500;
          queue.push({ type: 'live' });
          scheduleFlush();
        },
      );
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parse(value);
      }
      throw new Error('stream closed');
    } catch (err) {
      if (ctl.signal.aborted || gen !== generation) return;
      if (err instanceof Denied) {
        askToken(true);
        return;
      }
      setLive('reconnecting');
      setTimeout(() => gen === generation && follow(gen), retryMs);
      retryMs = Math.min(retryMs * 2, 8000);
    }
  }

  // -- polling: counters (every few seconds) and last_check (cheaply, now and then) -----

  let lastPackets = null;
  async function pollStats(gen) {
    if (gen !== generation) return;
    try {
      const stats = await (await api('/v1/stats')).json();
      showStats(stats);
    } catch (err) {
      if (err instanceof Denied) return askToken(true);
      setBroker(null);
    }
    setTimeout(() => pollStats(gen), STATS_EVERY);
  }

  function showStats(stats) {
    const received = stats?.packets?.received;
    const t = performance.now();
    if (typeof received === 'number') {
      if (lastPackets && t > lastPackets.t) {
        const rate = Math.max(0, ((received - lastPackets.n) * 1000) / (t - lastPackets.t));
        $('rate').textContent = rate < 10 ? rate.toFixed(1) : fmt.format(Math.round(rate));
      }
      lastPackets = { n: received, t };
    }
    // one broker (`broker`) today; a list or map of them (`brokers`) if the daemon has several
    let links = stats.brokers ?? (stats.broker ? [stats.broker] : []);
    if (!Array.isArray(links)) links = Object.entries(links).map(([k, v]) => ({ driver: k, ...v }));
    setBroker(links);
  }

  function setBroker(links) {
    const dot = $('broker-dot');
    if (!links) {
      dot.className = 'dot bad';
      $('broker-kind').textContent = 'lobbyd unreachable';
      $('broker-addr').textContent = '';
      return;
    }
    const up = links.filter((b) => b.connected).length;
    const paused = links.some((b) => b.expiry_paused);
    dot.className = `dot ${up === links.length && !paused ? 'ok' : up ? 'warn' : 'bad'}`;
    $('broker-kind').textContent = links.map((b) => b.driver || 'broker').join(' + ') || 'no broker';
    $('broker-addr').textContent = links.map((b) => b.address || '').join(', ');
    $('broker').title = links
      .map((b) => `${b.driver} ${b.address || ''}: ${b.connected ? 'connected' : 'down'}${b.expiry_paused ? ', expiry paused' : ''}`)
      .join('\n');
  }

  // Keep-alives are no events, so "heard" comes from last_check in /v1/discoveries,
  // fetched and parsed by a worker (this same script), off the main thread: at 10,000
  // nodes that is 3 MB of JSON, which would stall typing for tens of milliseconds.
  let worker = null;
  function pollHeard(gen) {
    if (gen !== generation) return;
    const again = (ms) => setTimeout(() => pollHeard(gen), ms);
    if (document.visibilityState !== 'visible') return again(5000);
    if (!worker) {
      try {
        worker = new Worker(SCRIPT);
      } catch {
        return; // no workers (a very locked-down browser): ages come from events only
      }
    }
    worker.onmessage = ({ data }) => {
      if (gen !== generation) return;
      if (data.denied) return askToken(true);
      if (data.hosts) {
        counters.heardPolls++;
        const { hosts, lcs } = data;
        for (let i = 0; i < hosts.length; i++) {
          const node = nodes.get(hosts[i]);
          if (node && !node.gone && lcs[i] > node.lc) node.lc = lcs[i];
        }
        renderAges();
      }
      again(data.hosts ? 5000 + nodes.size : 5000); // 5 s for a small cluster, 15 s at 10,000
    };
    worker.postMessage({ token });
  }

  // -- start, tokens --------------------------------------------------------------------

  async function start() {
    const gen = ++generation;
    if (stream) stream.abort();
    $('forget').hidden = !token;
    try {
      const [ownRes, listRes] = await Promise.all([api('/v1/discovery'), api('/v1/discoveries')]);
      const own = await ownRes.json();
      ownName = own.hostname;
      $('self-name').textContent = own.hostname;
      document.title = `lobby · ${own.hostname}`;
      const list = await listRes.json();
      performance.mark('lobby:snapshot-parsed');
      if (gen !== generation) return;
      // This answer is the snapshot (nodes missing from it have left); the stream
      // resumes a little before its index: each event carries a node's whole state, so
      // replaying a few known changes is harmless, and none made while the answer was
      // on its way is lost. Without an index: a full snapshot from the stream.
      const seen = nodes.size ? new Set(list.map((d) => d.hostname)) : null;
      for (const d of list) upsert(d.hostname, d.labels, d.last_check, false);
      if (seen) for (const [hostname, node] of nodes) if (!seen.has(hostname) && !node.gone) leave(hostname);
      const index = parseInt(listRes.headers.get('x-lobby-index'), 10);
      lastEventId = index >= 0 ? String(Math.max(0, index - 64)) : null;
      flushScheduled = true;
      flush();
      setTimeout(buildIndex, 0);
    } catch (err) {
      if (err instanceof Denied) return askToken(Boolean(token));
      setLive('offline');
      setBroker(null);
      setTimeout(() => gen === generation && start(), 2000);
      return;
    }
    follow(gen);
    pollStats(gen);
    setTimeout(() => pollHeard(gen), 5000);
    setTimeout(() => gen === generation && renderPrometheusIfShown(), 0);
  }

  function askToken(refused) {
    generation++;
    if (stream) stream.abort();
    setLive('locked');
    const msg = $('token-msg');
    if (refused && token) {
      msg.className = 'error';
      msg.textContent = 'Access denied (403): this lobbyd refused that token. Check TOKEN or READ_TOKEN on the server.';
    } else {
      msg.className = '';
      msg.textContent = 'This lobbyd asks for a token (its TOKEN or READ_TOKEN). It is kept for this tab only and sent in a header, never in a URL.';
    }
    const dialog = $('token-dialog');
    if (!dialog.open) dialog.showModal();
    $('token-input').value = '';
    $('token-input').focus();
  }

  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    token = $('token-input').value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    $('token-dialog').close();
    lastEventId = null;
    start();
  });
  $('token-dialog').addEventListener('cancel', (e) => e.preventDefault()); // nothing to show without it
  $('forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });

  function setLive(state) {
    const ok = state === 'live';
    $('live-dot').className = `dot ${ok ? 'ok' : state === 'offline' || state === 'locked' ? 'bad' : 'warn'}`;
    $('live-text').textContent = state;
    $('live').dataset.state = state;
  }

  // -- rendering: the list ----------------------------------------------------------------

  const list = $('list');
  const sizer = $('sizer');
  let rowH = 40;
  let rows = []; // recycled row elements; row i of `visible` lives in rows[i % rows.length]

  function readRowHeight() {
    rowH = parseFloat(getComputedStyle(document.documentElement).getPropertyValue('--row-h')) || 40;
  }

  function makeRow() {
    const el = document.createElement('div');
    el.className = 'row';
    el.setAttribute('role', 'listitem');
    const host = document.createElement('div');
    host.className = 'host';
    const chips = document.createElement('div');
    chips.className = 'chips';
    const age = document.createElement('div');
    age.className = 'age';
    el.append(host, chips, age);
    sizer.append(el);
    return { el, host, chips, age, node: null, v: -1, fv: -1, i: -1, flashAt: -1 };
  }

  function fillRow(r, node) {
    r.node = node;
    r.v = node.v;
    r.fv = filterVersion;
    r.el.dataset.host = node.h;
    r.host.textContent = node.h;
    const frag = document.createDocumentFragment();
    const hits = filter.byLabel;
    for (const label of node.labels) {
      const c = cachedChip(label);
      if (hits && matches(label)) c.classList.add('hit');
      frag.append(c);
    }
    r.chips.replaceChildren(frag);
    r.el.title = node.labels.join('\n');
    r.el.classList.toggle('self', node.h === ownName);
    if (!firstRows) {
      firstRows = true;
      r.host.setAttribute('elementtiming', 'lobby-first-row');
      performance.mark('lobby:first-rows');
    }
  }

  // A highlight follows its node, not the row element: a recycled row continues the
  // animation where it is (negative delay). Two names per animation, alternated, so a
  // new highlight restarts without forcing a layout.
  function showFlash(r, node) {
    const age = performance.now() - node.flashAt;
    const kind = node.gone ? 'gone' : node.flash && age < FLASH_MS ? node.flash : '';
    if (r.flashAt === node.flashAt && r.kind === kind) return;
    const el = r.el;
    if (r.cls) el.classList.remove(r.cls);
    r.alt = !r.alt;
    r.cls = kind ? `f-${kind}${r.alt ? '' : '-b'}` : '';
    if (r.cls) el.classList.add(r.cls);
    el.style.animationDelay = kind ? `${-Math.min(age, FLASH_MS)}ms` : '';
    el.dataset.state = kind === 'gone' ? 'leave' : kind;
    r.flashAt = node.flashAt;
    r.kind = kind;
  }

  function render() {
    $('count').textContent = fmt.format(liveCount());
    const total = liveCount();
    const shown = visible.length;
    $('shown').textContent = filter.text.trim() ? `${fmt.format(shown)} of ${fmt.format(total)}` : '';
    showEmpty();
    if (view === 'nodes') renderRows();
    renderDetail();
  }

  function renderRows() {
    sizer.style.height = `${visible.length * rowH}px`;
    const top = list.scrollTop;
    const height = list.clientHeight || window.innerHeight;
    const first = Math.max(0, Math.floor(top / rowH) - OVERSCAN);
    const last = Math.min(visible.length, Math.ceil((top + height) / rowH) + OVERSCAN);
    const need = Math.ceil(height / rowH) + 2 * OVERSCAN + 1;
    if (rows.length < need) {
      while (rows.length < need) rows.push(makeRow());
      for (const r of rows) r.i = -1;
    }
    const used = new Set();
    for (let i = first; i < last; i++) {
      const r = rows[i % rows.length];
      used.add(r);
      const node = visible[i];
      if (r.i !== i) {
        r.el.style.transform = `translateY(${i * rowH}px)`;
        r.i = i;
      }
      r.el.hidden = false;
      if (r.node !== node || r.v !== node.v || r.fv !== filterVersion) fillRow(r, node);
      r.age.textContent = heard(node);
      r.el.classList.toggle('sel', node.h === selected);
      showFlash(r, node);
    }
    for (const r of rows) {
      if (!used.has(r) && !r.el.hidden) {
        r.el.hidden = true;
        r.i = -1;
        r.node = null;
      }
    }
  }

  function renderAges() {
    for (const r of rows) {
      if (!r.node || r.el.hidden) continue;
      r.age.textContent = heard(r.node);
      showFlash(r, r.node); // ends highlights that ran out
    }
    if (selected) renderDetail(true);
  }

  let emptyShown = '';
  function showEmpty() {
    const empty = $('empty');
    const why = visible.length || view !== 'nodes' ? '' : nodes.size ? 'no match' : 'no nodes';
    if (why === emptyShown) return;
    emptyShown = why;
    empty.hidden = !why;
    if (!why) return;
    const b = document.createElement('b');
    if (!nodes.size) {
      b.textContent = 'No nodes yet';
      empty.replaceChildren(b, 'Waiting for the first announcement.');
      return;
    }
    b.textContent = 'No node matches';
    const code = (t) => Object.assign(document.createElement('code'), { textContent: t });
    empty.replaceChildren(b, 'A term with a colon is an exact label (', code('service:web'), '); end it with a colon for a prefix (', code('service:'), '); a word matches hostnames.');
  }

  let scrollFrame = false;
  list.addEventListener(
    'scroll',
    () => {
      if (scrollFrame) return;
      scrollFrame = true;
      requestAnimationFrame(() => {
        scrollFrame = false;
        renderRows();
      });
    },
    { passive: true },
  );
  list.addEventListener('click', (e) => {
    const row = e.target.closest('.row');
    if (row && row.dataset.host) select(row.dataset.host);
  });
  new ResizeObserver(() => {
    readRowHeight();
    for (const r of rows) r.i = -1;
    renderRows();
  }).observe(list);

  // -- rendering: detail ------------------------------------------------------------------

  let detailFor = null;
  function select(hostname) {
    selected = hostname;
    detailFor = null;
    render();
    saveHash();
  }

  function renderDetail(agesOnly = false) {
    const panel = $('detail');
    const node = selected ? nodes.get(selected) : null;
    if (!selected) {
      panel.hidden = true;
      return;
    }
    panel.hidden = false;
    if (agesOnly && detailFor === node && node) {
      const dd = panel.querySelector('[data-heard]');
      if (dd) dd.textContent = heardLong(node);
      return;
    }
    if (detailFor === node && node && detailFor.dv === node.v) return;
    detailFor = node;
    if (node) node.dv = node.v;
    const header = document.createElement('header');
    const h2 = document.createElement('h2');
    h2.textContent = selected;
    const close = Object.assign(document.createElement('button'), { className: 'close', type: 'button', textContent: '✕', title: 'close (Esc)' });
    close.addEventListener('click', () => select(''));
    header.append(h2, close);
    const parts = [header];
    if (!node) {
      parts.push(Object.assign(document.createElement('p'), { className: 'dim', textContent: 'This node is not in the registry (it left or expired).' }));
      panel.replaceChildren(...parts);
      return;
    }
    const dl = document.createElement('dl');
    dl.className = 'kv';
    const state = Object.assign(document.createElement('span'), { className: node.gone ? 'badge left' : 'badge', textContent: node.gone ? 'left' : node.h === ownName ? 'live · this node' : 'live' });
    const heardEl = document.createElement('span');
    heardEl.dataset.heard = '';
    heardEl.textContent = heardLong(node);
    for (const [k, v] of [['state', state], ['heard', heardEl], ['labels', String(node.labels.length)]]) {
      dl.append(Object.assign(document.createElement('dt'), { textContent: k }));
      const dd = document.createElement('dd');
      dd.append(v);
      dl.append(dd);
    }
    parts.push(dl);
    const h3 = Object.assign(document.createElement('h3'), { textContent: 'Labels' });
    const stack = document.createElement('div');
    stack.className = 'stack';
    for (const label of node.labels) {
      const c = chip(label, 'button');
      c.type = 'button';
      c.title = `show the nodes with ${label}`;
      c.addEventListener('click', () => {
        showView('nodes');
        setFilter(label);
      });
      stack.append(c);
    }
    parts.push(h3, stack);
    if (!node.labels.length) parts.push(Object.assign(document.createElement('p'), { className: 'dim', textContent: 'No labels.' }));
    const services = [...new Set(node.labels.filter((l) => l.startsWith('prometheus:')).map((l) => l.slice(11).split(':')[0]).filter(Boolean))];
    if (services.length) {
      const links = document.createElement('div');
      links.className = 'links';
      for (const name of services.sort()) {
        const b = Object.assign(document.createElement('button'), { className: 'pill-link', type: 'button', textContent: name });
        b.addEventListener('click', () => {
          promService = name;
          showView('prometheus');
        });
        links.append(b);
      }
      parts.push(Object.assign(document.createElement('h3'), { textContent: 'Prometheus' }), links);
    }
    parts.push(Object.assign(document.createElement('p'), { className: 'hint', textContent: 'Click a label to list every node that has it.' }));
    panel.replaceChildren(...parts);
  }

  function heardLong(node) {
    if (!node.lc) return '–';
    const t = new Date(node.lc * 1000);
    return `${heard(node)} ago · ${t.toLocaleTimeString()}`;
  }

  // -- rendering: Prometheus ----------------------------------------------------------------

  function promServices() {
    const members = new Map();
    for (const [label, set] of labelSets()) {
      if (!label.startsWith('prometheus:')) continue;
      const name = label.slice(11).split(':')[0];
      if (!name) continue;
      let m = members.get(name);
      if (!m) members.set(name, (m = new Set()));
      for (const n of set) if (!n.gone) m.add(n);
    }
    return [...members].filter(([, m]) => m.size).sort((a, b) => (a[0] < b[0] ? -1 : 1));
  }

  function renderPrometheusIfShown() {
    if (view === 'prometheus') renderPrometheus();
  }

  let promTimer = 0;
  let promLast = 0;
  function refreshPrometheus() {
    // at most once a second while the cluster changes
    if (promTimer) return;
    const wait = Math.max(0, promLast + 1000 - performance.now());
    promTimer = setTimeout(() => {
      promTimer = 0;
      promLast = performance.now();
      renderPrometheus();
    }, wait);
  }

  let promFetch = 0;
  async function renderPrometheus() {
    const services = promServices();
    if (!promService || !services.some(([n]) => n === promService)) promService = services.length ? services[0][0] : '';
    const box = $('services');
    box.replaceChildren(
      ...services.map(([name, m]) => {
        const b = Object.assign(document.createElement('button'), { type: 'button' });
        b.setAttribute('role', 'option');
        b.setAttribute('aria-selected', String(name === promService));
        b.dataset.service = name;
        b.append(Object.assign(document.createElement('span'), { textContent: name }), Object.assign(document.createElement('span'), { className: 'n', textContent: `${fmt.format(m.size)} node${m.size === 1 ? '' : 's'}` }));
        b.addEventListener('click', () => {
          promService = name;
          saveHash();
          renderPrometheus();
        });
        return b;
      }),
    );
    const out = $('targets');
    if (!promService) {
      out.replaceChildren(Object.assign(document.createElement('p'), { className: 'dim', textContent: 'No node has a prometheus:NAME label yet.' }));
      return;
    }
    const name = promService;
    const ticket = ++promFetch;
    let groups;
    try {
      groups = await (await api(`/v1/prometheus/${encodeURIComponent(name)}`)).json();
    } catch (err) {
      if (err instanceof Denied) return askToken(true);
      groups = null;
    }
    if (ticket !== promFetch) return;
    const h2 = Object.assign(document.createElement('h2'), { textContent: name });
    const targets = groups ? groups.reduce((n, g) => n + (g.Targets || []).length, 0) : 0;
    const sub = Object.assign(document.createElement('p'), { className: 'sub' });
    sub.textContent = groups ? `${fmt.format(groups.length)} target group${groups.length === 1 ? '' : 's'}, ${fmt.format(targets)} target${targets === 1 ? '' : 's'}, as Prometheus reads them from ` : 'could not load ';
    sub.append(Object.assign(document.createElement('code'), { textContent: `/v1/prometheus/${name}` }));
    const snippet = Object.assign(document.createElement('pre'), { className: 'snippet' });
    snippet.textContent = `scrape_configs:\n  - job_name: ${name}\n    http_sd_configs:\n      - url: ${location.origin}/v1/prometheus/${encodeURIComponent(name)}`;
    const cards = (groups || []).slice(0, 2000).map((g) => {
      const card = document.createElement('div');
      card.className = 'group';
      const tg = document.createElement('div');
      tg.className = 'tg';
      for (const t of g.Targets || []) tg.append(Object.assign(document.createElement('span'), { className: 'target', textContent: t }));
      const gl = document.createElement('div');
      gl.className = 'gl';
      for (const [k, v] of Object.entries(g.Labels || {})) gl.append(chip(`${k}:${v}`));
      card.append(tg, gl);
      return card;
    });
    out.replaceChildren(h2, sub, snippet, ...cards);
  }

  // -- views, the URL fragment, keys ------------------------------------------------------

  function showView(name) {
    view = name;
    $('view-nodes').hidden = name !== 'nodes';
    $('view-prometheus').hidden = name !== 'prometheus';
    $('tab-nodes').setAttribute('aria-selected', String(name === 'nodes'));
    $('tab-prometheus').setAttribute('aria-selected', String(name === 'prometheus'));
    if (name === 'prometheus') renderPrometheus();
    else render();
    saveHash();
  }

  // #q=service:web&node=web1&view=prometheus&service=node (readable: ':' ',' '/' kept)
  const enc = (s) => encodeURIComponent(s).replace(/%3A/gi, ':').replace(/%2C/gi, ',').replace(/%2F/gi, '/').replace(/%20/g, '+');
  function saveHash() {
    const parts = [];
    if (filter.text) parts.push(`q=${enc(filter.text)}`);
    if (selected) parts.push(`node=${enc(selected)}`);
    if (view !== 'nodes') parts.push(`view=${enc(view)}`);
    if (view === 'prometheus' && promService) parts.push(`service=${enc(promService)}`);
    const hash = parts.length ? `#${parts.join('&')}` : '';
    if (hash !== location.hash) history.replaceState(null, '', hash || location.pathname + location.search);
  }

  function loadHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    selected = p.get('node') || '';
    promService = p.get('service') || '';
    const q = p.get('q') || '';
    $('filter').value = q;
    filter = parseFilter(q);
    filterVersion++;
    computeVisible();
    visibleDirty = false;
    showView(p.get('view') === 'prometheus' ? 'prometheus' : 'nodes');
  }

  let typing = 0;
  $('filter').addEventListener('input', (e) => {
    const text = e.target.value;
    cancelAnimationFrame(typing);
    typing = requestAnimationFrame(() => setFilter(text, { fromInput: true }));
  });
  $('tab-nodes').addEventListener('click', () => showView('nodes'));
  $('tab-prometheus').addEventListener('click', () => showView('prometheus'));
  window.addEventListener('hashchange', loadHash);
  document.addEventListener('keydown', (e) => {
    if (e.key === '/' && document.activeElement !== $('filter') && !$('token-dialog').open) {
      e.preventDefault();
      $('filter').focus();
    } else if (e.key === 'Escape' && selected && !$('token-dialog').open) {
      select('');
    }
  });
  setInterval(renderAges, 1000);

  // hooks for the browser tests and the benchmark (read-only but for dropStream)
  window.lobbyUI = {
    state: () => ({
      nodes: liveCount(),
      visible: visible.length,
      live: $('live').dataset.state,
      lastEventId,
      ...counters,
    }),
    dropStream: () => {
      const gen = generation;
      if (stream) stream.abort();
      follow(gen);
    },
  };

  readRowHeight();
  loadHash();
  start();
})();
