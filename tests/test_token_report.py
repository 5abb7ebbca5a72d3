"""The per-token reward pictures: the HTML page in a real headless browser (Debian's chromium + chromedriver, driven by
selenium), and the PNG heatmap."""

import shutil

import numpy as np
import pytest

from avalign.evaluation.token_report import diverging_colour, write_html, write_png

PAIR = {
    "prompt": "Say <b>hi</b> & bye", "chosen": " fine", "rejected": " <script>alert(1)</script>",
    "chosen_score": 1.5, "chosen_tokens": [" fine", " indeed", "</s>"],
    "chosen_token_rewards": [0.5, -0.25, 1.5], "chosen_token_mean": [1.0, -0.5, 2.0],
    "chosen_token_std": [0.1, 0.2, 0.3], "chosen_token_weight": [0.5, 0.5, 0.75],
    "rejected_score": -2.0, "rejected_tokens": [" <script>", "alert(1)", "</script>\n", "</s>"],
    "rejected_token_rewards": [0.0, -1.0, 0.25, -2.0], "rejected_token_mean": [0.0, -1.0, 0.5, -2.0],
    "rejected_token_std": [0.5, 0.5, 0.5, 1.0], "rejected_token_weight": [1.0, 1.0, 0.5, 1.0],
}
DEMO = {"prompt": "q", "completion": " a b", "score": 3.0, "tokens": [" a", " b", "</s>"],
        "token_rewards": [1.0, 1.0, 1.0]}


def _browser():
    """A headless chromium, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


def test_page_in_a_headless_browser(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page = tmp_path / "report.html"
    write_html(str(page), [DEMO, PAIR], title="test page")
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and " src=" not in text  # self-contained
    browser = _browser()
    try:
        browser.get(page.as_uri())
        tokens = browser.find_elements(By.CSS_SELECTOR, ".tok")
        expected = DEMO["tokens"] + PAIR["chosen_tokens"] + PAIR["rejected_tokens"]
        assert [t.get_attribute("textContent").replace("\u21b5", "") for t in tokens] == expected  # escaped, as text
        assert not browser.find_elements(By.CSS_SELECTOR, "main b, main script")  # nothing from the data ran or rendered
        fine = tokens[3]
        assert "reward +0.5\n" in fine.get_attribute("title") and "sigma 0.1 " in fine.get_attribute("title")
        assert fine.get_attribute("title").endswith("w 0.5") and "mu +1 " in fine.get_attribute("title")
        # The most negative token is drawn in the negative end's colour (its reward is the scale's 98th percentile).
        worst = tokens[-1].value_of_css_property("background-color")
        assert worst.replace("rgba", "rgb").replace(", 1)", ")") == "rgb({}, {}, {})".format(*diverging_colour(-1, 1))
        sides = browser.find_elements(By.CSS_SELECTOR, ".row:nth-of-type(2) .resp")
        assert sides[0].location["y"] == sides[1].location["y"] and sides[0].location["x"] < sides[1].location["x"]

        def order():
            return [float(r.get_attribute("data-score")) for r in browser.find_elements(By.CSS_SELECTOR, ".row")]

        assert order() == [3.0, 1.5]
        Select(browser.find_element(By.ID, "sort")).select_by_value("score-asc")
        assert order() == [1.5, 3.0]
        Select(browser.find_element(By.ID, "colour")).select_by_value("s")
        assert browser.find_element(By.ID, "legend-s").is_displayed()
        assert not browser.find_element(By.ID, "legend-r").is_displayed()
        shot = tmp_path / "shot.png"
        browser.save_screenshot(str(shot))
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    finally:
        browser.quit()
    assert errors == []
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.std() > 0.05  # not a blank page


def test_png_heatmap(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    path = tmp_path / "heatmap.png"
    write_png(str(path), [PAIR, DEMO], title="test")
    pixels = matplotlib.image.imread(str(path))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 300
    red = (pixels[..., 0] > 0.7) & (pixels[..., 2] < 0.3)
    blue = (pixels[..., 2] > 0.6) & (pixels[..., 0] < 0.2)
    assert red.sum() > 100 and blue.sum() > 100  # negative and positive cells (and the colour bar) are drawn
    assert np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0).shape[0] > 20
    write_png(str(path), [PAIR], field="token_std")
    pixels = matplotlib.image.imread(str(path))
    purple = (pixels[..., 0] > 0.35) & (pixels[..., 0] < 0.55) & (pixels[..., 2] > 0.6) & (pixels[..., 1] < 0.5)
    assert purple.sum() > 100  # sigma is drawn on its one-sided scale


def test_legend_names_what_the_colours_are(tmp_path):
    """AVA rows: w mu, with mu and sigma to switch to; rows with token rewards only (Bradley-Terry prefix
    differences): the prefix difference, and no switch."""
    page = tmp_path / "page.html"
    write_html(str(page), [PAIR])
    assert "token reward (w\u00b7mu)" in page.read_text() and 'id="colour"' in page.read_text()
    write_html(str(page), [DEMO])
    assert "token reward: r(y\u2264t) \u2212 r(y&lt;t)" in page.read_text() and 'id="colour"' not in page.read_text()
