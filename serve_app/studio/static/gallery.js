// Past jobs, newest first, a page at a time (GET /jobs), with thumbnails of finished videos.

import { api } from "./api.js";

export class Gallery {
  constructor(list, { newer, older, refresh }, { onOpen, onError, pageSize = 8 }) {
    this.list = list;
    this.buttons = { newer, older };
    this.onOpen = onOpen;
    this.onError = onError;
    this.pageSize = pageSize;
    this.cursors = [null]; // the `after` of each page seen; the last one is the page shown
    newer.addEventListener("click", () => this.turn(-1));
    older.addEventListener("click", () => this.turn(+1));
    refresh.addEventListener("click", () => this.load());
  }

  async turn(direction) {
    if (direction > 0 && this.next) this.cursors.push(this.next);
    if (direction < 0 && this.cursors.length > 1) this.cursors.pop();
    await this.load();
  }

  async load() {
    let page;
    try {
      page = await api.jobs(this.cursors.at(-1), this.pageSize);
    } catch (err) {
      this.onError(err);
      return;
    }
    this.next = page.has_more ? page.last_id : null;
    this.buttons.older.disabled = !this.next;
    this.buttons.newer.disabled = this.cursors.length <= 1;
    this.list.replaceChildren(...page.data.map((job) => this.item(job)));
  }

  item(job) {
    const li = document.createElement("li");
    li.dataset.jobId = job.id;
    li.dataset.status = job.status;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "gallery-item";
    if (job.status === "success" && job.file_url) {
      const img = new Image();
      img.loading = "lazy";
      img.src = api.thumbnailUrl(job);
      img.alt = "";
      button.append(img);
    } else {
      const placeholder = document.createElement("span");
      placeholder.className = "thumb-placeholder";
      placeholder.textContent = job.status;
      button.append(placeholder);
    }
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.textContent = `${job.prompt} — ${job.variant}, ${job.status}`;
    button.append(caption);
    button.setAttribute("aria-label", `Open job: ${job.prompt} (${job.variant}, ${job.status})`);
    button.addEventListener("click", () => this.onOpen(job.id));
    li.append(button);
    return li;
  }
}
