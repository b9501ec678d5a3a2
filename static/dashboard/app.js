// The dashboard: polls /dashboard/stats every second and renders it; with
// the admin token typed in, asks the admin API for the top offenders and
// for one identity, and resets it or sets and removes its override.
//
// The token lives in this tab only (a variable and sessionStorage, which
// the browser drops with the tab) and travels only in the Authorization
// header of same-origin requests, never in a URL. Every value from the
// server is put in the page as text (textContent), never as HTML: an
// identifier is whatever a client sent.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = 'rate-limiter.admin-token';
  const HISTORY = 120; // seconds of sparkline
  const DENIED = new Set(['denied', 'local_denied', 'blocked']);
  const number = new Intl.NumberFormat();

  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let previous = null;
  const history = [];
  let looked = null; // { strategy, id } of the identity on show

  const rate = (n) => (n >= 100 ? number.format(Math.round(n)) : String(Math.round(n * 10) / 10));
  const setText = (id, value) => { $(id).textContent = value; };
  const ago = (ms) => {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 90) return `${s} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    return `${Math.round(s / 3600)} h ago`;
  };
  const pill = (el, label, kind) => {
    el.textContent = label;
    el.className = `pill ${kind}`;
  };
  const cell = (row, value, cls) => {
    const td = document.createElement('td');
    td.textContent = value;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  };
  const message = (text, kind) => {
    const el = $('admin-message');
    el.textContent = text;
    el.className = kind || 'muted';
  };

  // --- live numbers ---------------------------------------------------------

  async function poll() {
    let stats;
    try {
      // The stats are the operator's: from outside OPERATOR_NETWORKS they
      // need the admin token.
      const headers = token ? { Authorization: `Bearer ${token}` } : {};
      const response = await fetch('/dashboard/stats', { cache: 'no-store', headers });
      if (response.status === 401) {
        pill($('health'), 'type the admin token to see the stats', 'bad');
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      stats = await response.json();
    } catch (err) {
      pill($('health'), 'service unreachable', 'bad');
      return;
    }
    render(stats);
    previous = stats;
    if (token) refreshTop();
  }

  function render(stats) {
    const up = stats.redis.status === 'up';
    const open = stats.redis.breaker === 'open';
    pill($('health'), up && !open ? 'healthy' : up ? 'recovering' : 'Redis down',
      up && !open ? 'ok' : up ? 'warn' : 'bad');
    setText('updated', `updated ${new Date(stats.time_ms).toLocaleTimeString()}`);

    // Decisions: rates from the difference to the previous poll.
    const seconds = previous ? Math.max(0.001, (stats.time_ms - previous.time_ms) / 1000) : 0;
    const before = new Map();
    if (previous) for (const d of previous.decisions) before.set(`${d.strategy}|${d.policy}|${d.decision}`, d.count);
    let all = 0, allowed = 0, denied = 0, total = 0;
    const rows = stats.decisions.map((d) => {
      const last = before.get(`${d.strategy}|${d.policy}|${d.decision}`);
      const perSecond = seconds && last !== undefined ? Math.max(0, d.count - last) / seconds : 0;
      all += perSecond;
      total += d.count;
      if (DENIED.has(d.decision)) denied += perSecond; else allowed += perSecond;
      return { ...d, perSecond };
    });
    rows.sort((a, b) => b.perSecond - a.perSecond || b.count - a.count);
    setText('rate-total', previous ? rate(all) : '–');
    setText('rate-allowed', previous ? rate(allowed) : '–');
    setText('rate-denied', previous ? rate(denied) : '–');
    setText('total', number.format(total));
    const body = $('by-policy').tBodies[0];
    body.replaceChildren(...rows.map((d) => {
      const tr = document.createElement('tr');
      cell(tr, d.strategy);
      cell(tr, d.policy);
      cell(tr, d.decision, DENIED.has(d.decision) ? 'bad' : '');
      cell(tr, previous ? rate(d.perSecond) : '–', 'num');
      cell(tr, number.format(d.count), 'num');
      return tr;
    }));
    if (previous) {
      history.push({ all, denied });
      if (history.length > HISTORY) history.shift();
      drawSpark();
    }

    // Redis.
    setText('redis-status', stats.redis.status === 'up' ? 'up' : `down: ${stats.redis.error || 'no answer'}`);
    $('redis-status').className = up ? 'ok' : 'bad';
    setText('redis-topology', stats.redis.topology);
    setText('redis-latency', stats.redis.latency_ms == null ? '–' : `${stats.redis.latency_ms} ms`);
    setText('redis-breaker', stats.redis.breaker);
    $('redis-breaker').className = open ? 'bad' : '';
    setText('failure-mode', stats.redis.failure_mode);
    const calls = stats.redis.script_calls - (previous ? previous.redis.script_calls : 0);
    const checks = stats.redis.checks - (previous ? previous.redis.checks : 0);
    setText('checks-per-call', calls > 0 ? (checks / calls).toFixed(1) : '–');
    setText('redis-errors', number.format(stats.redis.errors));

    // Rules.
    setText('rules-version', `#${stats.rules.version}`);
    setText('rules-since', stats.rules.since_ms ? ago(stats.time_ms - stats.rules.since_ms) : 'start-up');
    setText('rules-policies', String(stats.rules.policies));
    setText('rules-reloads', `${stats.rules.reloads_ok} applied, ${stats.rules.reloads_refused} refused`);
    setText('rules-domains', stats.rules.envoy_domains.length ? stats.rules.envoy_domains.join(', ') : 'none');
    // Concurrency policies (counts only, never a subject).
    const slots = stats.concurrency || [];
    $('concurrency-none').hidden = slots.length > 0;
    $('concurrency-table').tBodies[0].replaceChildren(...slots.map((c) => {
      const tr = document.createElement('tr');
      cell(tr, c.policy);
      cell(tr, number.format(c.in_flight), 'num');
      cell(tr, number.format(c.limit), 'num');
      cell(tr, number.format(c.expired), c.expired > 0 ? 'num bad' : 'num');
      return tr;
    }));
    adminAvailable(stats.admin);
  }

  function drawSpark() {
    const max = Math.max(1, ...history.map((h) => h.all));
    const points = (key) => history
      .map((h, i) => `${(i * 300) / (HISTORY - 1)},${(60 - (h[key] / max) * 56).toFixed(1)}`)
      .join(' ');
    $('spark-all').setAttribute('points', points('all'));
    $('spark-denied').setAttribute('points', points('denied'));
  }

  // --- the admin API --------------------------------------------------------

  let adminOn = true;
  function adminAvailable(on) {
    if (on === adminOn) return;
    adminOn = on;
    for (const el of document.querySelectorAll('#admin button, #admin input, #admin select')) el.disabled = !on;
    if (!on) {
      message('The admin API is off: start the service with ADMIN_TOKEN set to use it.', 'warn');
      setText('top-note', 'The admin API is off (ADMIN_TOKEN unset).');
    }
  }

  async function admin(method, path, body) {
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const response = await fetch(path, {
      method, headers, cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let json = null;
    if (response.status !== 204) {
      try { json = await response.json(); } catch (err) { json = null; }
    }
    if (response.status === 401) {
      setToken('');
      throw new Error('the admin token was refused');
    }
    return { status: response.status, json };
  }

  function setToken(value) {
    token = value;
    if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
    setText('token-state', token ? 'set: kept in this tab only' : 'not set: kept in this tab only');
    if (!token) {
      $('top-table').tBodies[0].replaceChildren();
      setText('top-note', 'Type the admin token below to see who.');
    }
  }

  let topBusy = false;
  async function refreshTop() {
    if (topBusy || !adminOn) return;
    topBusy = true;
    try {
      const by = $('top-by').value, window = $('top-window').value;
      const { status, json } = await admin('GET', `/admin/top?by=${by}&window=${window}&n=10`);
      if (status !== 200) throw new Error((json && json.detail) || `HTTP ${status}`);
      const body = $('top-table').tBodies[0];
      body.replaceChildren(...json.top.map((t) => {
        const tr = document.createElement('tr');
        cell(tr, `${t.strategy}: ${t.identifier}`);
        cell(tr, t.domain);
        cell(tr, number.format(t.count), 'num');
        if (t.domain === 'http' && (t.strategy === 'user' || t.strategy === 'ip')) {
          tr.className = 'pick';
          tr.title = 'Look up this identity';
          tr.addEventListener('click', () => {
            $('lookup-strategy').value = t.strategy;
            $('lookup-id').value = t.identifier;
            lookup(false);
          });
        }
        return tr;
      }));
      setText('top-note', json.top.length ? `Across every instance, ${json.window}.` : `Nobody yet, ${json.window}.`);
    } catch (err) {
      setText('top-note', `Cannot read the top offenders: ${err.message}.`);
    } finally {
      topBusy = false;
    }
  }

  const identityPath = (kind, who) => `/admin/${kind}/${encodeURIComponent(who.strategy)}/${encodeURIComponent(who.id)}`;

  // Shows the identity in the form; `quiet`: after an action, whose
  // message stays.
  async function lookup(quiet) {
    if (!token) { message('Type the admin token first.', 'warn'); return; }
    const who = { strategy: $('lookup-strategy').value, id: $('lookup-id').value.trim() };
    if (!who.id) return;
    try {
      const { status, json } = await admin('GET', identityPath('identities', who));
      if (status !== 200) throw new Error((json && json.detail) || `HTTP ${status}`);
      looked = who;
      showIdentity(json);
      if (!quiet) message(`Looked up ${who.strategy} ${who.id}.`, 'muted');
    } catch (err) {
      message(`Look-up failed: ${err.message}.`, 'bad');
    }
  }

  function showIdentity(report) {
    $('identity').hidden = false;
    setText('identity-name', `${report.strategy}: ${report.identifier}`);
    pill($('identity-status'), report.status, report.status === 'blocked' ? 'bad' : report.status === 'unlimited' ? 'warn' : 'ok');
    const spec = report.override;
    setText('identity-override', spec ? `override ${JSON.stringify(spec)}${report.override_problem ? ` (not in force: ${report.override_problem})` : ''}` : 'no override');
    const now = Date.now() / 1000;
    $('identity-policies').tBodies[0].replaceChildren(...report.policies.map((p) => {
      const tr = document.createElement('tr');
      cell(tr, p.shadow ? `${p.name} (shadow)` : p.name);
      cell(tr, p.algorithm);
      cell(tr, number.format(p.limit), 'num');
      cell(tr, `${p.window} s`, 'num');
      cell(tr, number.format(p.remaining), p.remaining === 0 ? 'num bad' : 'num');
      cell(tr, p.remaining >= p.limit || p.reset <= now ? 'now' : `in ${Math.ceil(p.reset - now)} s`);
      return tr;
    }));
  }

  async function act(what, method, kind, body) {
    if (!looked) return;
    try {
      const { status, json } = await admin(method, identityPath(kind, looked), body);
      if (status === 404 && kind === 'overrides' && method === 'DELETE') {
        message('It had no override.', 'muted');
      } else if (status >= 300) {
        throw new Error((json && json.detail) || `HTTP ${status}`);
      } else {
        message(what(json), 'ok');
      }
      await lookup(true);
    } catch (err) {
      message(`Failed: ${err.message}.`, 'bad');
    }
  }

  // --- wiring -----------------------------------------------------------------

  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    setToken($('token').value.trim());
    $('token').value = '';
    message(token ? 'Token set for this tab.' : 'Token cleared.', 'muted');
    if (token) refreshTop();
  });
  $('forget').addEventListener('click', () => { setToken(''); message('Token forgotten.', 'muted'); });
  $('lookup-form').addEventListener('submit', (event) => { event.preventDefault(); lookup(false); });
  $('reset').addEventListener('click', () => act((r) => `Reset: ${r.deleted} counter(s) deleted.`, 'DELETE', 'identities'));
  $('override-kind').addEventListener('change', () => {
    for (const el of document.querySelectorAll('.limit-only')) el.hidden = $('override-kind').value !== 'limit';
  });
  $('override-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const kind = $('override-kind').value;
    const body = kind === 'limit'
      ? { limit: Number($('override-limit').value), window: $('override-window').value.trim() }
      : { [kind]: true };
    act(() => 'Override set on every instance.', 'PUT', 'overrides', body);
  });
  $('remove-override').addEventListener('click', () => act(() => 'Override removed on every instance.', 'DELETE', 'overrides'));
  $('top-by').addEventListener('change', refreshTop);
  $('top-window').addEventListener('change', refreshTop);

  setToken(token);
  poll();
  setInterval(poll, 1000);
})();
