"""The Temporal Web UI on a finished upgrade, seen through headless Chromium.

A real upgrade of two local hosts runs to the end; then Debian's Chromium opens the
workflow in the Web UI of the dev server and the test waits for what an operator
would read there: the workflow, its summary and details (User Metadata tab), and
every step's summary on the timeline and in the compact event history. The pages
are saved as screenshots in ``$ARBUP_ARTIFACTS`` (default: a temporary directory of
this run); ``make screenshots`` copies them into ``docs/``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Page, async_playwright, expect

from starter.service import start_upgrade
from tests.conftest import OLD, OS_TAG, SVR_PORT, TARGET
from tests.ui.conftest import WRITTEN

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is missing: Debian's chromium package "
        "(scripts/bootstrap.sh installs it)",
    ),
]

# Headless, and quiet: no sync, updates or other background calls to the outside.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 1000}
WAIT_MS = 30_000

HOST_STEPS = [
    ("prepare_service", "Prepare upgrade arbitration service"),
    ("stop_service", "Stop arbitration service"),
    ("install_package", "Install arbitration rpm"),
    ("start_service", "Start arbitration service"),
]


def host_step_labels(hosts) -> list[str]:
    """The timeline's labels, ``activity type • summary``, of every host step on
    every host."""
    return [
        f"{activity} • {step} on {host.ip} ({host.ip}:{SVR_PORT})"
        for host in hosts
        for activity, step in HOST_STEPS
    ]


async def shown(page: Page, text: str, *, exact: bool = True) -> None:
    """Wait until ``text`` is on screen, scrolling down through lists the UI only
    renders near the viewport (the timeline is virtualised)."""
    target = page.get_by_text(text, exact=exact)
    for _ in range(30):
        if await target.count():
            break
        await page.mouse.move(VIEWPORT["width"] // 2, VIEWPORT["height"] // 2)
        await page.mouse.wheel(0, 400)
        await page.wait_for_timeout(200)
    await expect(target.first).to_be_visible(timeout=WAIT_MS)


async def save(page: Page, artifacts: Path, name: str) -> Path:
    path = artifacts / name
    # The pointer rests on the blank middle of the top bar: no hover marks.
    await page.mouse.move(VIEWPORT["width"] // 2, 20)
    await page.screenshot(path=path)
    WRITTEN.append(path)
    print(f"screenshot: {path}")
    return path


async def test_web_ui_shows_the_finished_upgrade(
    client, stack, web_ui, artifacts, tmp_path
):
    started = await start_upgrade(
        client,
        stack.store,
        1,
        TARGET,
        OS_TAG,
        creator="operator",
        options=stack.options,
        task_queue=stack.task_queue,
    )
    handle = client.get_workflow_handle(started.workflow_id)
    result = await handle.result()
    assert result["status"] == "SUCCESSFUL"
    assert all(host.running_version() == TARGET for host in stack.hosts)
    run_id = (await handle.describe()).run_id
    workflow_url = (
        f"{web_ui}/namespaces/default/workflows/{started.workflow_id}/{run_id}"
    )

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )
        # Only the dev server on loopback is for this page; anything else is refused.
        refused: list[str] = []

        async def loopback_only(route):
            if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
                await route.continue_()
            else:
                refused.append(route.request.url)
                await route.abort()

        await context.route("**/*", loopback_only)
        page = await context.new_page()
        try:
            # The workflow, its summary and details, and the details it set last.
            await page.goto(f"{workflow_url}/user-metadata")
            await expect(
                page.get_by_role("heading", name=started.workflow_id)
            ).to_be_visible(timeout=WAIT_MS)
            await expect(page.get_by_text("Completed", exact=True)).to_be_visible(
                timeout=WAIT_MS
            )
            summary = page.frame_locator("#user-metadata-summary")
            await expect(
                summary.get_by_text(
                    f"Upgrade arbitration group 1 to {TARGET} ({OS_TAG}), 2 services"
                )
            ).to_be_visible(timeout=WAIT_MS)
            details = page.frame_locator("#user-metadata-details")
            await expect(details.get_by_text(f"now on {OLD}")).to_be_visible(
                timeout=WAIT_MS
            )
            for host in stack.hosts:
                await expect(
                    details.get_by_text(f"{host.ip}:{SVR_PORT}", exact=True)
                ).to_be_visible(timeout=WAIT_MS)
            current = page.frame_locator("#user-metadata-current-details")
            await expect(current.get_by_text("SUCCESSFUL", exact=True)).to_be_visible(
                timeout=WAIT_MS
            )
            # Each service's phases, all done.
            for host in stack.hosts:
                row = current.get_by_role("listitem").filter(has_text=f"{host.ip}:{SVR_PORT}")
                await expect(row).to_contain_text(
                    "prepare ok · stop ok · install ok · start ok · version ok · status ok",
                    timeout=WAIT_MS,
                )
            await save(page, artifacts, "web-ui-workflow.png")

            # Every step's summary on the timeline.
            await page.goto(f"{workflow_url}/timeline")
            heading = page.get_by_role("heading", name="Timeline", exact=True)
            await expect(heading).to_be_visible(timeout=WAIT_MS)
            await heading.evaluate(
                "h => h.parentElement.parentElement.scrollIntoView({block: 'start'})"
            )
            await shown(page, "finish_task • Record task SUCCESSFUL")
            await save(page, artifacts, "web-ui-timeline.png")
            await shown(
                page,
                "update_group_version • Update arbitration group version (subtask",
                exact=False,
            )
            for label in host_step_labels(stack.hosts):
                await shown(page, label)

            # And in the compact event history: activity type, then its summary.
            await page.goto(f"{workflow_url}/history")
            await page.get_by_role("button", name="Compact").click()
            for host in stack.hosts:
                for _, step in HOST_STEPS:
                    await shown(page, f"{step} on {host.ip} ({host.ip}:{SVR_PORT})")
        except Exception:
            with contextlib.suppress(Exception):
                await save(page, artifacts, "web-ui-failure.png")
            raise
        finally:
            await context.close()
    if refused:
        print("refused requests to outside loopback:", *refused, sep="\n  ")
