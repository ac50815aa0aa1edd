"""fastpq.errors: structured location fields, one location format, notes as values; the
validation policy's three settings on one inconsistent image."""

import contextlib
import io
import json
import os
import pickle
import warnings

import numpy as np
import pytest

import fastpq
from fastpq.core.categories import Categories
from fastpq.core.validation import Policy, check_segments, segment_tables
from fastpq.datasets import synthetic
from fastpq.errors import (DecodeError, FastPQError, InputError, MissingFileError, SegmentError,
                           SuspectDataWarning, SuspectNote, format_location, reference_error)

CATS = Categories.from_lists(things=[1, 2], stuff=[3])


# -- the one location format -----------------------------------------------------------------------

@pytest.mark.parametrize("fields, text", [
    ({}, "image"),
    ({"image_index": 3}, "image 3"),
    ({"image_index": 3, "image_id": 42}, "image 3 (id 42)"),
    ({"image_index": 3, "image_id": "a"}, "image 3 (id 'a')"),
    ({"image_index": 3, "image_id": 42, "file": "x.png"}, "image 3 (id 42, file x.png)"),
    ({"image_id": 42}, "image (id 42)"),
    ({"file": "gt.json"}, "gt.json"),
    ({"image_index": 1, "update": 0},
     "image 1 of update 0 (updates counted from 0 since the metric was created or reset)"),
])
def test_format_location(fields, text):
    assert format_location(**fields) == text


def test_errors_keep_message_and_fields_apart():
    error = SegmentError("predicted segment id 9 is in the map but not in segments_info",
                         image_index=2, image_id=7, segment_id=9)
    assert str(error) == error.args[0] == ("image 2 (id 7): predicted segment id 9 is in the map "
                                           "but not in segments_info")
    assert error.message.startswith("predicted segment id 9")
    assert error.location == {"image_index": 2, "image_id": 7, "file": None, "segment_id": 9,
                              "update": None}
    assert isinstance(error, InputError) and isinstance(error, ValueError)
    assert str(InputError("no location")) == "no location"  # nothing known: no prefix


def test_relocated_rebuilds_from_fields():
    error = SegmentError("predicted segment id 9 is listed twice", image_index=0, segment_id=9)
    moved = error.relocated(image_index=5, image_id="img5")
    assert type(moved) is SegmentError and moved.message == error.message
    assert str(moved) == "image 5 (id 'img5'): predicted segment id 9 is listed twice"
    assert moved.segment_id == 9 and error.image_index == 0  # the original is unchanged
    with pytest.raises(TypeError, match="not location fields"):
        error.relocated(row=3)


@pytest.mark.parametrize("kind", [InputError, SegmentError, DecodeError, MissingFileError])
def test_errors_pickle_with_their_fields(kind):
    error = kind("the predicted PNG p.png does not exist", image_index=4, image_id=4,
                 file="p.png", segment_id=None)
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is kind and str(back) == str(error) and back.location == error.location


def test_missing_file_error_is_a_file_not_found_error():
    error = MissingFileError("the ground-truth PNG g.png does not exist", image_index=0)
    assert isinstance(error, FileNotFoundError) and isinstance(error, FastPQError)
    assert str(error) == "image 0: the ground-truth PNG g.png does not exist"


def test_reference_errors_keep_the_reference_type_and_text():
    error = reference_error(KeyError, "In the image with ID 1 segment with ID 5 is presented in "
                            "PNG and not presented in JSON.", image_index=1, image_id=1,
                            file="pred/1.png", segment_id=5)
    assert type(error) is KeyError
    assert error.args[0] == ("In the image with ID 1 segment with ID 5 is presented in PNG and "
                             "not presented in JSON. [pred/1.png]")
    back = pickle.loads(pickle.dumps(error))
    assert (back.image_id, back.segment_id, back.file) == (1, 5, "pred/1.png")


# -- notes -----------------------------------------------------------------------------------------

def test_notes_are_values_that_become_warnings():
    note = SuspectNote("ground-truth segment 5 is in the PNG but not in the JSON", image_index=2,
                       image_id=2, file="gt/2.png", segment_id=5)
    assert str(note) == ("image 2 (id 2, file gt/2.png): ground-truth segment 5 is in the PNG but "
                         "not in the JSON")
    assert note == SuspectNote(**{"message": note.message, **note.location})
    assert len({note, note.relocated(image_index=2)}) == 1  # hashable: duplicates collapse
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn(note, SuspectDataWarning)
        warnings.warn("a plain text", SuspectDataWarning)
    assert str(caught[0].message) == str(note) and caught[0].message.note is note
    assert str(caught[1].message) == "a plain text" and caught[1].message.note is None


# -- the validation policy -------------------------------------------------------------------------

def inconsistent_image():
    """GT lists 10 (area 6, the PNG has 12) but its map also holds the unlisted 30; the prediction
    lists 10 and 20 and its map holds only 10."""
    gt_segments = [{"id": 10, "category_id": 1, "iscrowd": 0, "area": 6}]
    pred_segments = [{"id": 10, "category_id": 1}, {"id": 20, "category_id": 3}]
    gt_present, gt_area = np.array([10, 30]), np.array([12, 4])
    pred_present = np.array([10])
    return gt_segments, pred_segments, gt_present, gt_area, pred_present


def test_strict_policy_refuses():
    gs, ps, gt_present, _, pred_present = inconsistent_image()
    gt_table, pred_table = segment_tables(gs, ps, CATS, Policy.STRICT, image_index=0, image_id=7)
    with pytest.raises(SegmentError) as caught:
        check_segments(Policy.STRICT, gt_table, pred_table, gt_present, pred_present,
                       image_index=0, image_id=7)
    assert (caught.value.segment_id, caught.value.image_id) == (30, 7)
    assert "ground-truth segment id 30 is in the map but not in segments_info" in str(caught.value)


def test_reference_policy_raises_the_reference_key_error_and_returns_notes():
    gs, ps, gt_present, gt_area, pred_present = inconsistent_image()
    gt_table, pred_table = segment_tables(gs, ps, CATS, Policy.REFERENCE, image_index=3,
                                          image_id=3, gt_file="g.png", pred_file="p.png")
    with pytest.raises(KeyError) as caught:
        check_segments(Policy.REFERENCE, gt_table, pred_table, gt_present, pred_present,
                       gt_area=gt_area, pred_segments=ps, image_index=3, image_id=3,
                       gt_file="g.png", pred_file="p.png")
    assert type(caught.value) is KeyError and caught.value.segment_id == 20
    assert caught.value.args[0] == ("In the image with ID 3 the following segment IDs [20] are "
                                    "presented in JSON and not presented in PNG. [p.png]")
    notes = check_segments(Policy.REFERENCE, gt_table, pred_table, gt_present, np.array([10, 20]),
                           gt_area=gt_area, pred_segments=ps, image_index=3, image_id=3,
                           gt_file="g.png", pred_file="p.png")
    assert [(n.segment_id, n.file, n.image_index) for n in notes] == [(10, "g.png", 3),
                                                                      (30, "g.png", 3)]
    assert "has area 6 in the JSON but 12 pixels in the PNG" in str(notes[0])


def test_reference_policy_keeps_unknown_categories_the_others_refuse():
    gs = [{"id": 10, "category_id": 99, "iscrowd": 0, "area": 1}]
    ps = [{"id": 10, "category_id": 1}]
    gt_table, _ = segment_tables(gs, ps, CATS, Policy.REFERENCE)
    assert gt_table.category.tolist() == [-1]
    for policy in (Policy.STRICT, Policy.DEFERRED):
        with pytest.raises(SegmentError, match="unknown category_id 99") as caught:
            segment_tables(gs, ps, CATS, policy, image_index=1)
        assert caught.value.segment_id == 10 and caught.value.image_index == 1


def test_deferred_policy_refuses_on_the_host_only_what_the_device_cannot_hold():
    gs, ps, gt_present, _, pred_present = inconsistent_image()
    gt_table, pred_table = segment_tables(gs, ps, CATS, Policy.DEFERRED)
    assert check_segments(Policy.DEFERRED, gt_table, pred_table, gt_present, pred_present) == []
    big = [{"id": 1 << 31, "category_id": 1}]
    with pytest.raises(SegmentError, match="does not fit the GPU path's int32 ids") as caught:
        segment_tables(gs, big, CATS, Policy.DEFERRED, image_index=2)
    assert caught.value.segment_id == 1 << 31
    with pytest.raises(InputError, match="need segments_info on both sides"):
        segment_tables(gs, None, CATS, Policy.DEFERRED)


# -- the front doors fill the fields ---------------------------------------------------------------

def test_evaluate_errors_carry_image_and_segment():
    g = np.zeros((4, 6), np.int32)
    g[:, 3:] = 20
    gs = [{"id": 20, "category_id": 3, "iscrowd": 0}]
    p = g.copy()
    p[0, 0] = 99
    with pytest.raises(SegmentError) as caught:
        fastpq.evaluate([g, g, p], [g, g, p], gt_segments=[gs] * 3, pred_segments=[
            [{"id": 20, "category_id": 3}]] * 3, categories=CATS, image_ids=["a", "b", "c"])
    assert caught.value.location == {"image_index": 2, "image_id": "c", "file": None,
                                     "segment_id": 99, "update": None}


def test_pq_compute_errors_carry_the_file(tmp_path):
    root = tmp_path / "ds"
    synthetic.write_coco_dataset(root, 3, height=40, width=50, seed=5)
    with open(root / "pred.json") as f:
        pred = json.load(f)
    pred["annotations"][1]["segments_info"].append(dict(pred["annotations"][1]["segments_info"][0]))
    with open(root / "pred.json", "w") as f:
        json.dump(pred, f)
    image_id = pred["annotations"][1]["image_id"]
    with pytest.raises(SegmentError, match="is listed twice") as caught:
        with contextlib.redirect_stdout(io.StringIO()):
            fastpq.pq_compute(str(root / "gt.json"), str(root / "pred.json"), workers=1)
    file = os.path.join(str(root / "pred"), pred["annotations"][1]["file_name"])
    assert (caught.value.image_index, caught.value.image_id, caught.value.file) == (1, image_id,
                                                                                     file)
    assert str(caught.value).startswith(f"image 1 (id {image_id!r}, file {file}): ")
