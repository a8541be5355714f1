// The studio's entry point: loads the variant catalog, wires the form, the job cards and the gallery.

import { api, ApiError, apiKey } from "./api.js";
import { Gallery } from "./gallery.js";
import { JobCard } from "./jobs.js";
import { JobForm } from "./form.js";

const $ = (selector) => document.querySelector(selector);
const cards = new Map();

function showError(err) {
  const box = $("#form-error");
  box.textContent = err instanceof ApiError ? err.message : `Something went wrong: ${err.message}`;
  box.dataset.code = err.code || "";
  box.hidden = false;
}

function clearError() {
  $("#form-error").hidden = true;
  $("#form-error").textContent = "";
}

async function openJob(id, focus = true) {
  if (cards.has(id)) {
    if (focus) cards.get(id).el.focus();
    return;
  }
  const status = await api.status(id);
  const card = new JobCard($("#job-card"), status, {
    onRemix: (newId) => openJob(newId).then(() => gallery.load()),
    onDelete: (oldId) => {
      cards.delete(oldId);
      $("#jobs-empty").hidden = cards.size > 0;
      gallery.load();
    },
    onFinish: () => gallery.load(),
    onError: showError,
  });
  cards.set(id, card);
  $("#jobs").prepend(card.el);
  $("#jobs-empty").hidden = true;
  if (focus) card.el.focus();
}

let gallery;

/** The key form: shown when the service needs keys; a key given there is kept in this browser. */
async function setUpKey() {
  const health = await api.health().catch(() => null);
  const form = $("#key-form");
  form.hidden = !health || health.auth !== "api_keys";
  $("#api-key").value = apiKey.get();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey.set($("#api-key").value.trim());
    window.location.reload();
  });
}

async function main() {
  await setUpKey();
  gallery = new Gallery(
    $("#gallery"),
    { newer: $("#gallery-newer"), older: $("#gallery-older"), refresh: $("#gallery-refresh") },
    { onOpen: (id) => openJob(id).catch(showError), onError: showError },
  );
  let catalog;
  try {
    catalog = await api.variants();
  } catch (err) {
    showError(err);
    return;
  }
  const form = new JobForm($("#job-form"), catalog);
  $("#job-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    const button = $("#submit");
    button.disabled = true;
    try {
      const accepted = await api.submit(await form.body());
      await openJob(accepted.id, false);
      await gallery.load();
    } catch (err) {
      showError(err);
    } finally {
      button.disabled = false;
    }
  });
  await gallery.load();
  document.body.dataset.ready = "true";
}

main();
