// The job form: shows only the fields and uploads the chosen variant takes (from GET /variants),
// and turns what the person entered into a POST /generate body.

import { MaskPainter } from "./mask.js";

const UPLOAD_FIELDS = ["image", "last_image", "video", "reference_images", "mask"];

export class JobForm {
  constructor(root, catalog) {
    this.root = root;
    this.catalog = catalog;
    this.byName = new Map(catalog.variants.map((v) => [v.name, v]));
    this.$ = (selector) => root.querySelector(selector);
    this.painter = new MaskPainter(this.$("#mask-frame"), this.$("#mask-canvas"), {
      sizeInput: this.$("#brush-size"),
      toolInputs: [...root.querySelectorAll('input[name="mask-tool"]')],
    });

    const select = this.$("#variant");
    for (const v of catalog.variants) {
      const option = new Option(v.readiness.ready ? v.name : `${v.name} (not ready)`, v.name);
      select.append(option);
    }
    select.value = catalog.default_variant;
    select.addEventListener("change", () => this.show());
    this.$("#length-unit").addEventListener("change", () => this.showLength());
    this.$("#mask-all").addEventListener("click", () => this.painter.selectAll());
    this.$("#mask-clear").addEventListener("click", () => this.painter.clear());
    for (const field of ["image", "last_image", "video", "reference_images"]) {
      this.$(`#${field}`).addEventListener("change", () => this.preview(field));
    }
    this.show();
  }

  get variant() {
    return this.byName.get(this.$("#variant").value);
  }

  /** Lay the form out for the selected variant: its sizes, defaults, limits, uploads, adapters. */
  show() {
    const v = this.variant;
    this.$("#variant-description").textContent = `${v.description} Task: ${v.task}.`;
    const size = this.$("#size");
    size.replaceChildren();
    const takesFiles = v.uploads.required.length + v.uploads.optional.length > 0;
    const image = v.output === "image";
    if (takesFiles) size.append(new Option(image ? "Auto (the first image's shape)" : "Auto (from the upload)", ""));
    // An image variant takes any size on its grid; offer the square and the two 3:4 shapes at about a megapixel.
    const sizes = image ? ["1024x1024", "1152x864", "864x1152"] : v.sizes;
    for (const s of sizes) size.append(new Option(s.replace("x", " × "), s));
    this.needs("frames", !image);
    this.$("#guidance-label").textContent = image ? "True CFG scale" : "Guidance scale";
    this.$("#num_inference_steps").min = v.min_inference_steps;
    this.$("#image").multiple = v.uploads.repeatable.includes("image");
    const d = v.defaults;
    this.$("#num_inference_steps").value = d.num_inference_steps;
    this.$("#num_inference_steps").max = v.max_inference_steps;
    this.$("#guidance_scale").value = d.guidance_scale;
    this.$("#guidance_scale_2").value = d.guidance_scale_2 ?? "";
    this.$("#negative_prompt").placeholder = d.negative_prompt ? d.negative_prompt.slice(0, 120) : "";
    this.needs("experts", v.experts > 1);

    const format = this.$("#output_format");
    format.replaceChildren(...v.output_formats.map((f) => new Option(f, f)));
    this.needs("formats", v.output_formats.length > 1);

    const loras = this.$("#loras");
    loras.replaceChildren();
    for (const adapter of v.loras) {
      const row = document.createElement("div");
      row.className = "lora";
      const id = `lora-${adapter.name}`;
      row.innerHTML = `<input type="checkbox" id="${id}"> <label for="${id}"></label>
        <label for="${id}-scale" class="hint">scale</label>
        <input type="number" id="${id}-scale" min="-4" max="4" step="0.05" value="1">`;
      row.querySelector(`label[for="${id}"]`).textContent = adapter.name;
      row.dataset.lora = adapter.name;
      loras.append(row);
    }
    this.needs("loras", v.loras.length > 0);

    for (const field of UPLOAD_FIELDS) {
      const box = this.root.querySelector(`[data-upload="${field}"]`);
      const required = v.uploads.required.includes(field);
      box.hidden = !(required || v.uploads.optional.includes(field));
      box.querySelector(".req").textContent = required ? "(required)" : "(optional)";
    }
    this.showLength();
  }

  needs(what, shown) {
    for (const el of this.root.querySelectorAll(`[data-needs="${what}"]`)) el.hidden = !shown;
  }

  showLength() {
    const v = this.variant;
    const seconds = this.$("#length-unit").value === "seconds";
    const input = this.$("#length");
    this.$("#length-label").textContent = seconds ? "Seconds" : "Frames";
    if (seconds) {
      input.step = "0.1";
      input.max = v.max_seconds;
      input.value = (v.defaults.num_frames / v.fps).toFixed(2);
      this.$("#length-hint").textContent = `At ${v.fps} fps, at most ${v.max_seconds} s.`;
    } else {
      input.step = "4";
      input.max = v.max_num_frames;
      input.value = v.defaults.num_frames;
      this.$("#length-hint").textContent = `${v.frame_rule}, at most ${v.max_num_frames}, at ${v.fps} fps.`;
    }
  }

  async preview(field) {
    const box = this.root.querySelector(`[data-upload="${field}"]`);
    const files = [...this.$(`#${field}`).files];
    if (field === "reference_images") {
      const list = box.querySelector(".previews");
      list.replaceChildren(
        ...files.map((f, i) => Object.assign(new Image(), { src: URL.createObjectURL(f), alt: `Reference image ${i + 1}`, className: "preview" })),
      );
      return;
    }
    const el = box.querySelector(".preview");
    if (el.src) URL.revokeObjectURL(el.src);
    el.hidden = files.length === 0;
    if (files.length) el.src = URL.createObjectURL(files[0]);
    if (field === "video") await this.loadMaskFrame(files[0]);
  }

  async loadMaskFrame(file) {
    const stage = this.root.querySelector(".mask-stage");
    const hint = this.$("#mask-hint");
    if (!file) {
      stage.hidden = true;
      return;
    }
    try {
      await this.painter.load(file);
      stage.hidden = false;
      hint.textContent = "Paint over what to regenerate (white in the mask); the rest is kept.";
      stage.dataset.ready = "true";
    } catch (err) {
      stage.hidden = true;
      hint.textContent = `No mask painter for this video: ${err.message}.`;
    }
  }

  /** The POST /generate body as FormData (multipart: the form fields beside the files). */
  async body() {
    const v = this.variant;
    const data = new FormData();
    const put = (name, value) => {
      if (value !== "" && value !== null && value !== undefined) data.append(name, value);
    };
    put("variant", v.name);
    put("prompt", this.$("#prompt").value.trim());
    put("negative_prompt", this.$("#negative_prompt").value.trim());
    put("size", this.$("#size").value);
    const image = v.output === "image";
    if (!image) put(this.$("#length-unit").value === "seconds" ? "seconds" : "num_frames", this.$("#length").value);
    put("num_inference_steps", this.$("#num_inference_steps").value);
    put(image ? "true_cfg_scale" : "guidance_scale", this.$("#guidance_scale").value);
    if (v.experts > 1) put("guidance_scale_2", this.$("#guidance_scale_2").value);
    put("seed", this.$("#seed").value);
    if (v.output_formats.length > 1) put("output_format", this.$("#output_format").value);
    const loras = [...this.root.querySelectorAll("[data-lora]")]
      .filter((row) => row.querySelector('input[type="checkbox"]').checked)
      .map((row) => ({ name: row.dataset.lora, scale: Number(row.querySelector('input[type="number"]').value) }));
    if (loras.length) put("loras", JSON.stringify(loras));
    const accepted = [...v.uploads.required, ...v.uploads.optional];
    for (const field of ["image", "last_image", "video", "reference_images"]) {
      if (!accepted.includes(field)) continue;
      for (const file of this.$(`#${field}`).files) data.append(field, file, file.name);
    }
    if (accepted.includes("mask") && this.painter.ready && this.painter.painted) {
      data.append("mask", await this.painter.toBlob(), "mask.png");
    }
    return data;
  }

  /** What the person asked for, kept beside the job for a remix. */
  summary() {
    return { variant: this.variant.name, prompt: this.$("#prompt").value.trim() };
  }
}
