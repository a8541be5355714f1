// One card per job: live progress from the job's Server-Sent Events (queue position, phase,
// denoising step, ETA), then the video (or image) with download, remix, cancel and delete.

import { api, ApiError, formatSeconds } from "./api.js";

const TERMINAL = new Set(["success", "error", "canceled"]);
// The image variants' output formats (GET /variants lists each variant's).
const IMAGE_FORMATS = new Set(["png", "webp", "jpeg"]);
const PHASES = {
  loading: "loading the model",
  encoding_prompt: "encoding the prompt",
  denoising: "denoising",
  decoding: "decoding frames",
  encoding_video: "writing the video",
  encoding_image: "writing the image",
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

  /** Follow the job's events over its WebSocket; a dropped socket is reopened after the last event seen. */
  listen() {
    this.lastEventId = this.lastEventId || 0;
    this.source = api.socket(this.id, this.lastEventId);
    this.source.addEventListener("message", (message) => {
      const data = JSON.parse(message.data);
      this.lastEventId = data.id;
      this.render(data);
      if (data.event === "terminal") this.finish();
    });
    this.source.addEventListener("close", (event) => {
      if (this.done) return;
      if (event.code === 4401 || event.code === 4404) {
        this.hooks.onError(new Error(event.reason || "this job's progress cannot be followed"));
        return;
      }
      setTimeout(() => this.listen(), 2000); // dropped, or the service was busy (1013): try again
    });
  }

  async finish() {
    this.done = true;
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
    if (s.status === "success" && s.file_url && !this.shown) {
      this.shown = true;
      const url = api.contentUrl(s);
      const video = this.q(".job-video");
      if (s.output_format === "mp4" || s.output_format === "webm" || !s.output_format) {
        video.poster = api.thumbnailUrl(s);
        video.preload = "metadata";
        video.src = url;
        this.q(".job-result").hidden = false;
      } else if (IMAGE_FORMATS.has(s.output_format)) {
        video.hidden = true;
        const img = this.q(".job-image");
        img.src = url;
        img.hidden = false;
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
