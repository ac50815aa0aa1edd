"""Evaluation on a Dask cluster and several checkpoints at once (fastpq.scale.cluster, evaluate_many).

The cluster is a ``LocalCluster`` of two worker processes with one thread each; its tests skip
cleanly without dask.distributed. Every cluster result is compared with the single-process
``pq_compute`` on the same files, including after a worker is killed in the middle of a run.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import fastpq
from fastpq.io.coco import evaluate_files, pair_annotations, resolve_inputs
from fastpq.errors import InputError, SegmentError, SuspectDataWarning
from fastpq.datasets.synthetic import write_coco_dataset

N_IMAGES = 24


def _dataset(root, **kwargs):
    return write_coco_dataset(root, N_IMAGES, height=120, width=160, seed=5, **kwargs)


def _local(paths, **kwargs):
    return fastpq.pq_compute(paths["gt_json"], paths["pred_json"], verbose=False,
                             return_result=True, **kwargs)


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed", reason="needs dask.distributed "
                                      "(pip install fastpq[dask])")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("cluster"))


def _edit_json(path, edit):
    data = json.loads(Path(path).read_text())
    edit(data)
    Path(path).write_text(json.dumps(data))


def _assert_same(result, expected):
    assert result.to_dict() == expected.to_dict()
    assert result.n_images == expected.n_images == N_IMAGES
    for counts in ("tp", "fp", "fn"):
        np.testing.assert_array_equal(getattr(result, counts), getattr(expected, counts))


# -- without a cluster -------------------------------------------------------------------------

def test_import_fastpq_imports_no_dask():
    code = ("import sys, fastpq, fastpq.scale.cluster; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'dask', 'distributed'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_distributed_names_the_extra(dataset, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # makes `import distributed` fail
    with pytest.raises(ImportError, match=r"pip install fastpq\[dask\]"):
        fastpq.pq_compute(dataset["gt_json"], dataset["pred_json"], verbose=False,
                          client=object())
    from fastpq.cli import main

    assert main(["eval", dataset["gt_json"], dataset["pred_json"], "--scheduler",
                 "tcp://127.0.0.1:8786"]) == 2
    assert "pip install fastpq[dask]" in capsys.readouterr().err


def test_evaluate_many_locally_equals_separate_runs_and_decodes_gt_once(tmp_path, monkeypatch):
    base = _dataset(tmp_path / "base")
    worse = _dataset(tmp_path / "worse", missed=0.3, spurious=0.3)  # same GT, other predictions
    assert Path(base["gt_json"]).read_bytes() == Path(worse["gt_json"]).read_bytes()
    expected = {"base": _local(base), "worse": _local(worse)}

    import fastpq.io.png

    reads = []
    read_ids_bytes = fastpq.io.png.read_ids_bytes
    monkeypatch.setattr(fastpq.io.png, "read_ids_bytes",
                        lambda data, name="<bytes>", out=None:
                        reads.append(name) or read_ids_bytes(data, name=name, out=out))
    results = fastpq.evaluate_many(base["gt_json"], {"base": base["pred_json"],
                                                     "worse": worse["pred_json"]}, workers=2)
    assert list(results) == ["base", "worse"]
    for name, result in results.items():
        _assert_same(result, expected[name])
    assert expected["base"].to_dict() != expected["worse"].to_dict()
    gt_reads = [p for p in reads if os.path.dirname(p) == base["gt_folder"]]
    assert sorted(gt_reads) == sorted(set(gt_reads)) and len(gt_reads) == N_IMAGES
    assert len(reads) == 3 * N_IMAGES


# -- on a LocalCluster -------------------------------------------------------------------------

def test_cluster_result_equals_single_process(client, dataset):
    expected = _local(dataset, workers=1)
    _assert_same(_local(dataset, client=client), expected)


def test_shard_size_does_not_change_the_result(client, dataset):
    from fastpq.scale.cluster import evaluate_on_cluster

    gt_json, pred_json, gt_folder, pred_folder, categories = resolve_inputs(
        dataset["gt_json"], dataset["pred_json"])
    matched = pair_annotations(gt_json, pred_json, dataset["gt_json"], dataset["pred_json"])
    acc, _ = evaluate_files(matched, gt_folder, pred_folder, categories, workers=1)
    expected = acc.result()
    for shard_size in (1, 5, 100):
        _assert_same(evaluate_on_cluster(client, matched, gt_folder, pred_folder, categories,
                                         shard_size=shard_size), expected)


def test_per_image_records_on_cluster_equal_local(client, dataset):
    expected = _local(dataset, per_image=True)
    result = _local(dataset, client=client, per_image=True)
    _assert_same(result, expected)
    _assert_same(result, _local(dataset))
    assert [r.index for r in result.per_image] == list(range(N_IMAGES))
    assert [r.as_dict() for r in result.per_image] == [r.as_dict() for r in expected.per_image]
    with pytest.raises(InputError, match="not available with a Dask client"):
        _local(dataset, client=client, metric="pq_dagger")


def test_evaluate_many_on_cluster_equals_separate_runs(client, tmp_path):
    base = _dataset(tmp_path / "base")
    worse = _dataset(tmp_path / "worse", missed=0.3, spurious=0.3)
    results = fastpq.evaluate_many(base["gt_json"], {"base": base["pred_json"],
                                                     "worse": worse["pred_json"]}, client=client)
    _assert_same(results["base"], _local(base))
    _assert_same(results["worse"], _local(worse))


def test_cluster_warns_on_the_client_in_image_order(client, tmp_path):
    paths = _dataset(tmp_path)

    def stale_areas(gt):  # a stale JSON area in two shards
        for index in (19, 2):
            gt["annotations"][index]["segments_info"][0]["area"] += 1

    _edit_json(paths["gt_json"], stale_areas)
    with warnings.catch_warnings(record=True) as local:
        warnings.simplefilter("always")
        expected = _local(paths)
    with warnings.catch_warnings(record=True) as remote:
        warnings.simplefilter("always")
        _assert_same(_local(paths, client=client), expected)
    assert [str(w.message) for w in remote if w.category is SuspectDataWarning] == \
        [str(w.message) for w in local if w.category is SuspectDataWarning]
    assert len([w for w in remote if w.category is SuspectDataWarning]) == 2
    assert remote[0].filename == __file__  # points at the caller, as the local run does


def test_cluster_raises_the_first_bad_image_in_input_order(client, tmp_path):
    paths = _dataset(tmp_path)

    def duplicate_segment(pred):  # a duplicate segment id in image 17 (third shard)
        segments = pred["annotations"][17]["segments_info"]
        segments.append(dict(segments[0]))

    _edit_json(paths["pred_json"], duplicate_segment)
    with pytest.raises(SegmentError) as local:
        _local(paths)
    with pytest.raises(SegmentError) as remote:
        _local(paths, client=client)
    assert str(remote.value) == str(local.value) and "image 17 (id 17" in str(local.value)

    # image 3, first shard; its shard ran fine in the call above: a new call must read again
    os.remove(os.path.join(paths["pred_folder"], "000000000003.png"))
    with pytest.raises(FileNotFoundError) as local:
        _local(paths)
    with pytest.raises(FileNotFoundError) as remote:
        _local(paths, client=client)
    assert str(remote.value) == str(local.value) and "000000000003.png" in str(local.value)


def _worker_running_shard_of(client, image_index):
    for address, keys in client.processing().items():
        for key in keys:
            name = key if isinstance(key, str) else key[0]
            if name.startswith("fastpq-shard-"):
                start, stop = map(int, name.split("-")[2:4])
                if start <= image_index < stop:
                    return address
    return None


def test_worker_killed_mid_run_reruns_its_shard_elsewhere(client, tmp_path):
    paths = _dataset(tmp_path)
    expected = _local(paths)
    # image 12's GT PNG becomes a named pipe: the worker that reads it blocks until it is killed
    blocked = 12
    png = os.path.join(paths["gt_folder"], f"{blocked:012d}.png")
    shutil.move(png, tmp_path / "held.png")
    os.mkfifo(png)
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(_local, paths, client=client)
        deadline = time.monotonic() + 30
        while True:  # opening the writing end succeeds once a reader waits on the pipe
            try:
                writer = os.open(png, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                assert time.monotonic() < deadline and not run.done(), "no worker read the pipe"
                time.sleep(0.02)
        try:
            address = _worker_running_shard_of(client, blocked)
            assert address is not None
            pid = client.run(os.getpid, workers=[address])[address]
            shutil.move(tmp_path / "held.png", png)  # the rerun reads the real file
            os.kill(pid, signal.SIGKILL)
        finally:
            os.close(writer)
        result = run.result(timeout=60)
    _assert_same(result, expected)
    client.wait_for_workers(2, timeout=30)  # the nanny restarts the killed worker
    assert pid not in client.run(os.getpid).values()
