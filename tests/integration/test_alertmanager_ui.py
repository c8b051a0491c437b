"""The tenant's Alertmanager web UI (/alertmanager) in headless Chromium (Debian's `chromium`)
against a real urdar (`-target=alertmanager`, multitenancy on; the browser adds X-Scope-OrgID to
every request as a proxy in front of urdar would): the page lists a firing alert in its group with
its labels and annotations, shown as text even when they look like markup; a silence typed into
the form (regex and negative matchers, a duration) mutes the alert in the UI and in API v2; the
silence's Expire button ends it. Screenshots go to a temporary directory printed by the test."""
import datetime
import json
import os
import shutil
import tempfile
import unittest

import yaml

from tests.support.chromium import CHROMIUM, Chromium
from tests.support.services import Urdar, http

TENANT = "ui-tenant"
CONFIG = """
route:
  receiver: team-x
  group_by: [alertname, cluster]
  group_wait: 0s
receivers:
  - name: team-x
"""
# Markup in a label value and an annotation must reach the screen as characters.
EVIL = "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">"


def rfc3339(delta_s):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=delta_s)
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def js(value):
    return json.dumps(value)


@unittest.skipIf(CHROMIUM is None, "chromium is not installed (Debian package `chromium`; "
                 "`make test` installs it)")
class AlertmanagerUITests(unittest.TestCase):
    def setUp(self):
        self.out = tempfile.mkdtemp(prefix="urdar-amui-")
        # The screenshots and logs stay; urdar's data directories go.
        self.addCleanup(lambda: [shutil.rmtree(os.path.join(self.out, d), True)
                                 for d in os.listdir(self.out)
                                 if os.path.isdir(os.path.join(self.out, d))])
        print("\nalertmanager UI test output (logs, screenshots): %s" % self.out)
        self.urdar = Urdar(self.out, "-target=alertmanager", "-auth.multitenancy-enabled=true")
        self.addCleanup(self.urdar.stop)
        self.urdar.wait_ready()
        self.api = self.urdar.base + "/alertmanager/api/v2"

    def call(self, method, url, body=None, tenant=TENANT):
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        code, text = http(method, url, data, {"X-Scope-OrgID": tenant,
                                              "Content-Type": "application/json"})
        return code, text

    def test_alerts_silence_form_and_expire(self):
        # A tenant without a configuration: Mimir's 404, no page.
        code, text = self.call("GET", self.urdar.base + "/alertmanager/", tenant="nobody")
        self.assertEqual((code, text), (404, b"the Alertmanager is not configured\n"))
        body = yaml.safe_dump({"alertmanager_config": CONFIG}).encode()
        self.assertEqual(self.call("POST", self.urdar.base + "/api/v1/alerts", body)[0], 201)
        alert = {"labels": {"alertname": "DiskFull", "cluster": "eu-1", "instance": "db-1",
                            "payload": EVIL},
                 "annotations": {"summary": "<b>disk</b> at 97%"},
                 "startsAt": rfc3339(-60), "endsAt": rfc3339(3600)}
        other = {"labels": {"alertname": "Latency", "cluster": "eu-1", "instance": "web-1"},
                 "startsAt": rfc3339(-60), "endsAt": rfc3339(3600)}
        self.assertEqual(self.call("POST", self.api + "/alerts", [alert, other]), (200, b""))

        browser = Chromium()
        self.addCleanup(browser.close)
        browser.navigate(self.urdar.base + "/alertmanager", headers={"X-Scope-OrgID": TENANT})
        self.assertIn(TENANT, browser.evaluate("document.querySelector('.tenant').textContent"))
        browser.wait_for("document.querySelectorAll('li.alert').length === 2", "two alerts listed")

        # Two groups (group_by alertname, cluster), each under the receiver, labels as text.
        groups = browser.evaluate("""[...document.querySelectorAll('article.group')].map(g => ({
            head: g.querySelector('.group-head').textContent,
            alerts: [...g.querySelectorAll('li.alert')].map(a => ({
              state: a.dataset.state,
              labels: [...a.querySelectorAll('.label')].map(l => l.textContent),
              annotations: [...a.querySelectorAll('dl.annotations dt, dl.annotations dd')]
                .map(x => x.textContent)}))}))""")
        self.assertEqual(len(groups), 2, groups)
        disk = groups[0]
        self.assertIn("receiver: team-x", disk["head"])
        self.assertIn('alertname="DiskFull"', disk["head"])
        self.assertIn('cluster="eu-1"', disk["head"])
        self.assertEqual(disk["alerts"], [{
            "state": "active",
            "labels": ['alertname="DiskFull"', 'cluster="eu-1"', 'instance="db-1"',
                       "payload=" + json.dumps(EVIL)],
            "annotations": ["summary", "<b>disk</b> at 97%"]}])
        self.assertIn('alertname="Latency"', groups[1]["head"])
        # Nothing from the label values became an element or ran.
        self.assertEqual(browser.evaluate(
            "document.querySelectorAll('main script, main img, main b:not(.tenant b)').length"), 0)
        self.assertIsNone(browser.evaluate("window.__pwned === undefined ? null : window.__pwned"))
        browser.screenshot(os.path.join(self.out, "1-firing.png"))

        # The silence form: three matchers (regex, equal, negative regex), a duration, who, why.
        browser.evaluate("""(() => {
            document.getElementById('add-matcher').click();
            document.getElementById('add-matcher').click();
            const rows = document.querySelectorAll('#matchers .matcher-row');
            const put = (input, v) => { input.value = v;
                                        input.dispatchEvent(new Event('input', {bubbles: true})); };
            const fill = (row, name, op, value) => {
              put(row.querySelector('.m-name'), name);
              row.querySelector('.m-op').value = op;
              put(row.querySelector('.m-value'), value);
            };
            fill(rows[0], 'alertname', '=~', 'Disk.*');
            fill(rows[1], 'cluster', '=', 'eu-1');
            fill(rows[2], 'instance', '!~', 'web-.*');
            put(document.getElementById('duration'), '1h30m');
            put(document.getElementById('createdBy'), 'oncall@example.com');
            put(document.getElementById('comment'), 'disk swap <i>in progress</i>');
          })()""")
        start, end = browser.evaluate(
            "[document.getElementById('startsAt').value, document.getElementById('endsAt').value]")
        start_t = datetime.datetime.fromisoformat(start.replace("Z", "+00:00"))
        end_t = datetime.datetime.fromisoformat(end.replace("Z", "+00:00"))
        self.assertEqual(end_t - start_t, datetime.timedelta(hours=1, minutes=30))
        # Without a comment the form refuses before anything is sent.
        browser.evaluate("(() => { const c = document.getElementById('comment'); "
                         "const v = c.value; c.value = ''; "
                         "document.getElementById('create-silence').click(); c.value = v; })()")
        self.assertEqual(browser.evaluate(
            "[document.getElementById('form-result').className,"
            " document.getElementById('form-result').textContent]"),
            ["error", "a comment is required"])
        # A regex the API refuses: its 400 and reason shown on the form.
        browser.evaluate("(() => { const v = document.querySelector('#matchers .m-value'); "
                         "v.value = '(Disk'; document.getElementById('create-silence').click(); })()")
        failed = browser.wait_for(
            "document.getElementById('form-result').textContent.startsWith('Creating') && "
            "document.getElementById('form-result').textContent", "the API's refusal on the form")
        self.assertRegex(failed, r"^Creating the silence failed: 400: \S")
        self.assertEqual(json.loads(self.call("GET", self.api + "/silences")[1]), [])
        browser.evaluate("document.querySelector('#matchers .m-value').value = 'Disk.*'")
        browser.evaluate("document.getElementById('create-silence').click()")
        sid = browser.wait_for("document.getElementById('form-result').dataset.silenceId",
                               "the created silence's id")

        # API v2 has it as typed, and the alert it matches is suppressed by it; the other is not.
        code, text = self.call("GET", self.api + "/silence/" + sid)
        self.assertEqual(code, 200, text)
        sil = json.loads(text)
        self.assertEqual(sil["status"], {"state": "active"})
        self.assertEqual(sil["createdBy"], "oncall@example.com")
        self.assertEqual(sil["comment"], "disk swap <i>in progress</i>")
        self.assertEqual(sorted((m["name"], m["value"], m["isRegex"], m["isEqual"])
                                for m in sil["matchers"]),
                         [("alertname", "Disk.*", True, True), ("cluster", "eu-1", False, True),
                          ("instance", "web-.*", True, False)])
        # The end as the form computed it (a start in the past becomes "now", as Alertmanager does).
        self.assertEqual(datetime.datetime.fromisoformat(sil["endsAt"].replace("Z", "+00:00")), end_t)
        states = {a["labels"]["alertname"]: a["status"]
                  for a in json.loads(self.call("GET", self.api + "/alerts")[1])}
        self.assertEqual(states["DiskFull"], {"state": "suppressed", "silencedBy": [sid],
                                              "inhibitedBy": []})
        self.assertEqual(states["Latency"]["state"], "active")

        # The page shows it: the alert suppressed and silenced by that id, the silence active.
        browser.wait_for("""(() => {
            const a = [...document.querySelectorAll('li.alert')]
              .find(a => a.textContent.includes('DiskFull'));
            return a && a.dataset.state === 'suppressed' &&
                   a.querySelector('.muted-by').textContent === 'silenced by ' + %s;
          })()""" % js(sid), "the alert shown as silenced")
        listed = browser.evaluate("""[...document.querySelectorAll('li.silence')].map(s => ({
            id: s.dataset.id, state: s.dataset.state,
            matchers: [...s.querySelectorAll('.matcher')].map(m => m.textContent),
            comment: s.querySelector('.comment').textContent}))""")
        self.assertEqual(listed, [{"id": sid, "state": "active",
                                   "matchers": ['alertname=~"Disk.*"', 'cluster="eu-1"',
                                                'instance!~"web-.*"'],
                                   "comment": "disk swap <i>in progress</i>"}])
        self.assertEqual(browser.evaluate(
            "[...document.querySelectorAll('li.alert')].find(a => a.textContent.includes('Latency'))"
            ".dataset.state"), "active")
        browser.screenshot(os.path.join(self.out, "2-silenced.png"))

        # Expire from the page: API v2 says expired, the alert is active again on the page.
        browser.evaluate("document.querySelector('li.silence[data-id=%s] button.expire').click()"
                         % js(sid))
        browser.wait_for("""[...document.querySelectorAll('li.alert')]
            .find(a => a.textContent.includes('DiskFull')).dataset.state === 'active'""",
                         "the alert active again after the expiry")
        sil = json.loads(self.call("GET", self.api + "/silence/" + sid)[1])
        self.assertEqual(sil["status"], {"state": "expired"})
        states = {a["labels"]["alertname"]: a["status"]["state"]
                  for a in json.loads(self.call("GET", self.api + "/alerts")[1])}
        self.assertEqual(states, {"DiskFull": "active", "Latency": "active"})
        browser.evaluate("document.querySelector('#silence-tabs button[data-state=expired]').click()")
        self.assertEqual(browser.evaluate(
            "[...document.querySelectorAll('li.silence')].map(s => [s.dataset.id, s.dataset.state,"
            " s.querySelectorAll('button.expire').length])"), [[sid, "expired", 0]])
        png = browser.screenshot(os.path.join(self.out, "3-expired.png"))
        with open(png, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        # An alert's Silence button starts the form with its labels as equality matchers.
        browser.evaluate("[...document.querySelectorAll('li.alert')].find(a => "
                         "a.textContent.includes('Latency')).querySelector('.silence-alert').click()")
        self.assertEqual(browser.evaluate(
            "[...document.querySelectorAll('#matchers .matcher-row')].map(r => "
            "[r.querySelector('.m-name').value, r.querySelector('.m-op').value,"
            " r.querySelector('.m-value').value])"),
            [["alertname", "=", "Latency"], ["cluster", "=", "eu-1"], ["instance", "=", "web-1"]])
        # Another tenant's page does not exist (no configuration), nor its silences.
        self.assertEqual(self.call("GET", self.api + "/silences", tenant="other")[0], 404)


if __name__ == "__main__":
    unittest.main()
