// The clothsim search page: upload or drop a photo, or click a result, and show the most similar items.
// Plain browser JavaScript with no dependencies; every text from the server goes in via textContent.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const els = {
    info: $("index-info"), drop: $("drop-zone"), file: $("file-input"), k: $("k-input"),
    category: $("category-select"), error: $("error"), status: $("status"), query: $("query"),
    queryImage: $("query-image"), queryCaption: $("query-caption"), resultsTitle: $("results-title"),
    results: $("results"), collapse: $("collapse-input"), textForm: $("text-form"), text: $("text-input"), textWithPhoto: $("text-with-photo"),
    results: $("results"), writes: $("writes"), apiKey: $("api-key"), addForm: $("add-form"),
    addFile: $("add-file"), addCategory: $("add-category"), addItemId: $("add-item-id"),
    deleteForm: $("delete-form"), deleteId: $("delete-id"), writeStatus: $("write-status"),
    apiRoutes: $("api-routes"), categoryNames: $("category-names"),
  };
  let limits = { max_k: 50, max_upload_bytes: 20 * 1024 * 1024 };
  let lastQuery = null;      // {kind: "upload", file, url, text?}, {kind: "item", id} or {kind: "text", text}
  let requestSerial = 0;     // only the newest response is shown

  function showError(message) {
    els.error.textContent = message;
    els.error.hidden = false;
  }

  function clearError() {
    els.error.hidden = true;
    els.error.textContent = "";
  }

  function errorMessage(status, body) {
    // FastAPI sends {"detail": "text"} or, for validation errors, {"detail": [{loc, msg}, ...]}.
    const detail = body && body.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map((d) => `${(d.loc || []).slice(1).join(".") || "request"}: ${d.msg}`).join("; ");
    }
    return `the server answered ${status}`;
  }

  function formatBytes(n) {
    return n >= 1024 * 1024 ? `${(n / (1024 * 1024)).toFixed(1)} MiB` : `${Math.ceil(n / 1024)} KiB`;
  }

  function currentK() {
    const k = parseInt(els.k.value, 10);
    if (!Number.isFinite(k) || k < 1 || k > limits.max_k) {
      throw new Error(`Results must be a whole number from 1 to ${limits.max_k}.`);
    }
    return k;
  }

  async function loadIndexInfo() {
    try {
      const [health, cats] = await Promise.all([
        fetch("/health").then((r) => r.json()),
        fetch("/api/categories").then((r) => r.json()),
      ]);
      limits = health;
      els.k.max = String(health.max_k);
      // Text search only where the index's encoder has a text tower; elsewhere the box is not offered.
      els.textForm.hidden = !health.text_search;
      els.info.textContent =
        `${health.items} items in ${health.categories} categories · encoder ${health.encoder} · ` +
        `uploads up to ${formatBytes(health.max_upload_bytes)}`;
      const chosen = els.category.value;
      els.category.replaceChildren(els.category.options[0]);
      els.categoryNames.replaceChildren();
      for (const c of cats.categories) {
        const option = document.createElement("option");
        option.value = c.name;
        option.textContent = `${c.name} (${c.count})`;
        els.category.appendChild(option);
        const name = document.createElement("option");
        name.value = c.name;
        els.categoryNames.appendChild(name);
      }
      els.category.value = chosen;
    } catch (err) {
      showError(`Could not reach the server: ${err.message}`);
    }
  }

  async function loadApi() {
    // The routes come from the server's own OpenAPI description: the page lists what this server offers,
    // and shows the write forms only when the server takes writes.
    try {
      const spec = await fetch("/openapi.json").then((r) => r.json());
      const items = [];
      for (const [path, operations] of Object.entries(spec.paths || {})) {
        for (const [method, op] of Object.entries(operations)) {
          const li = document.createElement("li");
          const code = document.createElement("code");
          code.textContent = `${method.toUpperCase()} ${path}`;
          li.appendChild(code);
          const keyed = (op.tags || []).includes("catalogue writes");
          li.append(` · ${op.summary || ""}${keyed ? " (API key)" : ""}`);
          items.push(li);
        }
      }
      els.apiRoutes.replaceChildren(...items);
      els.writes.hidden = !((spec.paths || {})["/api/items"] || {}).post;
    } catch (err) {
      els.apiRoutes.replaceChildren();
    }
  }

  async function write(request, describe) {
    els.writeStatus.textContent = "Saving…";
    try {
      const response = await fetch(request.url, {
        method: request.method, body: request.body,
        headers: { Authorization: `Bearer ${els.apiKey.value}` },
      });
      const body = await response.json().catch(() => null);
      if (!response.ok) {
        els.writeStatus.textContent = "";
        showError(`Not saved: ${errorMessage(response.status, body)}`);
        return null;
      }
      clearError();
      els.writeStatus.textContent = describe(body);
      await loadIndexInfo();
      return body;
    } catch (err) {
      els.writeStatus.textContent = "";
      showError(`Could not reach the server: ${err.message}`);
      return null;
    }
  }

  els.addForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = els.addFile.files[0];
    if (!file) return;
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("category", els.addCategory.value);
    if (els.addItemId.value) form.append("item_id", els.addItemId.value);
    const added = await write({ url: "/api/items", method: "POST", body: form },
                              (item) => `Added item #${item.id} (${item.category}).`);
    if (added) search({ kind: "item", id: added.id });
  });

  els.deleteForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = els.deleteId.value;
    const deleted = await write({ url: `/api/items/${encodeURIComponent(id)}`, method: "DELETE" },
                                (item) => `Deleted item #${item.id}.`);
    if (deleted && lastQuery) search(lastQuery);
  });

  function showQuery(data, query) {
    els.queryImage.hidden = query.kind === "text";
    if (query.kind === "text") {
      els.queryImage.removeAttribute("src");
      els.queryCaption.textContent = `Text: “${data.query.text}”`;
    } else if (query.kind === "upload") {
      els.queryImage.src = query.url;
      const q = data.query;
      els.queryCaption.textContent = `Your photo: ${q.filename || "upload"} (${q.width}×${q.height})` +
        (q.text ? ` + “${q.text}”` : "");
    } else {
      els.queryImage.src = data.query.image_url;
      const label = data.query.category ? ` · ${data.query.category}` : "";
      els.queryCaption.textContent = `Catalogue item #${data.query.id}${label}`;
    }
    els.query.hidden = false;
    els.query.dataset.kind = query.kind;
    els.query.dataset.id = query.kind === "item" ? String(query.id) : "";
  }

  function resultCard(hit) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "hit";
    button.dataset.id = String(hit.id);
    button.dataset.rank = String(hit.rank);
    button.title = `Search for items like #${hit.id} (${hit.name})`;
    const img = document.createElement("img");
    img.src = hit.image_url;
    img.alt = `${hit.category || "item"}, rank ${hit.rank}`;
    img.loading = "lazy";
    const meta = document.createElement("span");
    meta.className = "meta";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${hit.rank}`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    meta.append(rank, score);
    const category = document.createElement("span");
    category.className = "category";
    category.textContent = hit.category || "";  // null in a catalogue without categories
    button.append(img, meta, category);
    if (hit.group_size && hit.group_size > 1) {  // a collapsed result standing for its copies too
      const group = document.createElement("span");
      group.className = "group";
      group.textContent = `×${hit.group_size} copies`;
      button.appendChild(group);
    }
    button.addEventListener("click", () => search({ kind: "item", id: hit.id }));
    li.appendChild(button);
    return li;
  }

  function showResults(data) {
    els.results.replaceChildren(...data.results.map(resultCard));
    const kinds = { item: `item:${data.query.id}`, text: `text:${data.query.text}`, upload: "upload" };
    els.results.dataset.query = kinds[data.query.kind] || data.query.kind;
    els.resultsTitle.hidden = false;
    const filter = data.category ? ` in ${data.category}` : "";
    els.status.textContent = `${data.results.length} results${filter} in ${Math.round(data.took_ms)} ms`;
  }

  function discard(query) {
    // Frees a rejected upload's object URL, unless the page still shows that photo.
    if (query.url && !(lastQuery && lastQuery.url === query.url)) URL.revokeObjectURL(query.url);
  }

  async function search(query) {
    clearError();
    let k;
    try {
      k = currentK();
    } catch (err) {
      showError(err.message);
      discard(query);
      return;
    }
    if (query.kind === "upload" && query.file.size > limits.max_upload_bytes) {
      showError(`${query.file.name} is ${formatBytes(query.file.size)}; ` +
                `the limit is ${formatBytes(limits.max_upload_bytes)}.`);
      discard(query);
      return;
    }
    const form = new FormData();
    if (query.kind === "upload") form.append("image", query.file, query.file.name);
    else if (query.kind === "item") form.append("id", String(query.id));
    if (query.text) form.append("text", query.text);
    form.append("k", String(k));
    if (els.category.value) form.append("category", els.category.value);
    if (els.collapse.checked) form.append("collapse", "true");

    const serial = ++requestSerial;
    els.results.setAttribute("aria-busy", "true");
    els.status.textContent = "Searching…";
    try {
      const response = await fetch("/api/search", { method: "POST", body: form });
      const body = await response.json().catch(() => null);
      if (serial !== requestSerial) return;
      if (!response.ok) {
        const what = query.kind === "upload" ? `${query.file.name} was not accepted` : "The search failed";
        showError(`${what}: ${errorMessage(response.status, body)}`);
        els.status.textContent = "";
        discard(query);
        return;
      }
      if (lastQuery && lastQuery.url && lastQuery.url !== query.url) URL.revokeObjectURL(lastQuery.url);
      lastQuery = query;
      showQuery(body, query);
      showResults(body);
      window.scrollTo({ top: 0, behavior: "smooth" });
    } catch (err) {
      if (serial === requestSerial) {
        showError(`Could not reach the server: ${err.message}`);
        els.status.textContent = "";
      }
    } finally {
      if (serial === requestSerial) els.results.removeAttribute("aria-busy");
    }
  }

  function searchFile(file) {
    if (!file) return;
    // The object URL shows the photo beside its results; it is freed when another query replaces it.
    search({ kind: "upload", file, url: URL.createObjectURL(file) });
  }

  els.file.addEventListener("change", () => {
    searchFile(els.file.files[0]);
    els.file.value = "";  // choosing the same file again still fires "change"
  });
  ["dragenter", "dragover"].forEach((type) => els.drop.addEventListener(type, (event) => {
    event.preventDefault();
    els.drop.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((type) => els.drop.addEventListener(type, () => {
    els.drop.classList.remove("dragging");
  }));
  els.drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) searchFile(files[0]);
  });
  // A photo dropped anywhere else must not make the browser navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  els.textForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = els.text.value.trim();
    if (!text) { showError("Type what you are looking for."); return; }
    // "Like this photo, but ...": the text is mixed with the photo shown, when asked to.
    if (els.textWithPhoto.checked && lastQuery && lastQuery.kind === "upload") {
      search({ kind: "upload", file: lastQuery.file, url: lastQuery.url, text });
    } else {
      search({ kind: "text", text });
    }
  });

  els.k.addEventListener("change", () => { if (lastQuery) search(lastQuery); });
  els.category.addEventListener("change", () => { if (lastQuery) search(lastQuery); });
  els.collapse.addEventListener("change", () => { if (lastQuery) search(lastQuery); });

  loadIndexInfo();
  loadApi();
})();
