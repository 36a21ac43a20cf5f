// gptlab playground: plain JS and SVG, talking to this server's /v1 API only (works offline).
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let info = null; // the /v1/models entry: id, gptlab.{block_size, n_layer, n_head, limits}
let text = { promptIds: [], promptTokens: [], gen: [] }; // gen: [{id, token, logprob, top}]
const dists = new Map(); // "ids" -> next-token distribution, fetched once
let attn = null;

async function api(path, body) {
  const r = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  const data = await r.json();
  if (!r.ok) throw new Error(data.error ? data.error.message : r.statusText);
  return data;
}

// Server-sent events of a streamed completion: each parsed `data:` chunk until [DONE].
async function* stream(body) {
  const r = await fetch("/v1/completions", { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ ...body, stream: true }) });
  if (!r.ok) throw new Error((await r.json()).error.message);
  const reader = r.body.getReader();
  const utf8 = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += utf8.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).replace(/^data: /, "");
      buffer = buffer.slice(cut + 2);
      if (line === "[DONE]") return;
      const chunk = JSON.parse(line);
      if (chunk.error) throw new Error(chunk.error.message);
      yield chunk;
    }
  }
}

// ---- controls ------------------------------------------------------------------------------------
function decoding(strategy) {
  const num = (id) => Number($(id).value);
  const seed = num("seed");
  switch (strategy) {
    case "greedy": return { strategy: "greedy" };
    case "temperature": return { strategy: "sample", temperature: num("temperature"), seed };
    case "top_k": return { strategy: "sample", temperature: num("temperature"), top_k: num("top_k"), seed };
    case "top_p": return { strategy: "sample", temperature: num("temperature"), top_p: num("top_p"), seed };
    case "beam": return { strategy: "beam", num_beams: num("num_beams") };
  }
  throw new Error(`unknown strategy ${strategy}`);
}

function showStrategyInputs() {
  const s = $("strategy").value;
  for (const label of document.querySelectorAll("label[data-for]")) {
    label.classList.toggle("hidden", !label.dataset.for.split(" ").includes(s));
  }
}

function status(msg) { $("status").textContent = msg; }

// ---- the text, token by token ----------------------------------------------------------------------
const shown = (t) => t.replace(/\n/g, "⏎\n");
const label = (t) => JSON.stringify(t).slice(1, -1).replace(/ /g, "␣");
const colour = (p) => `hsl(${Math.round(120 * p)}, 75%, 80%)`;
const allIds = () => text.promptIds.concat(text.gen.map((g) => g.id));

function tokenSpan(token, pos, cls, prob) {
  const span = document.createElement("span");
  span.className = `tok ${cls}`;
  span.textContent = shown(token);
  span.dataset.pos = pos;
  if (prob !== undefined) span.style.background = colour(prob);
  span.addEventListener("mouseenter", () => hoverToken(span, pos));
  span.addEventListener("mouseleave", () => { span.classList.remove("hover"); $("tooltip").classList.add("hidden"); });
  return span;
}

function renderPrompt() {
  const out = $("output");
  out.replaceChildren(...text.promptTokens.map((t, i) => tokenSpan(t, i, "prompt")));
}

function appendGenerated(g) {
  text.gen.push(g);
  const pos = text.promptIds.length + text.gen.length - 1;
  $("output").appendChild(tokenSpan(g.token, pos, "gen", Math.exp(g.logprob)));
}

async function distribution(pos) {
  const ids = allIds().slice(0, pos);
  const key = ids.join(",");
  if (!dists.has(key)) dists.set(key, api("/v1/next_token", { ids, top_n: 12 }));
  return dists.get(key);
}

async function hoverToken(span, pos) {
  span.classList.add("hover");
  const tip = $("tooltip");
  const gen = pos >= text.promptIds.length ? text.gen[pos - text.promptIds.length] : null;
  const lines = [`position ${pos}: "${label(span.textContent.replace("⏎", ""))}"`];
  if (pos === 0) lines.push("the first token: no context, no prediction");
  tip.textContent = lines.join("\n");
  const box = span.getBoundingClientRect(); // beside the token's line, so the text stays readable
  tip.style.left = `${box.right + 8}px`;
  tip.style.top = `${box.bottom + 4}px`;
  tip.classList.remove("hidden");
  if (pos === 0) { clearBars("the first token has no context to predict it from"); return; }
  const top = gen ? gen.top.map((t) => ({ ...t, prob: Math.exp(t.logprob) })) : (await distribution(pos)).top;
  if (gen) lines.push(`p = ${Math.exp(gen.logprob).toFixed(3)} (log-prob ${gen.logprob.toFixed(3)})`);
  lines.push("alternatives:", ...top.slice(0, 5).map((t) => `  ${label(t.token).padEnd(8)} ${t.prob.toFixed(3)}`));
  tip.textContent = lines.join("\n");
  drawBars(pos, (await distribution(pos)).top);
}

// ---- next-token bar chart -------------------------------------------------------------------------
function clearBars(caption) {
  $("bars").replaceChildren();
  $("bars-caption").textContent = caption;
}

function svg(tag, attrs, parent, textContent) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (textContent !== undefined) el.textContent = textContent;
  parent.appendChild(el);
  return el;
}

function drawBars(pos, top) {
  const chart = $("bars");
  chart.replaceChildren();
  const actual = allIds()[pos];
  const before = text.promptTokens.concat(text.gen.map((g) => g.token)).slice(0, pos).join("");
  $("bars-caption").textContent = `after "…${label(before.slice(-24))}" (dark: the token that came)`;
  const rowH = 22, left = 70, width = 380, pmax = top[0].prob;
  chart.setAttribute("height", top.length * rowH + 10);
  top.forEach((t, i) => {
    const y = 5 + i * rowH;
    svg("text", { x: left - 6, y: y + 15, "text-anchor": "end" }, chart, label(t.token));
    svg("rect", { x: left, y, width: Math.max(1, (width * t.prob) / pmax), height: rowH - 5,
      fill: t.id === actual ? "#1d2330" : "#8fa3c7", class: t.id === actual ? "bar actual" : "bar" }, chart);
    svg("text", { x: left + (width * t.prob) / pmax + 6, y: y + 15 }, chart, t.prob.toFixed(3));
  });
}

// ---- generate -------------------------------------------------------------------------------------
async function generate() {
  const button = $("generate");
  button.disabled = true;
  attn = null;
  try {
    const prompt = $("prompt").value;
    const head = await api("/v1/next_token", { prompt, top_n: 1 });
    text = { promptIds: head.ids, promptTokens: head.tokens, gen: [] };
    renderPrompt();
    clearBars("hover a token");
    const t0 = performance.now();
    status("generating…");
    const body = { prompt, max_tokens: Number($("max_tokens").value), logprobs: 5, ...decoding($("strategy").value) };
    for await (const chunk of stream(body)) {
      const c = chunk.choices[0];
      if (c.logprobs) {
        appendGenerated({ id: c.logprobs.token_ids[0], token: c.logprobs.tokens[0],
          logprob: c.logprobs.token_logprobs[0], top: c.logprobs.gptlab_top[0] });
        status(`generating… ${text.gen.length} tokens`);
      }
      if (c.finish_reason) {
        const s = (performance.now() - t0) / 1000;
        status(`done: ${text.gen.length} tokens in ${s.toFixed(2)} s (${c.finish_reason})`);
      }
    }
  } catch (e) {
    status(`error: ${e.message}`);
  } finally {
    button.disabled = false;
  }
}

// ---- attention ------------------------------------------------------------------------------------
async function loadAttention() {
  const limit = info.gptlab.limits.max_attention_tokens;
  let ids = allIds();
  if (!ids.length) ids = (await api("/v1/next_token", { prompt: $("prompt").value, top_n: 1 })).ids;
  status("computing attention…");
  attn = await api("/v1/attention", { ids: ids.slice(0, limit) });
  $("layer").replaceChildren(...attn.attention.map((_, l) => new Option(`layer ${l}`, l)));
  $("head").replaceChildren(new Option("mean of heads", "mean"),
    ...attn.attention[0].map((_, h) => new Option(`head ${h}`, h)));
  status(`attention over ${attn.ids.length} tokens` + (ids.length > limit ? ` (the first ${limit})` : ""));
  drawHeatmap();
}

function heatmapWeights() {
  const layer = attn.attention[Number($("layer").value)];
  const head = $("head").value;
  if (head !== "mean") return layer[Number(head)];
  return layer[0].map((row, q) => row.map((_, k) => layer.reduce((s, h) => s + h[q][k], 0) / layer.length));
}

function drawHeatmap() {
  const map = $("heatmap");
  map.replaceChildren();
  const w = heatmapWeights(), T = w.length, margin = 60;
  const cell = Math.max(4, Math.min(22, Math.floor(580 / T)));
  map.setAttribute("width", margin + T * cell + 10);
  map.setAttribute("height", margin + T * cell + 10);
  const tokens = attn.tokens.map(label);
  for (let q = 0; q < T; q++) {
    if (cell >= 8) {
      svg("text", { x: margin - 4, y: margin + q * cell + cell * 0.75, "text-anchor": "end" }, map, tokens[q]);
      const x = margin + q * cell + cell * 0.7;
      svg("text", { x, y: margin - 4, transform: `rotate(-60 ${x} ${margin - 4})` }, map, tokens[q]);
    }
    for (let k = 0; k < T; k++) {
      const rect = svg("rect", { x: margin + k * cell, y: margin + q * cell, width: cell, height: cell,
        fill: `hsl(220, 75%, ${Math.round(98 - 68 * Math.sqrt(w[q][k]))}%)`, class: "cell" }, map);
      rect.addEventListener("mouseenter", () => {
        $("cell-info").textContent = `"${tokens[q]}" (${q}) → "${tokens[k]}" (${k}): ${w[q][k].toFixed(4)}`;
      });
    }
  }
}

// ---- compare ---------------------------------------------------------------------------------------
const PRESETS = [
  ["greedy", { strategy: "greedy" }],
  ["temperature 0.7", { strategy: "sample", temperature: 0.7 }],
  ["top-k 10", { strategy: "sample", top_k: 10 }],
  ["top-p 0.9", { strategy: "sample", top_p: 0.9 }],
  ["beam 4", { strategy: "beam", num_beams: 4 }],
  ["temperature 1.3", { strategy: "sample", temperature: 1.3 }],
];

async function compare() {
  const prompt = $("prompt").value, max_tokens = Number($("max_tokens").value);
  const chosen = PRESETS.filter((_, i) => $(`preset-${i}`).checked);
  const out = $("compare-out");
  out.replaceChildren();
  status(`comparing ${chosen.length} strategies…`);
  const seed = Number($("seed").value);
  await Promise.all(chosen.map(async ([name, dec]) => {
    const col = document.createElement("div");
    col.className = "column";
    col.innerHTML = `<h3></h3><div class="tokens"></div><div class="meta">…</div>`;
    col.querySelector("h3").textContent = name;
    out.appendChild(col);
    try {
      const body = { prompt, max_tokens, logprobs: 1, ...dec, ...(dec.strategy === "sample" ? { seed } : {}) };
      const r = await api("/v1/completions", body);
      const lp = r.choices[0].logprobs;
      const box = col.querySelector(".tokens");
      lp.tokens.forEach((t, i) => {
        const span = document.createElement("span");
        span.className = "tok gen";
        span.textContent = shown(t);
        span.style.background = colour(Math.exp(lp.token_logprobs[i]));
        span.title = `p = ${Math.exp(lp.token_logprobs[i]).toFixed(3)}`;
        box.appendChild(span);
      });
      const mean = lp.token_logprobs.reduce((a, b) => a + b, 0) / Math.max(1, lp.token_logprobs.length);
      col.querySelector(".meta").textContent = `${lp.tokens.length} tokens, mean log-prob ${mean.toFixed(3)}`;
    } catch (e) {
      col.querySelector(".meta").textContent = `error: ${e.message}`;
    }
  }));
  status(`compared ${chosen.length} strategies`);
}

// ---- wiring ----------------------------------------------------------------------------------------
function showView(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === name);
  for (const v of document.querySelectorAll(".view")) v.classList.toggle("hidden", v.id !== `view-${name}`);
  if (name === "attention" && !attn) loadAttention().catch((e) => status(`error: ${e.message}`));
}

async function init() {
  info = (await api("/v1/models")).data[0];
  const g = info.gptlab;
  $("model-info").textContent = `${info.id}: ${g.n_layer} layers × ${g.n_head} heads × ${g.n_embd}, ` +
    `context ${g.block_size}, vocabulary ${g.vocab_size}`;
  $("max_tokens").max = g.limits.max_tokens;
  $("num_beams").max = g.limits.max_num_beams;
  $("compare-choices").replaceChildren(...PRESETS.map(([name], i) => {
    const l = document.createElement("label");
    l.innerHTML = `<input type="checkbox" id="preset-${i}" checked> `;
    l.append(name);
    return l;
  }));
  $("strategy").addEventListener("change", showStrategyInputs);
  $("generate").addEventListener("click", generate);
  $("compare").addEventListener("click", compare);
  $("layer").addEventListener("change", drawHeatmap);
  $("head").addEventListener("change", drawHeatmap);
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));
  showStrategyInputs();
  status("ready");
}

init().catch((e) => status(`error: ${e.message}`));
