// Annotation shapes as the SFU stamped them: applying one operation to a set of shapes, and
// drawing one shape on a canvas. No page of its own: the room (annotate.js) and the archive's
// player (archive.js) both use these, so a shape looks the same live and played back.

import { t } from "./i18n.js";
import { state } from "./state.js";

/** Where a shape is kept: shape ids are unique on an image frame (the SFU's key too). */
export function shapeKey(imageId, frame, shapeId) {
  return `${imageId}/${frame}/${shapeId}`;
}

/** Apply one operation to a map of shapes (shapeKey → shape): the same in every browser. */
export function applyOp(shapes, { image_id, frame, author, seq, op }) {
  const key = op.shape_id === undefined ? null : shapeKey(image_id, frame, op.shape_id);
  switch (op.kind) {
    case "add":
      shapes.set(shapeKey(image_id, frame, op.shape.id), {
        ...op.shape,
        image_id,
        frame,
        author: op.shape.author ?? author,
        seq,
      });
      break;
    case "edit": {
      const shape = shapes.get(key);
      if (!shape) break;
      const edited = { ...shape, seq };
      for (const field of ["points", "text", "color", "length_mm"]) {
        if (op[field] !== undefined) edited[field] = op[field];
      }
      if (op.points !== undefined && op.length_mm === undefined && shape.type === "measure") {
        edited.length_mm = measureMm(edited);
      }
      shapes.set(key, edited);
      break;
    }
    case "delete":
      shapes.delete(key);
      break;
    case "clear_own":
      for (const [id, shape] of shapes) {
        if (shape.author === author && shape.image_id === image_id && shape.frame === frame) {
          shapes.delete(id);
        }
      }
      break;
  }
}

export function distance([x0, y0], [x1, y1]) {
  return Math.hypot(x1 - x0, y1 - y0);
}

/** A measurement's length in mm from the image's pixel spacing ([row mm, column mm]), or null. */
export function measureMm(shape, image = state.images.find((i) => i.image_id === shape.image_id)) {
  const spacing = image?.pixel_spacing_mm;
  if (!spacing || shape.points.length < 2) return null;
  const [[x0, y0], [x1, y1]] = shape.points;
  return Math.hypot((x1 - x0) * spacing[1], (y1 - y0) * spacing[0]);
}

/** A measurement's label: mm when the pixel spacing is known, else image pixels. */
function measureLabel(shape) {
  const mm =
    shape.length_mm !== undefined && shape.length_mm !== null ? shape.length_mm : measureMm(shape);
  if (mm !== null && mm !== undefined) return t("annotate.length_mm", { mm: mm.toFixed(1) });
  return t("annotate.length_px", { px: distance(...shape.points).toFixed(0) });
}

/** Stroke and fill a path twice: a dark halo under the colour, readable on any image. */
function stroke(ctx, px, colour, path) {
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.strokeStyle = "rgba(0, 0, 0, 0.7)";
  ctx.lineWidth = 5 * px;
  path();
  ctx.stroke();
  ctx.strokeStyle = colour;
  ctx.lineWidth = 2.5 * px;
  path();
  ctx.stroke();
}

export function label(ctx, px, colour, text, x, y) {
  ctx.font = `${Math.round(16 * px)}px system-ui, sans-serif`;
  ctx.textBaseline = "bottom";
  ctx.lineWidth = 4 * px;
  ctx.strokeStyle = "rgba(0, 0, 0, 0.8)";
  ctx.strokeText(text, x, y);
  ctx.fillStyle = colour;
  ctx.fillText(text, x, y);
}

/** Draw one shape in image coordinates; `px` is one screen pixel in image units. */
export function drawShape(ctx, shape, px) {
  const colour = shape.color || "#ffffff";
  const pts = shape.points;
  const [x0, y0] = pts[0];
  const [x1, y1] = pts[1] ?? pts[0];
  switch (shape.type) {
    case "line":
      stroke(ctx, px, colour, () => {
        ctx.beginPath();
        ctx.moveTo(x0, y0);
        ctx.lineTo(x1, y1);
      });
      break;
    case "arrow": {
      const angle = Math.atan2(y1 - y0, x1 - x0);
      const head = 14 * px;
      stroke(ctx, px, colour, () => {
        ctx.beginPath();
        ctx.moveTo(x0, y0);
        ctx.lineTo(x1, y1);
        for (const side of [-1, 1]) {
          ctx.moveTo(x1, y1);
          ctx.lineTo(
            x1 - head * Math.cos(angle + side * 0.45),
            y1 - head * Math.sin(angle + side * 0.45),
          );
        }
      });
      break;
    }
    case "rectangle":
      stroke(ctx, px, colour, () => {
        ctx.beginPath();
        ctx.rect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
      });
      break;
    case "ellipse":
      stroke(ctx, px, colour, () => {
        ctx.beginPath();
        ctx.ellipse(
          (x0 + x1) / 2,
          (y0 + y1) / 2,
          Math.abs(x1 - x0) / 2,
          Math.abs(y1 - y0) / 2,
          0,
          0,
          2 * Math.PI,
        );
      });
      break;
    case "freehand":
      stroke(ctx, px, colour, () => {
        ctx.beginPath();
        ctx.moveTo(x0, y0);
        for (const [x, y] of pts.slice(1)) ctx.lineTo(x, y);
      });
      break;
    case "measure": {
      const angle = Math.atan2(y1 - y0, x1 - x0) + Math.PI / 2;
      const tick = 7 * px;
      stroke(ctx, px, colour, () => {
        ctx.beginPath();
        ctx.moveTo(x0, y0);
        ctx.lineTo(x1, y1);
        for (const [x, y] of [
          [x0, y0],
          [x1, y1],
        ]) {
          ctx.moveTo(x - tick * Math.cos(angle), y - tick * Math.sin(angle));
          ctx.lineTo(x + tick * Math.cos(angle), y + tick * Math.sin(angle));
        }
      });
      label(ctx, px, colour, measureLabel(shape), (x0 + x1) / 2 + 6 * px, (y0 + y1) / 2 - 6 * px);
      break;
    }
    case "text":
      label(ctx, px, colour, shape.text, x0, y0);
      break;
  }
}
