// Agent playground: sends a turn, reads the server-sent events of the reply and shows them
// delta by delta. The chat history lives here and goes with every turn (bounded).
(function () {
  "use strict";

  const root = document.getElementById("playground");
  if (!root) return;
  const log = document.getElementById("pg-log");
  const form = document.getElementById("pg-form");
  const input = document.getElementById("pg-message");
  const tagsInput = document.getElementById("pg-tags");
  const sendButton = document.getElementById("pg-send");
  const stopButton = document.getElementById("pg-stop");
  const resetButton = document.getElementById("pg-reset");
  const streamUrl = root.dataset.streamUrl;
  const csrfToken = root.dataset.csrfToken;
  const maxHistory = parseInt(root.dataset.maxHistory, 10) || 20;

  let history = [];
  let controller = null;

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text; // never innerHTML: model output is data
    return node;
  }

  function addMessage(role, text) {
    const empty = document.getElementById("pg-empty");
    if (empty) empty.remove();
    const item = element("div", "pg-msg pg-" + role);
    item.append(element("div", "pg-who", role === "user" ? "You" : "Agent"));
    const body = element("div", "pg-text", text);
    item.append(body);
    log.append(item);
    log.scrollTop = log.scrollHeight;
    return { item: item, body: body };
  }

  function showNote(item, className, text) {
    item.append(element("p", "pg-note " + className, text));
  }

  function showUsed(item, completions) {
    const box = element("details", "pg-used");
    const count = completions.length;
    box.append(element("summary", null, count ? "Used " + count + " approved completion" + (count === 1 ? "" : "s")
                                               : "No completions were used"));
    if (count) {
      const list = element("ol");
      for (const c of completions) {
        const entry = element("li");
        entry.dataset.completionId = c.id;
        entry.append(element("span", "badge pg-rule", c.rule), document.createTextNode(" #" + c.id + " "),
                     element("span", "pg-question", c.question));
        list.append(entry);
      }
      box.append(list);
    }
    item.append(box);
  }

  function parseEvent(block) {
    let name = "message";
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (!data.length) return null;
    try {
      return { name: name, data: JSON.parse(data.join("\n")) };
    } catch (e) {
      return null;
    }
  }

  async function failureMessage(response) {
    const type = response.headers.get("Content-Type") || "";
    if (type.includes("application/json")) {
      const body = await response.json().catch(function () { return {}; });
      if (body.error) return body.error;
    }
    if (response.redirected || response.status === 403) return "Your session has expired; reload the page and log in again.";
    if (response.status === 404) return "This agent is not available to you.";
    return "The request failed (" + response.status + ").";
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    input.disabled = busy;
    stopButton.hidden = !busy;
    root.classList.toggle("pg-busy", busy);
  }

  async function send(message) {
    const tags = tagsInput.value.split(",").map(function (t) { return t.trim(); }).filter(Boolean);
    addMessage("user", message);
    const reply = addMessage("assistant", "");
    reply.item.classList.add("pg-streaming");
    let text = "";
    let ended = false;
    controller = new AbortController();
    setBusy(true);

    function handle(event) {
      if (event.name === "delta") {
        text += event.data.text;
        reply.body.textContent = text;
        log.scrollTop = log.scrollHeight;
      } else if (event.name === "used") {
        showUsed(reply.item, event.data.completions || []);
      } else if (event.name === "done") {
        ended = true;
        history.push({ role: "user", content: message }, { role: "assistant", content: text });
        history = history.slice(-maxHistory);
        if (event.data.finish_reason === "length") showNote(reply.item, "pg-warning", "The reply was cut off (max tokens).");
      } else if (event.name === "error") {
        ended = true;
        showNote(reply.item, "pg-error", event.data.message || "The model call failed.");
      }
    }

    try {
      const response = await fetch(streamUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "Accept": "text/event-stream", "X-CSRFToken": csrfToken },
        body: JSON.stringify({ message: message, history: history.slice(-maxHistory), tags: tags }),
        signal: controller.signal,
      });
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !type.startsWith("text/event-stream")) throw new Error(await failureMessage(response));
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const chunk = await reader.read();
        if (chunk.done) break;
        buffer += chunk.value;
        let match;
        while ((match = /\r?\n\r?\n/.exec(buffer))) {
          const event = parseEvent(buffer.slice(0, match.index));
          buffer = buffer.slice(match.index + match[0].length);
          if (event) handle(event);
        }
      }
      if (!ended) showNote(reply.item, "pg-error", "The connection closed before the reply was finished.");
    } catch (error) {
      const stopped = error.name === "AbortError";
      showNote(reply.item, stopped ? "pg-warning" : "pg-error", stopped ? "Stopped." : error.message);
    } finally {
      reply.item.classList.remove("pg-streaming");
      controller = null;
      setBusy(false);
      input.focus();
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const message = input.value.trim();
    if (!message || controller) return;
    input.value = "";
    send(message);
  });

  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  stopButton.addEventListener("click", function () {
    if (controller) controller.abort();
  });

  resetButton.addEventListener("click", function () {
    if (controller) controller.abort();
    history = [];
    log.replaceChildren(element("p", "pg-empty", "New chat: the history is cleared."));
    log.lastChild.id = "pg-empty";
    input.focus();
  });
})();
