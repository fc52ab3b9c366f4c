"""The committed comparison reports in a real browser: headless Chromium opens a copy of each
``benchmarks/results/*/report.html``; every image must have loaded (natural width > 0), the page must
have requested nothing but itself and its inline ``data:`` images (no network, no other file), and a
screenshot of it is taken. Skipped where no Chromium is installed (Debian: ``apt-get install chromium``).

Chromium is driven over the DevTools protocol on a pipe with the standard library only
(``benchmarks/report_screenshot.py``, which also writes ``docs/report-screenshot.png``)."""

import importlib.util
import re
import shutil
import struct
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("report_screenshot", ROOT / "benchmarks" / "report_screenshot.py")
shot = sys.modules[SPEC.name] = importlib.util.module_from_spec(SPEC)  # dataclasses look their module up
SPEC.loader.exec_module(shot)

REPORTS = sorted(ROOT.glob("benchmarks/results/*/report.html"))
WIDTH = 1280


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = shot.find_chromium()
    if binary is None:
        pytest.skip("no headless chromium on this machine: apt-get install chromium to run this test")
    return binary


def _copy(report: Path, tmp_path: Path) -> Path:
    """The report's folder copied under tmp_path (the committed files are never touched)."""
    folder = tmp_path / report.parent.name
    shutil.copytree(report.parent, folder)
    return folder / report.name


def _problems(page, report: Path) -> list[str]:
    """Everything wrong with how `report` loaded: images that did not, requests for anything but the
    report itself and data: URLs, failed requests."""
    own = report.resolve().as_uri()
    out = []
    if not page.images:
        out.append("the page has no images")
    out += [f"image did not load (natural width 0): {i['src']!r}" for i in page.images if i["width"] <= 0]
    requested = page.requests + page.resources
    out += [f"requested {url[:120]!r}" for url in dict.fromkeys(requested)
            if not url.startswith("data:") and url != own]
    out += [f"request failed: {f}" for f in page.failed]
    return out


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "the screenshot is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("report", REPORTS, ids=[r.parent.name for r in REPORTS])
def test_report_loads_in_browser(report, chromium, tmp_path):
    copy = _copy(report, tmp_path)
    page = shot.open_report(copy, chromium, tmp_path / "browser", width=WIDTH)
    problems = _problems(page, copy)
    assert not problems, "\n".join(problems)
    assert page.title.startswith("Comparison report: ")  # the tasks compared
    assert len(page.images) == report.read_text(encoding="utf-8").count("<img ")
    (tmp_path / "screenshot.png").write_bytes(page.screenshot)
    width, height = _png_size(page.screenshot)
    assert (width, height) == (WIDTH, page.height) and height > 1000  # the whole page, plots included


def test_check_catches_broken_image_and_network(chromium, tmp_path):
    """The check above fails for real: in a copy, one inline image's data cut short and one image and
    one stylesheet asked from the network are each reported."""
    copy = _copy(REPORTS[0], tmp_path)
    html = copy.read_text(encoding="utf-8")
    html, n = re.subn(r'src="data:image/png;base64,[^"]{300}', 'src="data:image/png;base64,AAAA', html, count=1)
    assert n == 1
    html = html.replace("</body>", '<img src="http://example.invalid/plot.png">'
                        '<link rel="stylesheet" href="https://example.invalid/style.css"></body>')
    copy.write_text(html, encoding="utf-8")
    problems = "\n".join(_problems(shot.open_report(copy, chromium, tmp_path / "browser", max_height=1), copy))
    assert "image did not load (natural width 0): 'data:image/png;base64,AAAA" in problems
    assert "image did not load (natural width 0): 'http://example.invalid/plot.png'" in problems
    assert "requested 'http://example.invalid/plot.png'" in problems
    assert "requested 'https://example.invalid/style.css'" in problems
    assert "request failed: http://example.invalid/plot.png: net::ERR_NAME_NOT_RESOLVED" in problems
