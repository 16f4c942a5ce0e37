(function () {
  "use strict";
  var dialog = document.getElementById("dialog");
  var dialogBody = document.getElementById("dialog-body");

  function toast(text, bad) {
    var box = document.getElementById("toasts");
    var item = document.createElement("div");
    item.className = "toast" + (bad ? " bad" : "");
    item.textContent = text;  // never HTML: messages can echo user or model text
    box.appendChild(item);
    setTimeout(function () { item.remove(); }, 6000);
  }

  /* Dialogs: content loaded by htmx into #dialog-body opens the modal. */
  document.body.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target === dialogBody && !dialog.open) { dialog.showModal(); }
  });
  document.addEventListener("click", function (event) {
    if (event.target.closest("[data-close-dialog]")) { dialog.close(); }
    document.querySelectorAll("details.menu[open]").forEach(function (menu) {
      if (!menu.contains(event.target)) { menu.removeAttribute("open"); }
    });
    var menuLink = event.target.closest("details.menu .menu-items a");
    if (menuLink) { menuLink.closest("details.menu").removeAttribute("open"); }
  });
  dialog.addEventListener("close", function () { dialogBody.innerHTML = ""; });

  document.body.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    var text = (xhr && xhr.responseText && xhr.responseText.length < 400) ? xhr.responseText : "Something went wrong (" + (xhr ? xhr.status : "network") + ").";
    toast(text, true);
  });
  document.body.addEventListener("htmx:sendError", function () { toast("The server did not answer. Check your connection.", true); });

  /* Evidence: scroll each source chunk so its highlighted quote is in view. */
  function showEvidence(root) {
    (root.querySelectorAll ? root : document).querySelectorAll(".chunk-text mark.evidence").forEach(function (mark) {
      var box = mark.closest(".chunk-text");
      box.scrollTop = Math.max(0, mark.offsetTop - box.offsetTop - 40);
    });
  }
  document.addEventListener("DOMContentLoaded", function () { showEvidence(document); });
  document.body.addEventListener("htmx:load", function (event) { showEvidence(event.target); });

  /* Forms: confirmation, busy indicator, select-all. */
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) { event.preventDefault(); return; }
    form.classList.add("submitting");
  }, true);
  document.addEventListener("change", function (event) {
    var all = event.target.closest("[data-select-all]");
    if (all) {
      var scope = document.getElementById(all.dataset.selectAll) || document;
      scope.querySelectorAll("input[type=checkbox][name=ids]").forEach(function (box) { box.checked = all.checked; });
    }
    var picker = event.target.closest(".dropzone input[type=file]");
    if (picker) { showChosen(picker); }
  });

  /* Upload: drop files on the zone (or pick them), with upload progress. */
  function showChosen(input) {
    var zone = input.closest(".dropzone");
    var names = Array.prototype.map.call(input.files, function (f) { return f.name; });
    var label = zone.querySelector(".chosen");
    if (label) { label.textContent = names.length ? names.length + " file(s): " + names.join(", ") : ""; }
  }
  document.addEventListener("dragover", function (event) {
    var zone = event.target.closest && event.target.closest(".dropzone");
    if (zone) { event.preventDefault(); zone.classList.add("over"); }
  });
  document.addEventListener("dragleave", function (event) {
    var zone = event.target.closest && event.target.closest(".dropzone");
    if (zone) { zone.classList.remove("over"); }
  });
  document.addEventListener("drop", function (event) {
    var zone = event.target.closest && event.target.closest(".dropzone");
    if (!zone) { return; }
    event.preventDefault();
    zone.classList.remove("over");
    var input = zone.querySelector("input[type=file]");
    input.files = event.dataTransfer.files;
    showChosen(input);
    var form = zone.closest("form");
    if (form.requestSubmit) { form.requestSubmit(); } else { form.submit(); }
  });
  document.body.addEventListener("htmx:xhr:progress", function (event) {
    var bar = event.target.querySelector && event.target.querySelector("progress[data-upload]");
    if (bar && event.detail.lengthComputable) {
      bar.value = Math.round(100 * event.detail.loaded / event.detail.total);
      var label = event.target.querySelector("[data-upload-label]");
      if (label) { label.textContent = bar.value < 100 ? "Uploading… " + bar.value + "%" : "Uploaded; checking the files…"; }
    }
  });

  /* Conversation form: one more message row. */
  document.addEventListener("click", function (event) {
    var add = event.target.closest("[data-add-message]");
    if (!add) { return; }
    var prefix = add.dataset.addMessage;
    var total = document.getElementById("id_" + prefix + "-TOTAL_FORMS");
    var template = document.getElementById("message-template");
    var html = template.innerHTML.replace(/__prefix__/g, total.value);
    document.getElementById("message-rows").insertAdjacentHTML("beforeend", html);
    total.value = parseInt(total.value, 10) + 1;
    var rows = document.querySelectorAll("#message-rows .message-row");
    var last = rows[rows.length - 1];
    if (last) { last.querySelector("textarea").focus(); }
  });

  /* Review queue: a/r/e act on the current card, j/k move, Esc closes the editor. */
  var current = -1;
  function cards() { return Array.prototype.slice.call(document.querySelectorAll("[data-card]")); }
  function select(index) {
    var list = cards();
    if (!list.length) { return; }
    current = Math.max(0, Math.min(index, list.length - 1));
    list.forEach(function (card, i) { card.classList.toggle("current", i === current); });
    list[current].scrollIntoView({ block: "nearest", behavior: "smooth" });
  }
  /* Cards keep their places when htmx swaps in the reviewed version, so the next one is by index. */
  function advance() {
    var list = cards();
    for (var i = current + 1; i < list.length; i++) {
      if (list[i].dataset.status === "pending") { select(i); return; }
    }
  }
  function currentCard() { var list = cards(); return list[current] || null; }
  function typing(target) {
    return target.closest("input, textarea, select, [contenteditable]") !== null;
  }
  document.addEventListener("keydown", function (event) {
    if (!document.querySelector("[data-review]")) { return; }
    var card = currentCard();
    if (event.key === "Escape" && card) {
      var open = card.querySelector("details.edit[open]");
      if (open) { open.removeAttribute("open"); document.activeElement.blur(); }
      return;
    }
    if (typing(event.target) || event.metaKey || event.ctrlKey || event.altKey) { return; }
    if (event.key === "j") { select(current + 1); event.preventDefault(); return; }
    if (event.key === "k") { select(current - 1); event.preventDefault(); return; }
    if (!card) { if ("are".indexOf(event.key) >= 0) { select(0); card = currentCard(); } if (!card) { return; } }
    var button = null;
    if (event.key === "a") { button = card.querySelector("[data-action=approve]"); }
    if (event.key === "r") { button = card.querySelector("[data-action=reject]"); }
    if (button) { event.preventDefault(); button.click(); advance(); return; }
    if (event.key === "e") {
      var editor = card.querySelector("details.edit");
      if (editor) { event.preventDefault(); editor.setAttribute("open", ""); editor.querySelector("textarea").focus(); }
    }
  });
  document.addEventListener("click", function (event) {
    var card = event.target.closest("[data-card]");
    if (card) { var i = cards().indexOf(card); if (i >= 0 && i !== current) { select(i); } }
    var editButton = event.target.closest("[data-edit]");
    if (editButton) {
      var editor = editButton.closest("[data-card]").querySelector("details.edit");
      editor.toggleAttribute("open");
      if (editor.open) { editor.querySelector("textarea").focus(); }
    }
  });
  document.addEventListener("keydown", function (event) {
    // Ctrl/Cmd+Enter in the editor saves and approves.
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      var editor = event.target.closest("details.edit");
      var save = editor && editor.querySelector("[data-save-approve]");
      if (save) { event.preventDefault(); save.click(); advance(); }
    }
  });
})();
