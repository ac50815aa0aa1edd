"""fastpq.pq_compute on files: malformed input, suspect data, folders, threads, output, the CLI.

Each malformed input gives an error naming the file and the image id; where the reference raises
(SPEC §2.7), the type is the same and its message text comes first. Suspect ground truth gives
the reference's numbers, compared class by class, and a SuspectDataWarning.
"""

import contextlib
import copy
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import warnings

import pytest
from PIL import Image

import fastpq
from fastpq.datasets import synthetic
from fastpq.cli import main as cli_main
from fastpq.errors import DecodeError, InputError, SuspectDataWarning

TOL = 1e-12


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("files") / "ds"
    synthetic.write_coco_dataset(root, 8, height=(80, 120), width=(100, 160), seed=31)
    return root


@pytest.fixture
def ds(pristine, tmp_path):
    """A fresh copy of the dataset to damage: its JSON and folder paths (str)."""
    root = tmp_path / "ds"
    shutil.copytree(pristine, root)
    return {"gt_json": str(root / "gt.json"), "pred_json": str(root / "pred.json"),
            "gt_folder": str(root / "gt"), "pred_folder": str(root / "pred")}


def edit_json(path, change):
    with open(path) as f:
        data = json.load(f)
    change(data)
    with open(path, "w") as f:
        json.dump(data, f)


def quiet_pq_compute(*args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return fastpq.pq_compute(*args, **kwargs)


def reference_stat(ds, gt_folder=None, pred_folder=None):
    """The reference's per-image code on the files (one chunk)."""
    from panopticapi.evaluation import pq_compute_single_core

    with open(ds["gt_json"]) as f:
        gt = json.load(f)
    with open(ds["pred_json"]) as f:
        pred = {a["image_id"]: a for a in json.load(f)["annotations"]}
    pairs = [(a, pred[a["image_id"]]) for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        return pq_compute_single_core(0, pairs, gt_folder or ds["gt_folder"],
                                      pred_folder or ds["pred_folder"],
                                      {c["id"]: c for c in gt["categories"]})


def assert_counts_equal(ours, stat):
    for cid, row in ours["per_class"].items():
        ref = stat.pq_per_cat.get(cid)
        ref_counts = (ref.tp, ref.fp, ref.fn) if ref is not None else (0, 0, 0)
        assert (row["tp"], row["fp"], row["fn"]) == ref_counts, cid
        assert abs(row["iou"] - (ref.iou if ref is not None else 0.0)) <= TOL, cid


def reference_error(ds, expected_type):
    """The reference's exception on the same files."""
    with pytest.raises(expected_type) as caught:
        reference_stat(ds)
    return caught.value


def assert_reference_message_first(ours, ref):
    assert type(ours) is type(ref)
    ours_text, ref_text = ours.args[0], ref.args[0]
    assert ours_text.startswith(ref_text), (ours_text, ref_text)


# -- files that cannot be read ---------------------------------------------------------------------

@pytest.mark.parametrize("side", ["gt", "pred"])
def test_missing_png(ds, side):
    path = f"{ds[side + '_folder']}/000000000003.png"
    os.remove(path)
    with pytest.raises(FileNotFoundError, match=rf"image 3 \(id 3\): .*{path} does not exist"):
        quiet_pq_compute(ds["gt_json"], ds["pred_json"])


@pytest.mark.parametrize("damage", ["garbage", "bad_crc", "truncated"])
def test_unreadable_png(ds, damage):
    path = f"{ds['pred_folder']}/000000000005.png"
    data = open(path, "rb").read()
    if damage == "garbage":
        data = b"this is not a PNG file at all" * 10
    elif damage == "bad_crc":
        at = data.index(b"IDAT") + 20
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
    else:
        data = data[:len(data) // 2]
    open(path, "wb").write(data)
    with pytest.raises(DecodeError) as caught:
        quiet_pq_compute(ds["gt_json"], ds["pred_json"])
    assert "image 5 (id 5)" in str(caught.value) and path in str(caught.value)


def test_png_of_another_size_than_its_pair(ds):
    path = f"{ds['pred_folder']}/000000000002.png"
    image = Image.open(path)
    image.crop((0, 0, image.width - 3, image.height)).save(path)
    with pytest.raises(InputError) as caught:
        quiet_pq_compute(ds["gt_json"], ds["pred_json"])
    text = str(caught.value)
    assert "image 2 (id 2)" in text and path in text
    assert f"{image.height}x{image.width}" in text and f"{image.height}x{image.width - 3}" in text
    # the reference: a NumPy broadcast error without image id
    with pytest.raises(ValueError, match="broadcast"):
        reference_stat(ds)


@pytest.mark.parametrize("which", ["gt_json", "pred_json"])
def test_truncated_json(ds, which):
    text = open(ds[which]).read()
    open(ds[which], "w").write(text[: len(text) // 2])
    with pytest.raises(DecodeError, match=r"not valid JSON.*truncated") as caught:
        quiet_pq_compute(ds["gt_json"], ds["pred_json"])
    assert ds[which] in str(caught.value)


@pytest.mark.parametrize("which", ["gt_json", "pred_json"])
def test_annotation_without_segments_info(ds, which):
    edit_json(ds[which], lambda d: d["annotations"][4].pop("segments_info"))
    with pytest.raises(InputError, match=r"image id 4 has no 'segments_info'") as caught:
        quiet_pq_compute(ds["gt_json"], ds["pred_json"])
    assert ds[which] in str(caught.value)


# -- the reference's errors ------------------------------------------------------------------------

def test_gt_image_without_prediction(ds, panopticapi):
    edit_json(ds["pred_json"], lambda d: d["annotations"].pop(6))
    with pytest.raises(Exception) as ref:
        with contextlib.redirect_stdout(io.StringIO()):
            panopticapi.pq_compute(ds["gt_json"], ds["pred_json"])
    with pytest.raises(Exception) as ours:
        quiet_pq_compute(ds["gt_json"], ds["pred_json"])
    assert ref.value.args[0] == "no prediction for the image with id: 6"
    assert_reference_message_first(ours.value, ref.value)
    assert ds["pred_json"] in str(ours.value)


def _pred_id_not_listed(pred):
    pred["annotations"][1]["segments_info"].pop(0)


def _listed_id_not_in_png(pred):
    pred["annotations"][1]["segments_info"].append({"id": 77, "category_id": 1})


def _unknown_category(pred):
    pred["annotations"][1]["segments_info"][0]["category_id"] = 91  # not a COCO panoptic id


@pytest.mark.parametrize("change, text", [
    (_pred_id_not_listed, "is presented in PNG and not presented in JSON."),
    (_listed_id_not_in_png, "the following segment IDs [77] are presented in JSON and not "
                            "presented in PNG."),
    (_unknown_category, "has unknown category_id 91."),
])
def test_prediction_sanity_errors(ds, panopticapi, change, text):
    edit_json(ds["pred_json"], change)
    ref = reference_error(ds, KeyError)
    with pytest.raises(KeyError) as ours:
        quiet_pq_compute(ds["gt_json"], ds["pred_json"])
    assert ref.args[0].startswith("In the image with ID 1 ") and text in ref.args[0]
    assert_reference_message_first(ours.value, ref)
    assert f"{ds['pred_folder']}/000000000001.png" in ours.value.args[0]


@pytest.mark.parametrize("side, words", [("gt", "ground truth"), ("pred", "predicted")])
def test_missing_folder(ds, panopticapi, side, words):
    shutil.rmtree(ds[side + "_folder"])
    with pytest.raises(Exception) as ref:
        with contextlib.redirect_stdout(io.StringIO()):
            panopticapi.pq_compute(ds["gt_json"], ds["pred_json"])
    with pytest.raises(Exception) as ours:
        quiet_pq_compute(ds["gt_json"], ds["pred_json"])
    assert str(ref.value) == f"Folder {ds[side + '_folder']} with {words} segmentations doesn't exist"
    assert_reference_message_first(ours.value, ref.value)


# -- suspect ground truth: the reference's numbers and a warning -------------------------------------

def _first_plain_segment(gt, image=0):
    return next(s for s in gt["annotations"][image]["segments_info"] if not s["iscrowd"])


def test_stale_gt_area_warns_and_scores_like_reference(ds, panopticapi):
    def shrink(gt):
        _first_plain_segment(gt)["area"] //= 2
        _first_plain_segment(gt, 3)["area"] += 500

    edit_json(ds["gt_json"], shrink)
    gt = json.load(open(ds["gt_json"]))
    with pytest.warns(SuspectDataWarning) as caught:
        ours = quiet_pq_compute(ds["gt_json"], ds["pred_json"])
    texts = [str(w.message) for w in caught if w.category is SuspectDataWarning]
    for image in (0, 3):
        seg = _first_plain_segment(gt, image)
        assert any(f"image {image} (id {image}, " in t and f"segment {seg['id']} has area {seg['area']} in "
                   "the JSON" in t for t in texts)
    assert_counts_equal(ours, reference_stat(ds))


def test_gt_id_in_png_not_in_json_warns_and_scores_like_reference(ds, panopticapi):
    removed = []
    edit_json(ds["gt_json"], lambda gt: removed.append(
        gt["annotations"][2]["segments_info"].pop(1)))
    with pytest.warns(SuspectDataWarning, match=rf"image 2 \(id 2, .*segment {removed[0]['id']} is in "
                      "the PNG but not in the JSON"):
        ours = quiet_pq_compute(ds["gt_json"], ds["pred_json"])
    assert_counts_equal(ours, reference_stat(ds))


def test_well_formed_files_do_not_warn(ds):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SuspectDataWarning)
        quiet_pq_compute(ds["gt_json"], ds["pred_json"])


# -- pairing and folders ---------------------------------------------------------------------------

def test_default_folders_remove_every_json_in_the_path(ds, panopticapi, tmp_path):
    """'a.json_files/gt.json' -> folder 'a_files/gt', as the reference's str.replace does."""
    json_dir, png_dir = tmp_path / "a.json_files", tmp_path / "a_files"
    json_dir.mkdir()
    for side in ("gt", "pred"):
        shutil.copy(ds[side + "_json"], json_dir / f"{side}.json")
        shutil.copytree(ds[side + "_folder"], png_dir / side)
    gt_json, pred_json = str(json_dir / "gt.json"), str(json_dir / "pred.json")
    ours = quiet_pq_compute(gt_json, pred_json)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = panopticapi.pq_compute(gt_json, pred_json)
    for split in ("All", "Things", "Stuff"):
        assert ours[split]["n"] == ref[split]["n"]
        assert all(abs(ours[split][k] - ref[split][k]) <= TOL for k in ("pq", "sq", "rq"))


def test_prediction_only_images_are_ignored(ds):
    before = quiet_pq_compute(ds["gt_json"], ds["pred_json"])

    def add_extra(pred):
        extra = copy.deepcopy(pred["annotations"][0])
        extra.update(image_id=999, file_name="missing.png")
        pred["annotations"].insert(0, extra)

    edit_json(ds["pred_json"], add_extra)
    assert quiet_pq_compute(ds["gt_json"], ds["pred_json"]) == before


def test_string_image_ids(ds, panopticapi):
    def stringify(data):
        for ann in data["annotations"]:
            ann["image_id"] = f"img_{ann['image_id']}"
        for image in data.get("images", []):
            image["id"] = f"img_{image['id']}"

    before = quiet_pq_compute(ds["gt_json"], ds["pred_json"])
    edit_json(ds["gt_json"], stringify)
    edit_json(ds["pred_json"], stringify)
    assert quiet_pq_compute(ds["gt_json"], ds["pred_json"]) == before
    assert_counts_equal(before, reference_stat(ds))
    # 1 and "1" do not pair, in the reference and here
    edit_json(ds["pred_json"], lambda d: d["annotations"][0].update(image_id=0))
    with pytest.raises(Exception, match="no prediction for the image with id: img_0"):
        quiet_pq_compute(ds["gt_json"], ds["pred_json"])


# -- threads and output ----------------------------------------------------------------------------

def test_worker_count_does_not_change_the_numbers_and_no_thread_survives(ds):
    before = set(threading.enumerate())
    one = quiet_pq_compute(ds["gt_json"], ds["pred_json"], workers=1)
    two = quiet_pq_compute(ds["gt_json"], ds["pred_json"], workers=2)
    assert one == two
    assert set(threading.enumerate()) <= before
    # also after an error in a worker
    os.remove(f"{ds['pred_folder']}/000000000004.png")
    with pytest.raises(FileNotFoundError):
        quiet_pq_compute(ds["gt_json"], ds["pred_json"], workers=2)
    assert set(threading.enumerate()) <= before


def test_silent_under_redirect_stdout(ds, capfd):
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        fastpq.pq_compute(ds["gt_json"], ds["pred_json"], workers=2)
    assert capfd.readouterr() == ("", "")
    lines = printed.getvalue().splitlines()
    assert lines[0] == "Evaluation panoptic segmentation metrics:"
    assert lines[-6] == "          |    PQ     SQ     RQ     N" and lines[-5] == "-" * 38
    assert [line[:10] for line in lines[-4:-1]] == ["All       ", "Things    ", "Stuff     "]
    assert lines[-1].startswith("Time elapsed: ")


# -- the command line ------------------------------------------------------------------------------

def test_cli_eval(ds, tmp_path, capsys):
    out = tmp_path / "pq.json"
    assert cli_main(["eval", ds["gt_json"], ds["pred_json"], "--workers", "2", "--per-class",
                     "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    expected = quiet_pq_compute(ds["gt_json"], ds["pred_json"], return_result=True)
    assert expected.table() in printed and expected.class_table() in printed
    written = json.loads(out.read_text())
    assert written == json.loads(expected.to_json())
    assert cli_main(["eval", ds["gt_json"], ds["pred_json"]]) == 0
    assert expected.class_table() not in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["no_folder", "unknown_category", "truncated_json"])
def test_cli_bad_input_exits_2_with_one_line(ds, capsys, damage):
    if damage == "no_folder":
        shutil.rmtree(ds["pred_folder"])
    elif damage == "unknown_category":
        edit_json(ds["pred_json"], _unknown_category)
    else:
        open(ds["gt_json"], "w").write("{")
    assert cli_main(["eval", ds["gt_json"], ds["pred_json"]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastpq: error: ")


def test_python_m_fastpq_eval(ds):
    run = [sys.executable, "-m", "fastpq", "eval", ds["gt_json"], ds["pred_json"]]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "All       |" in done.stdout and done.stderr == ""
    shutil.rmtree(ds["gt_folder"])
    done = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout.count("\n") < 10
    assert done.stderr == f"fastpq: error: Folder {ds['gt_folder']} with ground truth " \
                          "segmentations doesn't exist\n"


def test_cli_demo_prints_the_table_and_agrees_with_the_reference(panopticapi, tmp_path, capsys):
    assert cli_main(["demo", "--images", "4", "--height", "48", "--width", "64",
                     "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "fastpq start-up" in out and "All       |" in out
    assert "same N: True" in out and "panopticapi pq_compute" in out
