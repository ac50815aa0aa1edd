"""End to end: a panoptic model on a validation set, evaluated by fastpq or by detectron2's path.

    python bench/bench_e2e.py [--images 8] [--height 320] [--width 480] [--min-size 320]
        [--max-size 480] [--device cpu] [--threads N] [--repeat 5] [--sample] [--oracle-noise]

fastpq.models.PanopticFPN (random weights: nothing is downloaded) runs on every image, one at a
time, and its outputs are evaluated two ways:

* fastpq: ``PanopticEvaluator.process`` after each forward (the ground truth read from its PNG,
  as detectron2's dataset dicts name it), ``evaluate()`` at the end;
* reference: what detectron2's ``COCOPanopticEvaluator`` does: each predicted map is encoded to
  an in-memory PNG (panopticapi's ``id2rgb`` + Pillow) in ``process``; at the end the PNGs are
  written to a temporary folder with a predictions JSON and panopticapi's own ``pq_compute``
  (panopticapi-lite; it runs one process per CPU) scores them.

The first repeat evaluates inside the model loop; the others replay the stored outputs, and the
metric times are medians over --repeat. Metric time per image counts each path's per-image step
plus its end step divided by the number of images. Both paths must give the same numbers.

Data: generated COCO panoptic ground truth (``fastpq.datasets.synthetic``, 133 categories) and images
painted from it (category colours + noise), or with --sample the real photos and ground truth in
../shared/data/coco_panoptic_sample. With random weights PQ is ~0 and the model predicts few
segments, which makes evaluation cheaper than with trained weights; --oracle-noise still runs
and times the model but evaluates GT-derived predictions damaged by
``fastpq.datasets.synthetic.make_prediction`` (missed, merged, spurious, misclassified segments, jittered
borders), with realistic segment counts.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import fastpq
from fastpq.datasets import synthetic
from fastpq.core.categories import Categories
from fastpq.io.png import read_ids

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_panoptic_sample"


# -- data ------------------------------------------------------------------------------------------

def painted_image(gt_ids, segments, colors, rng) -> torch.Tensor:
    """A (3, H, W) float image in 0..1: each segment in its category's colour, plus noise."""
    seg_ids = np.array([0] + [s["id"] for s in segments], np.int64)
    palette = np.array([(0, 0, 0)] + [colors[s["category_id"]] for s in segments], np.float32)
    order = np.argsort(seg_ids)
    rgb = palette[order[np.searchsorted(seg_ids[order], gt_ids)]] / 255
    rgb += rng.normal(0, 0.08, rgb.shape).astype(np.float32)
    return torch.from_numpy(np.clip(rgb, 0, 1).transpose(2, 0, 1).copy())


def synthetic_data(root: Path, args, categories: Categories):
    """(gt_json path, gt folder, records): one record per image with its tensor and GT."""
    paths = synthetic.write_coco_dataset(root, args.images, height=args.height, width=args.width,
                                         categories=categories, seed=args.seed)
    scenes = synthetic.make_dataset(args.images, height=args.height, width=args.width,
                                    categories=categories, seed=args.seed)
    with open(paths["gt_json"], encoding="utf-8") as f:
        gt_json = json.load(f)
    colors = {c["id"]: c["color"] for c in gt_json["categories"]}
    rng = np.random.default_rng(args.seed)
    records = []
    for ann, (gt_ids, gt_segments, pred_ids, pred_segments) in zip(gt_json["annotations"], scenes):
        records.append({"image_id": ann["image_id"], "file_name": ann["file_name"],
                        "pan_seg_file_name": os.path.join(paths["gt_folder"], ann["file_name"]),
                        "segments_info": ann["segments_info"],
                        "image": painted_image(gt_ids, gt_segments, colors, rng),
                        "noisy_prediction": (pred_ids, pred_segments)})
    return paths["gt_json"], paths["gt_folder"], records


def sample_data(root: Path, args, categories: Categories):
    """The real COCO sample: photos, GT PNGs, and GT-derived noisy predictions."""
    from PIL import Image

    with open(SAMPLE / "panoptic_examples.json", encoding="utf-8") as f:
        gt_json = json.load(f)
    gt_json["annotations"] = gt_json["annotations"][:args.images]
    gt_path = root / "gt.json"  # only the evaluated images: pq_compute wants a prediction for each
    with open(gt_path, "w", encoding="utf-8") as f:
        json.dump(gt_json, f)
    files = {image["id"]: image["file_name"] for image in gt_json["images"]}
    rng = np.random.default_rng(args.seed)
    records = []
    for ann in gt_json["annotations"]:
        png = SAMPLE / "panoptic_examples" / ann["file_name"]
        photo = np.asarray(Image.open(SAMPLE / "images" / files[ann["image_id"]]).convert("RGB"))
        noisy = synthetic.make_prediction(rng, read_ids(png).astype(np.int64), ann["segments_info"],
                                          categories)
        records.append({"image_id": ann["image_id"], "file_name": ann["file_name"],
                        "pan_seg_file_name": str(png), "segments_info": ann["segments_info"],
                        "image": torch.from_numpy(photo.transpose(2, 0, 1).copy()).float() / 255,
                        "noisy_prediction": noisy})
    return str(gt_path), str(SAMPLE / "panoptic_examples"), records


# -- the two evaluation paths ------------------------------------------------------------------------

class ReferencePath:
    """detectron2's COCOPanopticEvaluator with panopticapi: PNG per image, pq_compute at the end."""

    def __init__(self, gt_json: str, gt_folder: str):
        from panopticapi.evaluation import pq_compute
        from panopticapi.utils import id2rgb

        self.pq_compute, self.id2rgb = pq_compute, id2rgb
        self.gt_json, self.gt_folder = gt_json, gt_folder
        self.predictions = []

    def reset(self):
        self.predictions = []

    def process(self, inputs, outputs):
        from PIL import Image

        for image, output in zip(inputs, outputs):
            panoptic_img, segments_info = output["panoptic_seg"]
            panoptic_img = np.asarray(panoptic_img.cpu().numpy() if torch.is_tensor(panoptic_img)
                                      else panoptic_img)
            with io.BytesIO() as out:
                Image.fromarray(self.id2rgb(panoptic_img)).save(out, format="PNG")
                # fastpq's model reports dataset ids: only the 'isthing' pop of detectron2 applies
                segments_info = [{k: v for k, v in s.items() if k != "isthing"}
                                 for s in segments_info]
                self.predictions.append({"image_id": image["image_id"],
                                         "file_name": os.path.splitext(image["file_name"])[0] + ".png",
                                         "png_string": out.getvalue(),
                                         "segments_info": segments_info})

    def evaluate(self):
        with tempfile.TemporaryDirectory(prefix="panoptic_eval") as pred_dir:
            for p in self.predictions:
                with open(os.path.join(pred_dir, p["file_name"]), "wb") as f:
                    f.write(p["png_string"])
            with open(self.gt_json, encoding="utf-8") as f:
                json_data = json.load(f)
            json_data["annotations"] = [{k: v for k, v in p.items() if k != "png_string"}
                                        for p in self.predictions]
            predictions_json = os.path.join(pred_dir, "predictions.json")
            with open(predictions_json, "w", encoding="utf-8") as f:
                f.write(json.dumps(json_data))
            with contextlib.redirect_stdout(io.StringIO()):
                return self.pq_compute(self.gt_json, predictions_json, gt_folder=self.gt_folder,
                                       pred_folder=pred_dir)


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def replay(evaluator, inputs, outputs):
    """One evaluation of stored outputs: (per-image process time summed, end step time, result)."""
    evaluator.reset()
    per_image = 0.0
    for image, output in zip(inputs, outputs):
        per_image += timed(evaluator.process, [image], [output])[1]
    result, end = timed(evaluator.evaluate)
    return per_image, end, result


def compare(fast: fastpq.PQResult, ref: dict) -> float:
    """Largest |difference| between the two paths' scores; raises on a count or n mismatch."""
    worst = 0.0
    for name in ("All", "Things", "Stuff"):
        ours = fast.split(name)
        if ours.n != ref[name]["n"]:
            raise AssertionError(f"{name}: fastpq counts {ours.n} categories, panopticapi "
                                 f"{ref[name]['n']}")
        for key in ("pq", "sq", "rq"):
            worst = max(worst, abs(getattr(ours, key) - ref[name][key]))
    for cid, row in ref["per_class"].items():
        for key in ("pq", "sq", "rq"):
            worst = max(worst, abs(getattr(fast.per_class[cid], key) - row[key]))
    if worst > 1e-12:
        raise AssertionError(f"fastpq and panopticapi differ by {worst:.3g}")
    return worst


# -- main --------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--height", type=int, default=320)
    ap.add_argument("--width", type=int, default=480)
    ap.add_argument("--min-size", type=int, default=320, help="model resize: shorter side")
    ap.add_argument("--max-size", type=int, default=480, help="model resize: longer side at most")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeat", type=int, default=5, help="metric repeats (the model runs once)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", action="store_true",
                    help="real photos + GT from ../shared/data/coco_panoptic_sample (2 images)")
    ap.add_argument("--oracle-noise", action="store_true",
                    help="evaluate GT-derived noisy predictions instead of the model's (the model "
                         "still runs and is timed)")
    args = ap.parse_args(argv)

    if args.sample and not SAMPLE.is_dir():
        print(f"--sample: {SAMPLE} is not present (only in the project's workspace); nothing to do")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    categories = Categories.coco_panoptic()
    things = [c for c, t in zip(categories.ids, categories.isthing) if t]
    stuff = [c for c, t in zip(categories.ids, categories.isthing) if not t]

    import panopticapi.evaluation

    from fastpq.models import PanopticFPN

    torch.manual_seed(args.seed)
    model = PanopticFPN(len(things), len(stuff), args.min_size, args.max_size, thing_ids=things,
                        stuff_ids=stuff).eval().to(device)

    with tempfile.TemporaryDirectory(prefix="fastpq_e2e") as root:
        load = sample_data if args.sample else synthetic_data
        gt_json, gt_folder, records = load(Path(root), args, categories)
        inputs = [{k: v for k, v in r.items() if k not in ("image", "noisy_prediction")}
                  for r in records]
        fast = fastpq.PanopticEvaluator(categories)
        reference = ReferencePath(gt_json, gt_folder)

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        with torch.inference_mode():
            model([records[0]["image"].to(device)])  # warm-up
            sync()
            outputs, model_times = [], []
            fast_loop = ref_loop = 0.0
            fast.reset()
            reference.reset()
            for record, image in zip(records, inputs):
                start = time.perf_counter()
                (output,) = model([record["image"].to(device)])
                sync()
                model_times.append(time.perf_counter() - start)
                if args.oracle_noise:
                    pred_ids, pred_segments = record["noisy_prediction"]
                    output = {"panoptic_seg": (torch.from_numpy(pred_ids.astype(np.int32)).to(device),
                                               pred_segments)}
                else:
                    output = {"panoptic_seg": output["panoptic_seg"]}
                outputs.append(output)
                fast_loop += timed(fast.process, [image], [output])[1]
                ref_loop += timed(reference.process, [image], [output])[1]
            fast_end = timed(fast.evaluate)[1]
            ref_result, ref_end = timed(reference.evaluate)
        fast_result = fast.result
        worst = compare(fast_result, ref_result)

        fast_times = [(fast_loop, fast_end)]
        ref_times = [(ref_loop, ref_end)]
        for _ in range(args.repeat - 1):
            fast_times.append(replay(fast, inputs, outputs)[:2])
            ref_times.append(replay(reference, inputs, outputs)[:2])
            assert fast.result.to_dict() == fast_result.to_dict()

    n = len(records)
    gt_segments = [len(r["segments_info"]) for r in records]
    pred_segments = [len(o["panoptic_seg"][1]) for o in outputs]
    model_ms = 1e3 * statistics.median(model_times)
    rows = []
    for name, times in (("fastpq PanopticEvaluator", fast_times),
                        ("detectron2 path (PNG + panopticapi)", ref_times)):
        step = statistics.median(t[0] for t in times) / n
        end = statistics.median(t[1] for t in times) / n
        metric_ms = 1e3 * (step + end)
        rows.append((name, model_ms, 1e3 * step, 1e3 * end, metric_ms,
                     metric_ms / (model_ms + metric_ms), 1e3 / (model_ms + metric_ms)))

    data = ("COCO sample (real photos + GT)" if args.sample else
            f"generated COCO panoptic GT ({len(categories)} categories, seed {args.seed})")
    sizes = sorted({tuple(r["image"].shape[-2:]) for r in records})
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, device {device}, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), Python "
          f"{platform.python_version()}, fastpq {fastpq.__version__}")
    print(f"reference: {Path(panopticapi.evaluation.__file__).parent} (pq_compute runs "
          f"{os.cpu_count()} processes); fastpq evaluates on one thread")
    print(f"data: {data}, {n} images {', '.join(f'{h}x{w}' for h, w in sizes)}; model: PanopticFPN "
          f"R50-FPN, random weights, min_size {args.min_size}, max_size {args.max_size}")
    print(f"predictions: {'GT-derived with synthetic noise (--oracle-noise)' if args.oracle_noise else 'the model'}; "
          f"segments per image: GT {statistics.mean(gt_segments):.1f}, predicted "
          f"{statistics.mean(pred_segments):.1f} (min {min(pred_segments)}, max {max(pred_segments)})")
    print(f"\nper image; model: median over the images (one forward each), metric: median of "
          f"{args.repeat} repeats")
    header = (f"{'path':38s} {'model ms':>9s} {'process ms':>11s} {'end ms':>8s} {'metric ms':>10s} "
              f"{'metric share':>13s} {'images/s':>9s}")
    print(header)
    print("-" * len(header))
    for name, model_ms, step, end, metric_ms, share, rate in rows:
        print(f"{name:38s} {model_ms:9.1f} {step:11.2f} {end:8.2f} {metric_ms:10.2f} "
              f"{100 * share:12.1f}% {rate:9.2f}")
    print(f"metric speed-up: {rows[1][4] / rows[0][4]:.1f}x")
    print(f"\nsame numbers on both paths (max |difference| {worst:.1g}):")
    print(fast_result.table())
    if not args.oracle_noise:
        print("(random weights: PQ ~0 is expected; trained weights come from a state-dict file, "
              "PanopticFPN(weights=...))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
