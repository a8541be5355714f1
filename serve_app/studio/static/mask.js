// The inpainting mask painter: a brush and an eraser over the first frame of the source video.
// The mask is kept at the video's own pixel size and sent as a PNG, white = regenerate.

export class MaskPainter {
  /**
   * @param {HTMLCanvasElement} frame canvas that shows the video frame
   * @param {HTMLCanvasElement} canvas canvas the strokes go on (stacked over `frame`)
   */
  constructor(frame, canvas, { sizeInput, toolInputs }) {
    this.frame = frame;
    this.canvas = canvas;
    this.sizeInput = sizeInput;
    this.toolInputs = toolInputs;
    this.painting = false;
    this.painted = false;
    this.last = null;
    canvas.addEventListener("pointerdown", (e) => this.start(e));
    canvas.addEventListener("pointermove", (e) => this.move(e));
    for (const type of ["pointerup", "pointercancel", "pointerleave"]) {
      canvas.addEventListener(type, () => this.stop());
    }
  }

  /** Show the first frame of `file` (a video) and size the mask to it. Resolves when drawn. */
  async load(file) {
    const video = document.createElement("video");
    video.muted = true;
    video.playsInline = true;
    video.preload = "auto";
    const url = URL.createObjectURL(file);
    try {
      await new Promise((resolve, reject) => {
        video.addEventListener("loadeddata", resolve, { once: true });
        video.addEventListener("error", () => reject(new Error("the browser cannot show this video; the server may still take it")), { once: true });
        video.src = url;
      });
      for (const c of [this.frame, this.canvas]) {
        c.width = video.videoWidth;
        c.height = video.videoHeight;
      }
      this.frame.getContext("2d").drawImage(video, 0, 0);
      this.clear();
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  get ready() {
    return this.canvas.width > 0 && this.frame.width > 0;
  }

  tool() {
    return this.toolInputs.find((input) => input.checked)?.value || "brush";
  }

  point(event) {
    const box = this.canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) / box.width) * this.canvas.width,
      y: ((event.clientY - box.top) / box.height) * this.canvas.height,
    };
  }

  start(event) {
    if (!this.ready) return;
    this.painting = true;
    this.canvas.setPointerCapture?.(event.pointerId);
    this.last = this.point(event);
    this.stroke(this.last, this.last);
  }

  move(event) {
    if (!this.painting) return;
    const p = this.point(event);
    this.stroke(this.last, p);
    this.last = p;
  }

  stop() {
    this.painting = false;
  }

  stroke(from, to) {
    const ctx = this.canvas.getContext("2d");
    const eraser = this.tool() === "eraser";
    // Brush size is in screen pixels; the mask is at video resolution.
    const scale = this.canvas.width / this.canvas.getBoundingClientRect().width;
    ctx.globalCompositeOperation = eraser ? "destination-out" : "source-over";
    ctx.strokeStyle = "rgba(255, 0, 80, 1)";
    ctx.lineWidth = Number(this.sizeInput.value) * scale;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
    if (!eraser) this.painted = true;
  }

  selectAll() {
    const ctx = this.canvas.getContext("2d");
    ctx.globalCompositeOperation = "source-over";
    ctx.fillStyle = "rgba(255, 0, 80, 1)";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    this.painted = true;
  }

  clear() {
    this.canvas.getContext("2d").clearRect(0, 0, this.canvas.width, this.canvas.height);
    this.painted = false;
  }

  /** The mask as a PNG blob: white where painted (alpha >= 128), black elsewhere. */
  async toBlob() {
    const { width, height } = this.canvas;
    const strokes = this.canvas.getContext("2d").getImageData(0, 0, width, height).data;
    const out = document.createElement("canvas");
    out.width = width;
    out.height = height;
    const ctx = out.getContext("2d");
    const image = ctx.createImageData(width, height);
    for (let i = 0; i < strokes.length; i += 4) {
      const v = strokes[i + 3] >= 128 ? 255 : 0;
      image.data[i] = image.data[i + 1] = image.data[i + 2] = v;
      image.data[i + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
    return new Promise((resolve) => out.toBlob(resolve, "image/png"));
  }
}
