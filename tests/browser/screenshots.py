"""The page's three screens as PNGs for docs/serving.md, from a trained run's models:

    python -m tests.browser.screenshots --run runs/fspo-world --out docs/figures
    python -m tests.browser.screenshots --run runs/quick --persona fspo --answer fspo   # a run without RAT stages

Starts a local Ray and the Serve app (the run's world as the pair pool), drives Debian's headless
Chromium like a visitor (answers K pairs, asks a suggested question with the unpersonalized
answer beside it) and saves page_elicitation.png, page_persona.png and page_chat.png.
"""

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from tests.browser.conftest import CHROMIUM, CHROMIUM_FLAGS, DRIVER, _find
from tests.browser.test_page import answered, by_id, open_page, persona_settled, wait

KEY = "screenshot-key"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run directory with models/ and resolved_config.*.yaml")
    ap.add_argument("--persona", default="rat_describe", help="stage (or directory) of the persona model")
    ap.add_argument("--answer", default="fspo_rat", help="stage (or directory) of the answer model")
    ap.add_argument("--base", default="base_sft", help="stage (or directory) of the unpersonalized model")
    ap.add_argument("--out", default="docs/figures")
    ap.add_argument("--pairs", type=int, default=4)
    a = ap.parse_args(argv)
    import ray
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from tests.ray.helpers import running_app

    run = Path(a.run).resolve()

    def model(ref: str) -> str:
        return ref if "/" in ref else str(run / "models" / ref)

    small = {"num_cpus": 0.25, "max_ongoing_requests": 4, "max_queued_requests": 8}
    args = {
        "output_dir": str(run),
        "personalize": {"persona": {"model": model(a.persona), "max_new_tokens": 32},
                        "answer": {"model": model(a.answer), "max_new_tokens": 32}},
        "deployments": {"ingress": {"num_cpus": 0.1}, "persona": small, "answer": small, "baseline": small,
                        "persona_batching": {"max_batch_size": 4}, "answer_batching": {"max_batch_size": 4}},
        "store": {"kind": "memory"},
        "auth": {"api_key": KEY},
        "page": {"num_pairs": a.pairs, "unpersonalized_model": model(a.base),
                 "pairs": {"world": {"run_config": str(run)}}},
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=4, include_dashboard=False)
    profile = tempfile.mkdtemp(prefix="fspo-shots-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = _find(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    browser = webdriver.Chrome(service=Service(_find(DRIVER)), options=opts)
    try:
        with running_app(args, "fspo-shots") as url:
            os.environ.pop("FSPO_SCREENSHOTS", None)
            open_page(browser, url, KEY)
            browser.save_screenshot(str(out / "page_elicitation.png"))
            for i in range(a.pairs):
                by_id(browser, "choose-a" if i % 2 == 0 else "choose-b").click()
                wait(browser, lambda d, n=i + 1: answered(d) == n, timeout=120)
                wait(browser, lambda d, n=i + 1: persona_settled(d, n), timeout=120)
            browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", by_id(browser, "persona"))
            browser.save_screenshot(str(out / "page_persona.png"))
            browser.find_elements("css selector", "#suggestions button")[0].click()
            by_id(browser, "compare").click()
            by_id(browser, "ask").click()
            for o in ("out-personal", "out-base"):
                wait(browser, lambda d, o=o: by_id(d, o).get_attribute("data-state") == "done", timeout=120)
            browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", by_id(browser, "chat"))
            browser.save_screenshot(str(out / "page_chat.png"))
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)
        ray.shutdown()
    print(f"saved {out}/page_elicitation.png, page_persona.png, page_chat.png")


if __name__ == "__main__":
    main()
