"""A feedback prompt from a real browser back to it: Chromium -> SDK -> collector -> broker ->
worker (detection, cooldown) -> feedback-prompts -> collector -> SDK ``onPrompt``.

The page (``sdk/browser/e2e/prompts.mjs``) shows an answer and regenerates it at once; the
worker makes the prompt from the regenerate (its engagement window is 600 s, so nothing waits
for a window), the collector's reader picks it up, and the SDK hands it to the page, either
with a batch answer or from the ``GET /v1/prompts`` it makes after an acknowledged batch.
Skips without Chromium, Node or the SDK's build (fails under ``CI=true``), like the other
browser tests.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

from tests.e2e.test_browser_to_helicone import (  # noqa: F401 (a fixture)
    SDK,
    browser_available,
    browser_test,
    page,
)
from tests.fixtures.collector import WRITE_KEY, CollectorFactory
from tests.fixtures.worker import TestTopics, WorkerProcess
from worker.devtools.broker import free_port
from worker.prompts import prompt_id_for


@browser_test
async def test_a_regenerated_answer_comes_back_to_the_page_as_one_prompt(
    collector_factory: CollectorFactory,
    worker_factory: Callable[..., WorkerProcess],
    topics: TestTopics,
) -> None:
    page_port = free_port()
    request_id = str(uuid.uuid4())
    prompts_topic = f"feedback-prompts-{topics.suffix}"
    worker = worker_factory(
        TOPIC_PROMPTS=prompts_topic, PROMPTS_ENABLED="true", ENGAGEMENT_WINDOW_S="600",
        IDLE_CLOSE_S="600",
    )
    async with collector_factory(
        topic_ui_events=topics.ui_events, topic_invalid=topics.invalid, topic_partitions=4,
        topic_prompts=prompts_topic, prompts_enabled=True,
        collector_allowed_origins=page(page_port),
    ) as (running, _):
        await asyncio.to_thread(worker.wait_ready)
        browser = await asyncio.create_subprocess_exec(
            "node", str(SDK / "e2e" / "prompts.mjs"), "--endpoint", running.url,
            "--write-key", WRITE_KEY, "--request-id", request_id, "--user-id", "e2e-user",
            "--page-port", str(page_port), "--timeout-ms", "30000",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(browser.communicate(), timeout=60)
        box = running.collector.prompts
        collector_saw = {  # for the failure message
            "feed reading": running.feed is not None and running.feed.assigned.is_set(),
            "prompts held": len(box) if box is not None else None,
        }
    report = json.loads(out or b"{}")
    assert browser.returncode == 0, (
        report,
        err.decode()[-2000:],
        {"prompts written": worker.metric_sum("feedback_prompts_total"), **collector_saw},
        worker.logs()[-2000:],
    )
    assert report["errors"] == [] and report["pending"] == [], report
    [prompt] = report["prompts"]  # once, though the collector offers it until it expires
    assert prompt["request_id"] == request_id
    assert prompt["prompt_id"] == prompt_id_for(request_id)
    assert (prompt["reason"], prompt["user_id"]) == ("regenerated", "e2e-user")
