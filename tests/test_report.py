"""The HTML report (fastpq.analysis.report) and ``fastpq report``: tables and embedded plots are in the
page, and it references nothing outside itself. (bench/render_report.py renders it in Chromium.)"""

import base64
import json
import re

import pytest

import fastpq
from fastpq.datasets import synthetic
from fastpq.cli import main

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data)
            for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    pytest.importorskip("PIL")
    return synthetic.write_coco_dataset(tmp_path_factory.mktemp("data"), 10, height=120,
                                        width=160, seed=2)


def test_report_command_writes_a_self_contained_page(dataset, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", dataset["gt_json"], dataset["pred_json"], "--out", str(out)]) == 0
    assert str(out / "index.html") in capsys.readouterr().out
    page = (out / "index.html").read_text(encoding="utf-8")
    for heading in ("Summary", "By segment size", "Errors", "Worst images", "By supercategory",
                    "Per class"):
        assert f"<h2>{heading}" in page
    assert page.count("<table>") == 6
    pngs = embedded_pngs(page)
    assert len(pngs) == 5  # SQ/RQ scatter, size bars, error bars, worst images, class bars
    assert all(png.startswith(PNG_SIGNATURE) for png in pngs)
    assert not re.search(r'(src|href)="(?!data:)', page)  # no external resource
    result = fastpq.pq_compute(dataset["gt_json"], dataset["pred_json"], verbose=False,
                               return_result=True)
    assert f"<td>{100 * result.pq:.1f}</td>" in page
    for row in result.per_class.values():
        if row.tp + row.fp + row.fn:
            assert f'<td class="text">{row.name}</td>' in page
    saved = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert len(saved["per_image"]) == 10 and saved["All"]["n"] == result.all.n
    assert (out / "per_class.csv").read_text(encoding="utf-8") == result.to_csv()


def test_report_without_records(tmp_path):
    g, gs, p, ps = synthetic.make_dataset(1, height=60, width=80, seed=1)[0]
    result = fastpq.evaluate(g, p, gt_segments=gs, pred_segments=ps, categories="coco")
    from fastpq.analysis.report import write_report

    page = write_report(result, tmp_path, title="A <title>").read_text(encoding="utf-8")
    assert "<h1>A &lt;title&gt;</h1>" in page
    assert "per_image=True" in page and "<h2>Errors" not in page
    assert len(embedded_pngs(page)) == 2
