// One card per job: live progress from the job's Server-Sent Events (queue position, phase,
// denoising step, ETA), then the video with download, remix, cancel and delete.

import { api, ApiError, formatSeconds } from "./api.js";

const TERMINAL = new Set(["success", "error", "canceled"]);
const PHASES = {
  loading: "loading the model",
  encoding_prompt: "encoding the prompt",
  denoising: "denoising",
  decoding: "decoding frames",
  encoding_video: "writing the video",
};

export class JobCard {
  /**
   * @param {HTMLTemplateElement} template the card's template
   * @param {object} status the job as GET /status/{id} answers
   * @param {{onRemix: Function, onDelete: Function, onFinish: Function, onError: Function}} hooks
   */
  constructor(template, status, hooks) {
    this.el = template.content.firstElementChild.cloneNode(true);
    this.el.dataset.jobId = status.id;
    this.hooks = hooks;
    this.q = (selector) => this.el.querySelector(selector);
    this.q(".job-title").textContent = status.prompt;
    this.q(".job-meta").textContent = `${status.variant} · ${status.size} · ${status.num_frames} frames · seed ${status.seed} · ${status.id}`;
    this.q(".job-progress").setAttribute("aria-label", `Progress of “${status.prompt.slice(0, 60)}”`);
    this.q(".job-cancel").addEventListener("click", () => this.cancel());
    this.q(".job-delete").addEventListener("click", () => this.remove());
    this.q(".job-remix").addEventListener("submit", (event) => {
      event.preventDefault();
      this.remix();
    });
    this.render(status);
    if (!TERMINAL.has(status.status)) this.listen();
  }

  get id() {
    return this.el.dataset.jobId;
  }

  /** Follow the job's events; EventSource reconnects by itself with Last-Event-ID. */
  listen() {
    this.source = new EventSource(api.eventsUrl(this.id));
    const onEvent = (message) => {
      const data = JSON.parse(message.data);
      this.render(data);
      if (message.type === "terminal") this.finish();
    };
    for (const type of ["queued", "phase", "step", "terminal"]) this.source.addEventListener(type, onEvent);
  }

  async finish() {
    this.source?.close();
    this.source = null;
    try {
      this.render(await api.status(this.id));
      this.hooks.onFinish(this.id);
    } catch (err) {
      this.hooks.onError(err);
    }
  }

  /** Show a status or an event (both carry status, phase, step, total_steps, progress, eta_seconds, queue_position). */
  render(s) {
    this.el.dataset.status = s.status;
    this.q(".job-progress").value = s.progress;
    let text;
    if (s.status === "queued") {
      text = `Queued · position ${s.queue_position ?? "?"} · ETA ${formatSeconds(s.eta_seconds)}`;
    } else if (s.status === "running") {
      const phase = PHASES[s.phase] || s.phase || "starting";
      const step = s.phase === "denoising" ? ` · step ${s.step}/${s.total_steps}` : "";
      text = `Running · ${phase}${step} · ${Math.round(100 * s.progress)}% · ETA ${formatSeconds(s.eta_seconds)}`;
    } else if (s.status === "success") {
      text = "Done · 100%";
    } else if (s.status === "canceled") {
      text = "Canceled";
    } else {
      text = "Failed";
    }
    this.q(".job-state").textContent = text;
    const terminal = TERMINAL.has(s.status);
    this.q(".job-cancel").hidden = terminal;
    const error = this.q(".job-error");
    error.hidden = !(terminal && s.error);
    if (s.error) error.textContent = `${s.error.message} (${s.error.code})`;
    if (s.status === "success" && s.filename && !this.shown) {
      this.shown = true;
      const url = api.contentUrl(this.id);
      const video = this.q(".job-video");
      if (s.output_format === "mp4" || s.output_format === "webm" || !s.output_format) {
        video.poster = api.thumbnailUrl(this.id);
        video.preload = "metadata";
        video.src = url;
        this.q(".job-result").hidden = false;
      }
      const link = this.q(".job-download");
      link.href = url;
      link.download = s.filename;
      link.hidden = false;
      this.q(".job-remix").hidden = false;
      this.q(".job-remix input").value = s.prompt || "";
    }
  }

  async cancel() {
    try {
      this.render(await api.cancel(this.id));
    } catch (err) {
      this.hooks.onError(err);
    }
  }

  async remove() {
    try {
      this.source?.close();
      await api.remove(this.id);
      this.el.remove();
      this.hooks.onDelete(this.id);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) this.el.remove();
      else this.hooks.onError(err);
    }
  }

  async remix() {
    const prompt = this.q(".job-remix input").value.trim();
    try {
      const video = await api.remix(this.id, prompt);
      this.hooks.onRemix(video.id);
    } catch (err) {
      this.hooks.onError(err);
    }
  }
}
