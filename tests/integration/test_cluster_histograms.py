"""Native histograms through a cluster: a real etcd, three `-target=ingester` processes, one
`-target=distributor` and one `-target=querier` on 127.0.0.1 with replication factor 3.
prompb.Histogram samples (integer, float with custom buckets, gauge with negative spans; some
series with floats too) pushed to the distributor reach every ingester (each holds all of them:
RF = ring size), come back exactly through the querier's remote read, and an out-of-order
histogram is refused with Mimir's error id as in one process."""
import json
import tempfile
import time
import unittest

import cramjam

from tests.handlers.test_querier import _read_pb2
from tests.integration import test_cluster_replication as CR
from tests.integration.test_native_histogram_ingest import ih, plain, push
from tests.support.etcd import have_etcd
from tests.support.services import http, wait_for
from urdar.components import ingester_remote as R
from urdar.engine.histogram import FloatHistogram, GAUGE_TYPE
from urdar.engine.labels import decode_labels
from urdar.engine.prompbhist import decode_histogram

TENANT = "nh-cluster"


class IngesterCluster(CR.Cluster):
    """Only the ingester ring in etcd: this topology has no store-gateway or compactor."""

    def flags(self):
        e = self.etcd.endpoint
        return ["-ingester.ring.store=etcd", "-ingester.ring.etcd.endpoints=" + e,
                "-ingester.ring.heartbeat-period=1s", "-ingester.ring.heartbeat-timeout=20s",
                "-ingester.ring.replication-factor=3"]


class ClusterHistogramTests(unittest.TestCase):
    def setUp(self):
        if not have_etcd():
            raise unittest.SkipTest("etcd is not installed (Debian package etcd-server)")
        tmp = tempfile.TemporaryDirectory(prefix="urdar-cluster-")
        self.addCleanup(tmp.cleanup)
        self.cluster = IngesterCluster(tmp.name)
        self.addCleanup(self.cluster.stop)
        self.ingester, self.spawn, self.logs = (
            self.cluster.ingester, self.cluster.spawn, self.cluster.logs)

    def remote_read(self, querier, name, maxt):
        pb = _read_pb2()
        req = pb.ReadRequest()
        q = req.queries.add(start_timestamp_ms=0, end_timestamp_ms=maxt)
        q.matchers.add(type=0, name="__name__", value=name)
        status, body = http("POST", querier.base + "/prometheus/api/v1/read",
                            bytes(cramjam.snappy.compress_raw(req.SerializeToString())),
                            {"X-Scope-OrgID": TENANT, "Content-Encoding": "snappy",
                             "Content-Type": "application/x-protobuf"}, timeout=30)
        self.assertEqual(status, 200, body)
        msg = pb.ReadResponse.FromString(bytes(cramjam.snappy.decompress_raw(body)))
        out = {}
        for s in msg.results[0].timeseries:
            job = dict((l.name, l.value) for l in s.labels)["job"]
            out[job] = ([(x.timestamp, x.value) for x in s.samples],
                        [decode_histogram(h.SerializeToString()) for h in s.histograms])
        return out

    def test_histograms_replicated_and_read_back(self):
        ings = [self.ingester("ing-%d" % k) for k in range(3)]
        # the third replica's write finishes after the quorum answered, within this timeout: a
        # loaded machine needs more than 15 s
        dist = self.spawn("dist", "distributor", "-distributor.remote-timeout=60s")
        querier = self.spawn("querier", "querier")
        for u in ings + [dist, querier]:
            u.wait_ready(90)
        all_active = {"ing-0": "ACTIVE", "ing-1": "ACTIVE", "ing-2": "ACTIVE"}
        for u in (dist, querier):
            wait_for(lambda u=u: CR.ring_states(u.base) == all_active, 30,
                     lambda u=u: "3 ACTIVE ingesters on %s: %s" % (u.base, CR.ring_states(u.base)))

        now = int(time.time() * 1000) - 10 * 60 * 1000
        ints = {"a%d" % j: [(now + 15000 * k, ih(k + j)) for k in range(1, 21)] for j in range(4)}
        nhcb = [(now + 15000 * k, FloatHistogram(
            schema=-53, custom_values=[0.25, 1.0, 5.0], count=3.5 * k, sum=1.5 * k,
            positive_spans=[(0, 2), (1, 1)], positive_buckets=[k, 0.5 * k, 2.0 * k]))
            for k in range(1, 21)]
        gauge = [(now + 15000 * k, ih(k % 3, counter_reset_hint=GAUGE_TYPE)) for k in range(1, 21)]
        floats = [(now + 1000 * k, float(k)) for k in range(5)]
        for a in range(0, 20, 5):
            series = [([("__name__", "nh_c"), ("job", job)], [], hs[a:a + 5])
                      for job, hs in ints.items()]
            series.append(([("__name__", "nh_c"), ("job", "nhcb")], [], nhcb[a:a + 5]))
            series.append(([("__name__", "nh_c"), ("job", "gauge")], floats if a == 0 else [],
                           gauge[a:a + 5]))
            series.append(([("__name__", "nh_c"), ("job", "float")],
                           [(now + 15000 * (a + k), 1.0) for k in range(5)], []))
            status, body = push(dist, series, TENANT)
            self.assertEqual(status, 200, body + self.logs().encode())
        want = {job: ([], [plain(h) for _, h in hs]) for job, hs in ints.items()}
        want["nhcb"] = ([], [plain(h) for _, h in nhcb])
        want["gauge"] = (floats, [plain(h) for _, h in gauge])
        times = {job: [t for t, _ in hs] for job, hs in list(ints.items()) +
                 [("nhcb", nhcb), ("gauge", gauge)]}

        got = self.remote_read(querier, "nh_c", now + 10 ** 7)
        self.assertEqual(sorted(got), sorted(list(want) + ["float"]))
        self.assertEqual(got["float"][0], [(now + 15000 * k, 1.0) for k in range(20)])
        for job, (fl, hs) in want.items():
            self.assertEqual(got[job][0], fl, job)
            self.assertEqual([t for t, _ in got[job][1]], times[job], job)
            self.assertEqual([plain(h) for _, h in got[job][1]], hs, job)
        self.assertEqual(got["nhcb"][1][0][1].custom_values, [0.25, 1.0, 5.0])

        # RF 3 of 3 ingesters: every one holds every histogram (the quorum answers at two, the
        # third catches up in the background).
        doc = {"matchers": [["=", "__name__", "nh_c"]], "mint": 0, "maxt": 2 ** 62,
               "step": 0, "func": "", "range_ms": 0, "limit": 0}

        def held(ing):
            status, body = http("POST", ing.base + "/ingester/client/select",
                                data=json.dumps(doc).encode(),
                                headers={"X-Scope-OrgID": TENANT}, timeout=30)
            self.assertEqual(status, 200, body)
            return {dict(decode_labels(s[0]))["job"]: [plain(h) for h in s[5]]
                    for s in R.decode_series(body) if len(s) > 3}
        for ing in ings:
            wait_for(lambda ing=ing: held(ing) == {j: hs for j, (_, hs) in want.items()}, 90,
                     lambda ing=ing: "%s holds every histogram: %r" % (ing.base, held(ing)))

        # A histogram older than the series' last one: Mimir's out-of-order error, as in one
        # process; the older float sample of the same request still lands.
        status, body = push(dist, [([("__name__", "nh_c"), ("job", "a0")], [],
                                    [(now + 15000, ih(7))]),
                                   ([("__name__", "nh_c"), ("job", "late")],
                                    [(now, 2.0)], [])], TENANT)
        self.assertEqual(status, 400, body)
        self.assertIn(b"err-mimir-sample-out-of-order", body)
        self.assertIn(b'job="a0"', body)
        got = self.remote_read(querier, "nh_c", now + 10 ** 7)
        self.assertEqual(got["late"][0], [(now, 2.0)])
        self.assertEqual([plain(h) for _, h in got["a0"][1]], want["a0"][1])


if __name__ == "__main__":
    unittest.main()
