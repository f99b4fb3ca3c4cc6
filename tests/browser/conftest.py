"""The browser layer: Debian's headless Chromium driven by Selenium against a real Serve app.

Chromium comes from the distribution (`apt-get install chromium chromium-driver`), never from a
tool that downloads its own browser. Set-up installs it when missing (as root, with apt-get);
where it cannot, every test here skips with one line saying why. FSPO_BROWSER_INSTALL=0 turns
the install off.
"""

import os
import shutil
import subprocess
import tempfile

import pytest

from tests.ray.conftest import ray_cluster  # noqa: F401  (the one local Ray of the test session)

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = ("/usr/bin/chromedriver",)
# Headless, no first-run or background traffic: the page must work with no network beyond its server.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000")


def _find(paths) -> str | None:
    return next((p for p in paths if os.path.exists(p)), None)


def _install() -> str | None:
    """Install Debian's chromium and chromium-driver; None when done, else why not."""
    if os.environ.get("FSPO_BROWSER_INSTALL", "1") == "0":
        return "FSPO_BROWSER_INSTALL=0"
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return "needs root and apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, timeout=300, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"], check=True,
                       capture_output=True, timeout=600, env=env)
    except (subprocess.SubprocessError, OSError) as e:
        return f"apt-get install failed ({type(e).__name__})"
    return None


@pytest.fixture(scope="session")
def chromium_paths() -> tuple[str, str]:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    if _find(CHROMIUM) is None or _find(DRIVER) is None:
        why = _install()
        if why is not None or _find(CHROMIUM) is None or _find(DRIVER) is None:
            pytest.skip(f"browser tests: Chromium and chromedriver missing and not installable ({why or 'not found'})")
    return _find(CHROMIUM), _find(DRIVER)


@pytest.fixture
def browser(chromium_paths):
    """A fresh headless Chromium (its own profile: no cookies, no storage) per test."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = chromium_paths
    profile = tempfile.mkdtemp(prefix="fspo-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=opts)
    d.set_page_load_timeout(60)
    try:
        yield d
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/browser/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.ray)
            item.add_marker(pytest.mark.browser)
