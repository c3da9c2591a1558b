/* global document, window, fetch, EventSource, URLSearchParams, setTimeout, clearTimeout, navigator */
// The banbus console: a small single-page app over the admin API (/v1/admin/). No build step, no framework.
// Every element is made with the DOM (createElement + text nodes); no value is ever parsed as HTML, so a
// jail named "<script>" is shown as exactly that text. The server's Content-Security-Policy allows no
// inline script either.

// generation changes on every navigation: a page's late answers and live reloads check it, so they never
// draw over the page the operator moved on to.
const state = { me: null, csrf: null, events: null, page: null, generation: 0, listeners: new Set() };

// ---- DOM helpers ---------------------------------------------------------------------------------------

const SVG_NS = 'http://www.w3.org/2000/svg';

/** h('a', {href: '#/x', class: 'y', on: {click: f}}, 'text', child…) */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'on') for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
    else if (key === 'value') el.value = value;
    else if (key === 'checked') el.checked = Boolean(value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof window.Node ? child : document.createTextNode(String(child)));
  }
}

function mount(...children) {
  const main = document.getElementById('main');
  main.replaceChildren();
  append(main, children);
}

function toast(text, isError = false) {
  const box = document.getElementById('toast');
  const item = h('div', { class: isError ? 'error' : '' }, text);
  box.append(item);
  setTimeout(() => item.remove(), isError ? 8000 : 4000);
}

const when = (iso) => (iso ? iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '');
const expires = (iso) => (iso ? when(iso) : 'never');

function table(headers, rows, empty = 'nothing here') {
  if (rows.length === 0) return h('p', { class: 'muted' }, empty);
  return h(
    'table',
    {},
    h(
      'thead',
      {},
      h(
        'tr',
        {},
        headers.map((x) => h('th', { class: x.endsWith('#') ? 'num' : '' }, x.replace(/#$/, ''))),
      ),
    ),
    h('tbody', {}, rows),
  );
}

const tags = (list) => list.map((x) => h('span', { class: 'tag' }, x));
const targetLink = (target) => h('a', { href: `#/bans/${target}`, class: 'mono' }, target);

// ---- API ----------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

async function api(method, path, body) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET' && state.csrf) headers['x-csrf-token'] = state.csrf;
  const res = await fetch(`/v1/admin/${path}`, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 204) return null;
  const json = await res.json().catch(() => ({}));
  if (!res.ok) {
    if (res.status === 401 && path !== 'session') {
      loggedOut();
    }
    throw new ApiError(json.error || `${res.status} ${res.statusText}`, res.status, json.field);
  }
  return json;
}

/** Runs an action, reporting its error in a toast; returns its result or undefined. */
async function attempt(fn, success) {
  try {
    const result = await fn();
    if (success) toast(typeof success === 'function' ? success(result) : success);
    return result;
  } catch (err) {
    toast(err.field ? `${err.message} (${err.field})` : err.message, true);
    return undefined;
  }
}

// ---- live updates --------------------------------------------------------------------------------------

function connectEvents() {
  if (state.events) return;
  const source = new EventSource('/v1/admin/events');
  state.events = source;
  const dot = document.getElementById('live');
  dot.hidden = false;
  source.onopen = () => dot.classList.add('on');
  source.onerror = () => dot.classList.remove('on');
  for (const type of ['hello', 'decisions', 'audit', 'appliers']) {
    source.addEventListener(type, (event) => {
      let data = {};
      try {
        data = JSON.parse(event.data);
      } catch {
        /* keep {} */
      }
      for (const listener of state.listeners) listener(type, data);
    });
  }
}

/** Calls fn on live events while the current page is shown. */
function onLive(fn) {
  state.listeners.add(fn);
}

/** Runs fn `ms` after the first call of a burst; calls while it is pending join it. */
function throttle(fn, ms) {
  let timer;
  return () => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = undefined;
      fn();
    }, ms);
  };
}

/** Calls fn `ms` after the last call, with the last arguments. */
function debounce(fn, ms) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// ---- session -------------------------------------------------------------------------------------------

function loggedOut() {
  state.me = null;
  state.csrf = null;
  if (state.events) state.events.close();
  state.events = null;
  document.getElementById('nav').hidden = true;
  document.getElementById('logout').hidden = true;
  document.getElementById('live').hidden = true;
  document.getElementById('who').textContent = '';
  renderLogin();
}

function loggedIn(me) {
  state.me = me;
  state.csrf = me.csrf;
  document.getElementById('nav').hidden = false;
  document.getElementById('logout').hidden = false;
  document.getElementById('who').textContent =
    `${me.actor}${me.scopes.includes('admin') ? '' : ' (read only)'}`;
  connectEvents();
}

function renderLogin(message) {
  const error = h('p', { class: 'error', id: 'login-error' }, message || '');
  const user = h('input', {
    name: 'user',
    id: 'login-user',
    autocomplete: 'username',
    placeholder: 'user name',
  });
  const password = h('input', {
    name: 'password',
    id: 'login-password',
    type: 'password',
    autocomplete: 'current-password',
    placeholder: 'password',
  });
  const token = h('input', {
    name: 'token',
    id: 'login-token',
    type: 'password',
    placeholder: 'or a token (bb_…)',
  });
  const form = h(
    'form',
    {
      class: 'login',
      id: 'login-form',
      on: {
        submit: async (event) => {
          event.preventDefault();
          const body = token.value ? { token: token.value } : { user: user.value, password: password.value };
          try {
            const me = await api('POST', 'session', body);
            loggedIn({ ...me, via: token.value ? 'token' : 'password' });
            route();
          } catch (err) {
            error.textContent = err.message;
          }
        },
      },
    },
    h('h1', {}, 'Log in'),
    h('label', {}, 'User ', user),
    h('label', {}, 'Password ', password),
    h('label', {}, 'Token ', token),
    h('button', { type: 'submit', id: 'login-submit' }, 'Log in'),
    error,
  );
  mount(form);
  user.focus();
}

// ---- pages ---------------------------------------------------------------------------------------------

function barChart(points) {
  const width = 720;
  const height = 160;
  const pad = { left: 36, right: 8, top: 10, bottom: 24 };
  const max = Math.max(1, ...points.map((p) => p.bans));
  const step = (width - pad.left - pad.right) / Math.max(1, points.length);
  const scale = (height - pad.top - pad.bottom) / max;
  const chart = svg('svg', {
    class: 'chart',
    id: 'bans-per-hour',
    viewBox: `0 0 ${width} ${height}`,
    role: 'img',
    'aria-label': 'new bans per hour, last 24 hours',
  });
  chart.append(
    svg('line', { x1: pad.left, x2: width - pad.right, y1: height - pad.bottom, y2: height - pad.bottom }),
  );
  chart.append(svg('text', { x: 2, y: pad.top + 8 }, String(max)));
  chart.append(svg('text', { x: 2, y: height - pad.bottom }, '0'));
  points.forEach((p, i) => {
    const barHeight = p.bans * scale;
    const x = pad.left + i * step + 1;
    chart.append(
      svg(
        'rect',
        {
          class: 'bar',
          x,
          y: height - pad.bottom - barHeight,
          width: Math.max(1, step - 2),
          height: barHeight,
        },
        svg('title', {}, `${when(p.hour)}: ${p.bans} new bans`),
      ),
    );
    if (i % 3 === 0) chart.append(svg('text', { x, y: height - 8 }, p.hour.slice(11, 16)));
  });
  return chart;
}

async function renderOverview() {
  const gen = state.generation;
  // The overview is computed at most once a second on the server and shared; a reload 1.5 s after a change
  // sees it, and one that still shows an older seq than the stream announced tries again.
  let wanted = 0;
  let seqCard;
  const reload = throttle(() => {
    if (state.generation === gen) draw().catch(() => undefined);
  }, 1500);
  onLive((type, event) => {
    if (type === 'decisions' && event.seq !== undefined) {
      wanted = Math.max(wanted, event.seq);
      if (seqCard) seqCard.textContent = String(event.seq);
    }
    if (type === 'decisions' || type === 'appliers') reload();
  });
  await draw();

  async function draw() {
    const data = await api('GET', 'overview');
    if (state.generation !== gen) return;
    seqCard = h('div', { class: 'value', id: 'stream-seq' }, String(data.seq));
    const card = (label, value, sub) =>
      h(
        'div',
        { class: 'card' },
        value instanceof window.Node ? value : h('div', { class: 'value' }, value),
        h('div', { class: 'label' }, label),
        sub ? h('div', { class: 'muted' }, sub) : null,
      );
    mount(
      h('h1', {}, 'Overview'),
      h(
        'div',
        { class: 'cards' },
        h(
          'div',
          { class: 'card' },
          h('div', { class: 'value', id: 'active-bans' }, String(data.active_bans)),
          h('div', { class: 'label' }, 'active bans'),
          h('div', { class: 'muted' }, `IPv4 ${data.active_bans_v4} · IPv6 ${data.active_bans_v6}`),
        ),
        card('stream seq', seqCard, `published ${data.published_seq}`),
        card('allowlist entries', String(data.allowlist)),
        card('active hosts', String(data.hosts)),
      ),
      h('h2', {}, 'New bans per hour (last 24 hours)'),
      barChart(data.bans_per_hour),
      h(
        'div',
        { class: 'grid' },
        h(
          'section',
          {},
          h('h2', {}, 'Top jails'),
          table(
            ['Jail', 'Active bans#'],
            data.top_jails.map((j) =>
              h(
                'tr',
                {},
                h(
                  'td',
                  {},
                  j.jail === null
                    ? h('span', { class: 'muted' }, '(none)')
                    : h('a', { href: `#/bans?jail=${encodeURIComponent(j.jail)}` }, j.jail),
                ),
                h('td', { class: 'num' }, j.bans),
              ),
            ),
            'no active bans',
          ),
        ),
        h(
          'section',
          {},
          h('h2', {}, 'Top reporting hosts'),
          table(
            ['Host', 'Active bans#'],
            data.top_hosts.map((x) =>
              h(
                'tr',
                {},
                h('td', {}, h('a', { href: `#/bans?host=${encodeURIComponent(x.host)}` }, x.host)),
                h('td', { class: 'num' }, x.bans),
              ),
            ),
            'no active bans',
          ),
        ),
      ),
      h('h2', {}, 'Appliers'),
      table(
        ['Applier', 'Backend', 'Seq#', 'Lag (seqs)#', 'Lag (s)#', 'Entries#', 'Ready', 'Last report'],
        data.appliers.map((a) =>
          h(
            'tr',
            { class: a.stale ? 'warn' : '' },
            h('td', {}, a.applier),
            h('td', {}, a.backend ?? ''),
            h('td', { class: 'num' }, a.seq),
            h('td', { class: 'num' }, a.lag_seqs),
            h('td', { class: 'num' }, a.lag_seconds === null ? '' : a.lag_seconds.toFixed(1)),
            h('td', { class: 'num' }, a.entries ?? ''),
            h('td', {}, a.ready === null ? '' : a.ready ? 'yes' : 'no'),
            h('td', {}, when(a.reported_at), a.stale ? ' (stale)' : ''),
          ),
        ),
        'no applier has reported in (list route-appliers in CONSOLE_APPLIERS, or POST /v1/admin/appliers/heartbeat)',
      ),
      h('p', { class: 'muted' }, `as of ${when(data.at)}`),
    );
    if (data.seq < wanted) reload();
  }
}

const ORIGINS = ['', 'fail2ban', '3cx', 'manual', 'import'];

async function renderBans(params) {
  const filters = {};
  for (const key of ['target', 'jail', 'host', 'origin', 'since', 'until', 'sort', 'order']) {
    const value = params.get(key);
    if (value) filters[key] = value;
  }
  const cursors = [];
  let cursor;

  const field = (name, placeholder, size = 14) =>
    h(
      'label',
      {},
      name,
      h('input', { name, id: `f-${name}`, value: filters[name] || '', placeholder, size }),
    );
  const select = (name, options) =>
    h(
      'label',
      {},
      name,
      h(
        'select',
        { name, id: `f-${name}` },
        options.map((o) => h('option', { value: o, selected: (filters[name] || '') === o }, o || 'any')),
      ),
    );
  const search = h(
    'form',
    {
      class: 'inline',
      id: 'search-form',
      on: {
        submit: (event) => {
          event.preventDefault();
          const q = new URLSearchParams();
          for (const [k, v] of new window.FormData(event.target)) if (v) q.set(k, v);
          window.location.hash = `#/bans?${q}`;
        },
      },
    },
    field('target', 'address or CIDR', 22),
    field('jail', 'sshd'),
    field('host', 'web1'),
    select('origin', ORIGINS),
    field('since', '24h or 2024-05-01', 12),
    field('until', '', 12),
    select('sort', ['last_seen', 'target']),
    select('order', ['', 'desc', 'asc']),
    h('button', { type: 'submit', id: 'search' }, 'Search'),
  );

  const admin = state.me.scopes.includes('admin');
  const banTarget = h('input', {
    name: 'target',
    id: 'ban-target',
    placeholder: 'address or CIDR',
    size: 22,
  });
  const banDuration = h('input', {
    name: 'duration',
    id: 'ban-duration',
    placeholder: 'policy default, or 24h',
    size: 14,
  });
  const banReason = h('input', { name: 'reason', id: 'ban-reason', placeholder: 'why', size: 24 });
  const banForm = admin
    ? h(
        'form',
        {
          class: 'inline',
          id: 'ban-form',
          on: {
            submit: async (event) => {
              event.preventDefault();
              const body = { target: banTarget.value };
              if (banDuration.value) body.duration = banDuration.value;
              if (banReason.value) body.reason = banReason.value;
              const r = await attempt(
                () => api('POST', 'ban', body),
                (x) => `ban of ${x.target} sent`,
              );
              if (r) event.target.reset();
            },
          },
        },
        h('strong', {}, 'Manual ban'),
        h('label', {}, 'target', banTarget),
        h('label', {}, 'duration', banDuration),
        h('label', {}, 'reason', banReason),
        h('button', { type: 'submit', class: 'danger', id: 'ban-submit' }, 'Ban everywhere'),
      )
    : null;

  const results = h('div', { id: 'results' });
  const pager = h('div', { class: 'pager' });

  async function load() {
    const q = new URLSearchParams(filters);
    if (cursor) q.set('cursor', cursor);
    let page;
    try {
      page = await api('GET', `decisions?${q}`);
    } catch (err) {
      results.replaceChildren(
        h(
          'p',
          { class: 'error', id: 'search-error' },
          err.field ? `${err.field}: ${err.message}` : err.message,
        ),
      );
      pager.replaceChildren();
      return;
    }
    results.replaceChildren(
      table(
        [
          'Target',
          'Origin',
          'Jails',
          'Hosts',
          'Reporters#',
          'Bans#',
          'First seen',
          'Last seen',
          'Expires',
          'Reason',
          '',
        ],
        page.items.map((d) =>
          h(
            'tr',
            { 'data-target': d.target },
            h('td', {}, targetLink(d.target)),
            h('td', {}, d.origin),
            h('td', {}, tags(d.jails)),
            h('td', {}, tags(d.hosts)),
            h('td', { class: 'num' }, d.reporters),
            h('td', { class: 'num' }, d.ban_count),
            h('td', {}, when(d.first_seen)),
            h('td', {}, when(d.last_seen)),
            h('td', {}, expires(d.expires_at)),
            h('td', {}, d.reason ?? ''),
            h('td', {}, admin ? unbanButton(d.target, () => load()) : null),
          ),
        ),
        filters.target ? `no decision covers ${filters.target}` : 'no decisions match',
      ),
    );
    pager.replaceChildren(
      h(
        'button',
        {
          type: 'button',
          class: 'secondary',
          disabled: cursors.length === 0,
          on: {
            click: () => {
              cursor = cursors.pop();
              load();
            },
          },
        },
        '← Previous',
      ),
      h(
        'button',
        {
          type: 'button',
          class: 'secondary',
          id: 'next-page',
          disabled: !page.next,
          on: {
            click: () => {
              cursors.push(cursor);
              cursor = page.next;
              load();
            },
          },
        },
        'Next →',
      ),
      h(
        'span',
        { class: 'muted' },
        `page ${cursors.length + 1} · ${page.items.length} shown · sorted by ${page.sort} ${page.order}`,
      ),
    );
  }

  const gen = state.generation;
  mount(h('h1', {}, 'Bans'), search, banForm, results, pager);
  await load();
  const reload = throttle(() => {
    if (state.generation === gen) load();
  }, 1000);
  onLive((type) => {
    if (type === 'decisions') reload();
  });
}

function unbanButton(target, after) {
  return h(
    'button',
    {
      type: 'button',
      class: 'danger unban',
      'data-target': target,
      on: {
        click: async () => {
          if (!window.confirm(`Unban ${target} on every host?`)) return;
          const r = await attempt(
            () => api('POST', 'unban', { target }),
            (x) => `unban of ${x.target} sent; ${x.lifts.length} decision(s) end`,
          );
          if (r && after) after();
        },
      },
    },
    'Unban',
  );
}

async function renderDetail(target) {
  const gen = state.generation;
  const reload = throttle(() => {
    if (state.generation === gen) draw();
  }, 1000);
  onLive((type) => {
    if (type === 'decisions') reload();
  });
  await draw();

  async function draw() {
    let d;
    try {
      d = await api('GET', `decisions/${target.split('/').map(encodeURIComponent).join('/')}`);
    } catch (err) {
      if (state.generation === gen) mount(h('h1', {}, target), h('p', { class: 'error' }, err.message));
      return;
    }
    if (state.generation !== gen) return;
    const admin = state.me.scopes.includes('admin');
    const decision = d.decision;
    const status = decision
      ? h(
          'p',
          { id: 'status', class: 'error' },
          `banned (${decision.origin}), expires ${expires(decision.expires_at)}`,
        )
      : d.covering.length
        ? h(
            'p',
            { id: 'status', class: 'warn' },
            'not banned by itself, but inside ',
            d.covering.map((c) => [targetLink(c.target), ' ']),
          )
        : h('p', { id: 'status', class: 'ok' }, 'not banned');
    mount(
      h('p', {}, h('a', { href: '#/bans' }, '← Bans')),
      h('h1', { class: 'mono', id: 'detail-target' }, d.target),
      status,
      decision && admin ? unbanButton(d.target, () => draw()) : null,
      d.allowlisted_by.length
        ? h('p', { class: 'ok' }, `allowlisted by ${d.allowlisted_by.join(', ')}`)
        : null,
      decision
        ? table(
            ['First seen', 'Last seen', 'Expires', 'Reporters#', 'Bans#', 'Reason', 'Jails', 'Hosts'],
            [
              h(
                'tr',
                {},
                h('td', {}, when(decision.first_seen)),
                h('td', {}, when(decision.last_seen)),
                h('td', {}, expires(decision.expires_at)),
                h('td', { class: 'num' }, decision.reporters),
                h('td', { class: 'num' }, decision.ban_count),
                h('td', {}, decision.reason ?? ''),
                h('td', {}, tags(decision.jails)),
                h('td', {}, tags(decision.hosts)),
              ),
            ],
          )
        : null,
      d.covering.length
        ? [
            h('h2', {}, 'Covering decisions'),
            table(
              ['Target', 'Origin', 'Expires', 'Reason'],
              d.covering.map((c) =>
                h(
                  'tr',
                  {},
                  h('td', {}, targetLink(c.target)),
                  h('td', {}, c.origin),
                  h('td', {}, expires(c.expires_at)),
                  h('td', {}, c.reason ?? ''),
                ),
              ),
            ),
          ]
        : null,
      d.inside
        ? h(
            'p',
            { class: 'muted' },
            `${d.inside}${d.inside >= 10000 ? '+' : ''} decisions lie inside this network (`,
            h('a', { href: `#/bans?target=${encodeURIComponent(d.target)}` }, 'list them'),
            ')',
          )
        : null,
      h('h2', {}, `Active bans (${d.active_bans.length})`),
      table(
        ['Host', 'Jail', 'Origin', 'Banned', 'Expires'],
        d.active_bans.map((b) =>
          h(
            'tr',
            {},
            h('td', {}, b.host),
            h('td', {}, b.jail ?? ''),
            h('td', {}, b.origin),
            h('td', {}, when(b.banned_at)),
            h('td', {}, expires(b.expires_at)),
          ),
        ),
        'none',
      ),
      h('h2', {}, `Reports (${d.reports.length}${d.more_reports ? '+, newest shown' : ''})`),
      table(
        [
          'Received',
          'Host',
          'Jail',
          'Action',
          'Failures#',
          'Log matches',
          'Outcome',
          'Reason',
          'Bantime#',
          'Active',
        ],
        d.reports.map((r) =>
          h(
            'tr',
            { class: 'report' },
            h('td', {}, when(r.received_at), h('div', { class: 'muted' }, `reported ${when(r.reported_at)}`)),
            h('td', {}, r.host),
            h('td', { class: 'jail' }, r.jail ?? ''),
            h('td', {}, r.action, r.origin !== 'fail2ban' ? ` (${r.origin})` : ''),
            h('td', { class: 'num' }, r.failures ?? ''),
            h('td', {}, r.matches ? h('pre', { class: 'matches' }, r.matches) : ''),
            h('td', {}, r.outcome ?? ''),
            h('td', {}, r.reason ?? ''),
            h('td', { class: 'num' }, r.bantime ?? ''),
            h('td', {}, r.active ? '●' : ''),
          ),
        ),
        'no reports for this target',
      ),
    );
  }
}

async function renderAllowlist() {
  const admin = state.me.scopes.includes('admin');
  const { items } = await api('GET', 'allowlist');
  const network = h('input', { name: 'network', id: 'allow-network', placeholder: '192.0.2.0/24', size: 22 });
  const comment = h('input', {
    name: 'comment',
    id: 'allow-comment',
    placeholder: 'office network',
    size: 28,
  });
  const expiresIn = h('input', {
    name: 'expires',
    id: 'allow-expires',
    placeholder: 'never, or 7d',
    size: 10,
  });
  const preview = h('div', { id: 'allow-preview', class: 'muted' });
  const showLifts = (prefix, lifts, total) =>
    preview.replaceChildren(
      total === 0
        ? `${prefix} no current decision.`
        : [
            `${prefix} ${total} decision(s): `,
            lifts.map((t) => [targetLink(t), ' ']),
            total > lifts.length ? '…' : '',
          ],
    );
  const updatePreview = debounce(async () => {
    if (!network.value) return preview.replaceChildren();
    try {
      const r = await api('GET', `allowlist/preview?network=${encodeURIComponent(network.value)}`);
      showLifts('Lifts', r.lifts, r.lifts_total);
    } catch (err) {
      preview.replaceChildren(h('span', { class: 'error' }, err.message));
    }
  }, 300);
  network.addEventListener('input', updatePreview);
  const form = admin
    ? h(
        'form',
        {
          class: 'inline',
          id: 'allow-form',
          on: {
            submit: async (event) => {
              event.preventDefault();
              const body = { network: network.value };
              if (comment.value) body.comment = comment.value;
              if (expiresIn.value) body.expires = expiresIn.value;
              const r = await attempt(
                () => api('POST', 'allowlist', body),
                (x) => `allowlisted ${x.entry.network}`,
              );
              if (r) {
                await renderAllowlist();
                const p = document.getElementById('allow-preview');
                p.replaceChildren(
                  r.lifts_total === 0
                    ? `${r.entry.network} added; it lifts no current decision.`
                    : [
                        `${r.entry.network} added; lifted ${r.lifts_total} decision(s): `,
                        r.lifts.map((t) => [targetLink(t), ' ']),
                      ],
                );
              }
            },
          },
        },
        h('strong', {}, 'Add'),
        h('label', {}, 'network', network),
        h('label', {}, 'comment', comment),
        h('label', {}, 'expires in', expiresIn),
        h('button', { type: 'submit', id: 'allow-submit' }, 'Allowlist'),
      )
    : null;
  mount(
    h('h1', {}, 'Allowlist'),
    h(
      'p',
      { class: 'muted' },
      'Networks that are never banned. Adding one lifts every decision it overlaps, on every host.',
    ),
    form,
    preview,
    table(
      ['Network', 'Comment', 'Expires', 'Added by', 'Added', ''],
      items.map((e) =>
        h(
          'tr',
          { 'data-network': e.network },
          h('td', { class: 'mono' }, e.network),
          h('td', {}, e.comment ?? ''),
          h('td', {}, expires(e.expires_at)),
          h('td', {}, e.created_by ?? ''),
          h('td', {}, when(e.created_at)),
          h(
            'td',
            {},
            admin
              ? h(
                  'button',
                  {
                    type: 'button',
                    class: 'secondary',
                    on: {
                      click: async () => {
                        if (!window.confirm(`Remove ${e.network} from the allowlist?`)) return;
                        const ok = await attempt(
                          () => api('DELETE', `allowlist/${e.network}`),
                          `removed ${e.network}`,
                        );
                        if (ok !== undefined) renderAllowlist();
                      },
                    },
                  },
                  'Remove',
                )
              : null,
          ),
        ),
      ),
      'the allowlist is empty',
    ),
  );
}

async function renderHosts(newToken) {
  const admin = state.me.scopes.includes('admin');
  const { items } = await api('GET', 'hosts');
  const name = h('input', { name: 'name', id: 'host-name', placeholder: 'web1', size: 18 });
  const scope = (s, on) =>
    h(
      'label',
      {},
      s,
      h('input', { type: 'checkbox', name: 'scopes', value: s, id: `host-scope-${s}`, checked: on }),
    );
  const form = admin
    ? h(
        'form',
        {
          class: 'inline',
          id: 'host-form',
          on: {
            submit: async (event) => {
              event.preventDefault();
              const scopes = [...event.target.querySelectorAll('input[name=scopes]:checked')].map(
                (x) => x.value,
              );
              const r = await attempt(
                () => api('POST', 'hosts', { name: name.value, scopes }),
                (x) => `added ${x.host.name}`,
              );
              // The token lives only in this render: it is not kept anywhere and is gone on the next view.
              if (r) renderHosts({ name: r.host.name, token: r.token });
            },
          },
        },
        h('strong', {}, 'Add host'),
        h('label', {}, 'name', name),
        scope('report', true),
        scope('read', false),
        scope('admin', false),
        h('button', { type: 'submit', id: 'host-submit' }, 'Add'),
      )
    : null;
  mount(
    h('h1', {}, 'Hosts'),
    newToken
      ? h(
          'div',
          { class: 'token', id: 'new-token' },
          h('p', {}, 'Token for ', h('strong', {}, newToken.name), ' — shown only this once, store it now:'),
          h('code', { id: 'token-value' }, newToken.token),
          ' ',
          h(
            'button',
            {
              type: 'button',
              class: 'secondary',
              on: { click: () => navigator.clipboard?.writeText(newToken.token).then(() => toast('copied')) },
            },
            'Copy',
          ),
        )
      : null,
    form,
    table(
      ['Name', 'Scopes', 'Created', 'Last seen', 'Status', ''],
      items.map((x) =>
        h(
          'tr',
          { 'data-host': x.name },
          h('td', {}, x.name),
          h('td', {}, tags(x.scopes)),
          h('td', {}, when(x.created_at)),
          h('td', {}, x.last_seen_at ? when(x.last_seen_at) : 'never'),
          h(
            'td',
            { class: x.revoked_at ? 'error' : 'ok' },
            x.revoked_at ? `revoked ${when(x.revoked_at)}` : 'active',
          ),
          h(
            'td',
            {},
            admin && !x.revoked_at
              ? h(
                  'button',
                  {
                    type: 'button',
                    class: 'danger',
                    on: {
                      click: async () => {
                        if (
                          !window.confirm(
                            `Revoke the token of ${x.name}? Its reports are refused from now on.`,
                          )
                        )
                          return;
                        const ok = await attempt(
                          () => api('POST', `hosts/${encodeURIComponent(x.name)}/revoke`),
                          `revoked ${x.name}`,
                        );
                        if (ok !== undefined) renderHosts();
                      },
                    },
                  },
                  'Revoke',
                )
              : null,
          ),
        ),
      ),
      'no hosts yet',
    ),
  );
}

async function renderAudit() {
  const rows = h('tbody', {});
  const row = (e) =>
    h(
      'tr',
      {},
      h('td', {}, when(e.at)),
      h('td', {}, e.actor),
      h('td', {}, e.action),
      h('td', { class: 'mono' }, e.target ?? ''),
      h('td', { class: 'mono' }, Object.keys(e.detail).length ? JSON.stringify(e.detail) : ''),
      h('td', {}, e.client ?? ''),
    );
  let next = null;
  const more = h(
    'button',
    {
      type: 'button',
      class: 'secondary',
      on: {
        click: async () => {
          const page = await api('GET', `audit?before=${next}`);
          rows.append(...page.items.map(row));
          next = page.next;
          more.disabled = !next;
        },
      },
    },
    'Older →',
  );
  const page = await api('GET', 'audit');
  rows.append(...page.items.map(row));
  next = page.next;
  more.disabled = !next;
  mount(
    h('h1', {}, 'Audit log'),
    h('p', { class: 'muted' }, 'Who changed what, newest first.'),
    h(
      'table',
      { id: 'audit' },
      h(
        'thead',
        {},
        h(
          'tr',
          {},
          ['Time', 'Who', 'Action', 'Target', 'Detail', 'Client'].map((x) => h('th', {}, x)),
        ),
      ),
      rows,
    ),
    h('div', { class: 'pager' }, more),
  );
  onLive((type, entry) => {
    if (type === 'audit' && state.page === 'audit') rows.prepend(row(entry));
  });
}

// ---- routing -------------------------------------------------------------------------------------------

async function route() {
  if (!state.me) return renderLogin();
  state.listeners.clear();
  state.generation++;
  const hash = window.location.hash.replace(/^#\/?/, '') || 'overview';
  const [path, query = ''] = hash.split('?');
  const params = new URLSearchParams(query);
  let page = path.split('/')[0];
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === page);
  try {
    if (page === 'bans' && path.length > 'bans/'.length) {
      state.page = 'detail';
      await renderDetail(decodeURIComponent(path.slice('bans/'.length)));
      return;
    }
    if (!['overview', 'bans', 'allowlist', 'hosts', 'audit'].includes(page)) page = 'overview';
    state.page = page;
    if (page === 'overview') await renderOverview();
    else if (page === 'bans') await renderBans(params);
    else if (page === 'allowlist') await renderAllowlist();
    else if (page === 'hosts') await renderHosts();
    else await renderAudit();
  } catch (err) {
    if (err.status !== 401) mount(h('p', { class: 'error' }, err.message));
  }
}

async function start() {
  document.getElementById('logout').addEventListener('click', async () => {
    await attempt(() => api('DELETE', 'session'));
    loggedOut();
  });
  window.addEventListener('hashchange', () => route());
  try {
    const me = await api('GET', 'session');
    loggedIn(me);
  } catch {
    state.me = null;
  }
  route();
}

start();
