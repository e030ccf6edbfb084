"""Webhook alerts: Slack-compatible `{"text": ...}` POSTs on a run's end (crashed, failed, completed) and when
a metric rule fires (`acc_mean < 0.3 after cycle 2`). Sent from a background thread with retries, so a
receiver that is slow or down never holds up the API or training.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterable, Sequence

import httpx

from contract.spec import AlertRule, AlertsSpec
from integrations.trackers import Point

log = logging.getLogger("copd.integrations")
RETRY_S = (0.5, 2.0, 5.0)  # waits between the tries of one alert (4 tries in all)


class Webhooks:
    """A queue of alerts and the thread that POSTs them; `report(level, message)` hears about failures."""

    def __init__(self, report: Callable[[str, str], None] = lambda level, message: None,
                 retry_s: Sequence[float] = RETRY_S, timeout_s: float = 5.0):
        self.report, self.retry_s, self.timeout_s = report, tuple(retry_s), timeout_s
        self._q: queue.Queue[tuple[tuple[str, ...], str, Callable[[str, str], None]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="copd-alerts", daemon=True)
        self._thread.start()

    def send(self, urls: Iterable[str], text: str, report: Callable[[str, str], None] | None = None) -> None:
        """Queue one alert to every URL; `report` (default the constructor's) hears when one is not delivered."""
        urls = tuple(dict.fromkeys(urls))
        if urls:
            self._q.put((urls, text, report or self.report))

    def _loop(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            while (item := self._q.get()) is not None:
                urls, text, report = item
                for url in urls:
                    self._post(client, url, text, report)
                self._q.task_done()
            self._q.task_done()

    def _post(self, client: httpx.Client, url: str, text: str, report: Callable[[str, str], None]) -> bool:
        why = ""
        for attempt in range(len(self.retry_s) + 1):
            try:
                r = client.post(url, json={"text": text})
                if r.status_code < 300:
                    return True
                why = f"HTTP {r.status_code}"
                if r.status_code < 500 and r.status_code != 429:
                    break  # the receiver refuses it: trying again will not help
            except httpx.HTTPError as err:
                why = f"{type(err).__name__}: {err}"
            if attempt < len(self.retry_s):
                time.sleep(self.retry_s[attempt])
        host = httpx.URL(url).host
        report("warning", f"alert to {host} not delivered ({' '.join(why.split())[:200]}) after "
                               f"{attempt + 1} tries: {text[:200]}")
        return False

    def drain(self, timeout_s: float = 30.0) -> None:
        """Wait until the queued alerts are sent (or given up)."""
        deadline = time.time() + timeout_s
        while self._q.unfinished_tasks and time.time() < deadline:
            time.sleep(0.05)

    def close(self, timeout_s: float = 30.0) -> None:
        self.drain(timeout_s)
        self._q.put(None)
        self._thread.join(timeout=1.0)


class RunAlerts:
    """What one run alerts on, and which rules have fired already (each rule fires once per expert)."""

    def __init__(self, title: str, link: str, alerts: AlertsSpec):
        self.title, self.link, self.alerts = title, link, alerts
        self.fired: set[tuple[str, str | None]] = set()

    @property
    def urls(self) -> list[str]:
        return self.alerts.webhooks

    def on_points(self, points: Iterable[Point]) -> list[str]:
        """Alert texts of the rules these points break (first time only)."""
        out = []
        for p in points:
            for rule in self.alerts.rules:
                tag = (str(rule), p.expert)
                if tag not in self.fired and rule.fires(p.expert, p.key, p.cycle, p.value):
                    self.fired.add(tag)
                    who = p.expert or "run"
                    out.append(f":warning: {self.title}: {who} {p.key} = {p.value:.4g} at cycle {p.cycle} step "
                               f"{p.step} (rule {rule}) — {self.link}")
        return out

    def on_status(self, status: str, why: str = "") -> str | None:
        """The alert text of a run that became `status`, or None when that status does not alert."""
        if status not in self.alerts.on:
            return None
        icon = {"completed": ":white_check_mark:", "failed": ":x:", "crashed": ":rotating_light:"}.get(status, "")
        return f"{icon} {self.title} {status}" + (f": {why}" if why else "") + f" — {self.link}"


def merged_alerts(spec_alerts: AlertsSpec, webhooks: str | None, on: str, rules: str | None) -> AlertsSpec:
    """The run's alerts plus the deployment's (COPD_ALERT_WEBHOOKS / _ON / _RULES): webhooks, statuses and
    rules of both (the run's `on` applies to its own webhooks and the deployment's to its; both are unioned
    here, which is what a lab wants: nobody misses a crash)."""
    hooks = [u.strip() for u in (webhooks or "").split(",") if u.strip()]
    statuses = [s.strip() for s in on.split(",") if s.strip()] if hooks else []
    extra = [AlertRule.model_validate(r.strip()) for r in (rules or "").split(";") if r.strip()] if hooks else []
    return AlertsSpec(webhooks=list(dict.fromkeys([*spec_alerts.webhooks, *hooks])),
                      on=list(dict.fromkeys([*(spec_alerts.on if spec_alerts.webhooks else []), *statuses])),
                      rules=[*spec_alerts.rules, *[r for r in extra if str(r) not in {str(x) for x in spec_alerts.rules}]])
