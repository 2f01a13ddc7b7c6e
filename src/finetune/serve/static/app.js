// The page of `finetune serve`: chat, compare and blind test, over the server's own OpenAI-style API.
// Plain browser JavaScript, no build step, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
let models = [];

function headers() {
  // The server's --api-key, when it has one (typed into the header box; kept for this tab only).
  const key = $("api-key").value.trim();
  return key ? {"Content-Type": "application/json", "Authorization": `Bearer ${key}`}
             : {"Content-Type": "application/json"};
}

// --- the API ---------------------------------------------------------------------------------------

async function complete(model, messages, temperature, onDelta) {
  // Streams a chat completion; calls onDelta(piece) as text arrives; resolves to the whole reply.
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers(),
    body: JSON.stringify({model, messages, temperature, stream: true}),
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", text = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") return text;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const piece = chunk.choices.length ? chunk.choices[0].delta.content : "";
      if (piece) {
        text += piece;
        onDelta(piece);
      }
    }
  }
  return text;
}

async function loadModels() {
  for (let attempt = 0; ; attempt++) {
    const response = await fetch("/v1/models", {headers: headers()});
    if (response.status === 401) {
      $("key-box").hidden = false;
      $("status").textContent = "this server needs its API key";
      await new Promise((resolve) => $("api-key").addEventListener("change", resolve, {once: true}));
      continue;
    }
    if (response.ok) {
      models = (await response.json()).data.map((m) => m.id);
      $("status").textContent = `${models.length} models ready`;
      return;
    }
    const body = await response.json().catch(() => ({}));
    $("status").textContent = (body.error && body.error.message) || "loading models…";
    if (response.status !== 503) return;
    await new Promise((resolve) => setTimeout(resolve, Math.min(2000, 250 * (attempt + 1))));
  }
}

function checkboxes(container, name, checked) {
  for (const model of models) {
    const label = document.createElement("label");
    label.className = "check";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.name = name;
    box.value = model;
    box.checked = checked(model);
    label.append(box, " ", model);
    container.append(label);
  }
}

const checked = (name) => [...document.querySelectorAll(`input[name="${name}"]:checked`)].map((b) => b.value);

function bubble(list, role, text) {
  const item = document.createElement("li");
  item.className = role;
  item.textContent = text;
  list.append(item);
  return item;
}

// --- tabs ------------------------------------------------------------------------------------------

for (const tab of document.querySelectorAll('[role="tab"]')) {
  tab.addEventListener("click", () => {
    for (const other of document.querySelectorAll('[role="tab"]')) {
      other.setAttribute("aria-selected", String(other === tab));
      $(other.getAttribute("aria-controls")).hidden = other !== tab;
    }
  });
}

// --- chat ------------------------------------------------------------------------------------------

const history = [];

$("chat-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text) return;
  $("chat-input").value = "";
  $("chat-send").disabled = true;
  history.push({role: "user", content: text});
  bubble($("chat-log"), "user", text);
  const reply = bubble($("chat-log"), "assistant", "");
  const system = $("chat-system").value.trim();
  const messages = (system ? [{role: "system", content: system}] : []).concat(history);
  try {
    const answer = await complete($("chat-model").value, messages, Number($("chat-temperature").value),
                                  (piece) => { reply.textContent += piece; });
    reply.textContent = answer;
    history.push({role: "assistant", content: answer});
  } catch (error) {
    reply.textContent = `error: ${error.message}`;
    history.pop();
  } finally {
    $("chat-send").disabled = false;
  }
});

$("chat-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("chat-form").requestSubmit();
  }
});

$("chat-reset").addEventListener("click", () => {
  history.length = 0;
  $("chat-log").replaceChildren();
});

// --- compare ---------------------------------------------------------------------------------------

$("compare-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const prompt = $("compare-input").value.trim();
  if (!prompt) return;
  const columns = $("compare-columns");
  columns.replaceChildren();
  const jobs = checked("compare").map((model) => {
    const column = document.createElement("article");
    column.className = "column";
    column.dataset.model = model;
    const title = document.createElement("h3");
    title.textContent = model;
    const text = document.createElement("p");
    column.append(title, text);
    columns.append(column);
    return complete(model, [{role: "user", content: prompt}], 0, (piece) => { text.textContent += piece; })
      .then((answer) => { text.textContent = answer; column.dataset.done = "true"; })
      .catch((error) => { text.textContent = `error: ${error.message}`; column.dataset.done = "true"; });
  });
  await Promise.all(jobs);
});

// --- blind test ------------------------------------------------------------------------------------

const REAL = "your real reply";
const tally = {};
let heldout = [], heldoutNext = 0, current = null;

function shuffle(items) {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [items[i], items[j]] = [items[j], items[i]];
  }
  return items;
}

$("blind-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const own = $("blind-input").value.trim();
  let context, real = null;
  if (own) {
    context = [{role: "user", content: own}];
  } else if (heldout.length) {
    const item = heldout[heldoutNext++ % heldout.length];
    context = item.messages;
    real = item.reply;
  } else {
    $("blind-saved").textContent = "no held-out conversations (start the server with --heldout FILE); type a prompt";
    return;
  }
  const pool = checked("blind").concat(real === null ? [] : [REAL]);
  if (pool.length < 2) {
    $("blind-saved").textContent = "pick at least two contestants";
    return;
  }
  const [first, second] = shuffle(pool.slice()).slice(0, 2);
  $("blind-context").replaceChildren();
  for (const message of context) bubble($("blind-context"), message.role, message.content);
  for (const id of ["pick-a", "pick-b"]) $(id).disabled = true;
  $("blind-a").textContent = $("blind-b").textContent = "…";
  $("blind-saved").textContent = "";
  const answer = (model) => model === REAL ? Promise.resolve(real) : complete(model, context, 0.7, () => {});
  const [a, b] = await Promise.all([answer(first), answer(second)]);
  current = {context, replies: {a: [first, a], b: [second, b]}};
  $("blind-a").textContent = a;
  $("blind-b").textContent = b;
  for (const model of [first, second]) tally[model] = tally[model] || {wins: 0, shown: 0};
  tally[first].shown++;
  tally[second].shown++;
  for (const id of ["pick-a", "pick-b"]) $(id).disabled = a === b;
  if (a === b) $("blind-saved").textContent = "both replies are the same; nothing to pick";
});

async function pick(side) {
  if (!current) return;
  const other = side === "a" ? "b" : "a";
  const [winner, chosen] = current.replies[side];
  const [loser, rejected] = current.replies[other];
  for (const id of ["pick-a", "pick-b"]) $(id).disabled = true;
  tally[winner].wins++;
  const response = await fetch("/v1/preferences", {
    method: "POST",
    headers: headers(),
    body: JSON.stringify({messages: current.context, chosen, rejected, models: {chosen: winner, rejected: loser}}),
  });
  const body = await response.json();
  $("blind-saved").textContent = response.ok ? `saved (${body.count} pairs in ${body.path})`
                                             : `not saved: ${body.error.message}`;
  current = null;
}

$("pick-a").addEventListener("click", () => pick("a"));
$("pick-b").addEventListener("click", () => pick("b"));

$("blind-reveal").addEventListener("click", () => {
  const body = $("blind-tally").querySelector("tbody");
  body.replaceChildren();
  for (const [model, counts] of Object.entries(tally).sort((x, y) => y[1].wins - x[1].wins)) {
    const row = document.createElement("tr");
    for (const value of [model, counts.wins, counts.shown]) {
      const cell = document.createElement("td");
      cell.textContent = String(value);
      row.append(cell);
    }
    body.append(row);
  }
  $("blind-tally").hidden = false;
});

// --- start -----------------------------------------------------------------------------------------

(async () => {
  await loadModels();
  for (const model of models) $("chat-model").append(new Option(model, model));
  const tuned = models.find((m) => m !== "base");
  if (tuned) $("chat-model").value = tuned;
  checkboxes($("compare-models"), "compare", () => true);
  checkboxes($("blind-models"), "blind", (m) => m !== "base");
  const response = await fetch("/v1/heldout", {headers: headers()});
  if (response.ok) heldout = shuffle((await response.json()).data);
})();
