"""Long-term storage end to end: a running `python -m urdar` ships its blocks to object storage and,
restarted with an EMPTY local TSDB directory, answers the same queries from the store-gateway.

Once over the filesystem backend and once over S3 (the moto server of tests/support/s3server.py,
signatures checked). The head only takes recent samples, so instead of pushing old data the test
pushes 50 minutes, flushes (/ingester/flush?wait=true cuts the head and ships before answering),
stops urdar and starts a new one on a fresh tsdb dir with -querier.query-store-after=0s so the
store-gateway is asked about every range."""
import json
import os
import shutil
import tempfile
import time
import unittest
import urllib.parse

from tests.integration.test_query_api import get_json, make_data, push
from tests.support.s3server import MotoS3Server, moto_available
from tests.support.services import Urdar, http

QUERIES = ["req_total", "sum by (job) (rate(req_total[5m]))", "max_over_time(temp[10m])",
           "histogram_quantile(0.9, sum by (le) (rate(lat_bucket[5m])))", "count(temp > 10)"]
TENANT = "team-lts"


class _LongTermStorage:
    def backend_flags(self):
        raise NotImplementedError

    def bucket_objects(self):
        raise NotImplementedError

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="urdar-lts-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.procs = []

    def start(self, name):
        work = os.path.join(self.tmp, name)
        os.makedirs(work)
        u = Urdar(work, *self.backend_flags(), "-querier.query-store-after=0s",
                  "-blocks-storage.bucket-store.sync-dir=" + os.path.join(work, "sync"),
                  "-auth.multitenancy-enabled=true")
        self.procs.append(u)
        self.addCleanup(self.stop, u)
        try:
            return u.wait_ready()
        except AssertionError:
            raise AssertionError(u.output())

    def stop(self, u):
        if u.alive():
            u.stop()

    def answers(self, u, end_ms):
        out = {}
        start_s, end_s = (end_ms - 45 * 60_000) / 1000.0, end_ms / 1000.0
        for q in QUERIES:
            qs = urllib.parse.urlencode({"query": q, "start": start_s, "end": end_s, "step": "60"})
            status, body = get_json(u.base + "/prometheus/api/v1/query_range?" + qs, TENANT)
            self.assertEqual(status, 200, (q, body, u.output()))
            out["range " + q] = sorted(body["data"]["result"], key=lambda r: json.dumps(r["metric"], sort_keys=True))
            qs = urllib.parse.urlencode({"query": q, "time": end_s - 120})
            status, body = get_json(u.base + "/prometheus/api/v1/query?" + qs, TENANT)
            self.assertEqual(status, 200, (q, body))
            out["instant " + q] = sorted(body["data"]["result"], key=lambda r: json.dumps(r["metric"], sort_keys=True))
        qs = urllib.parse.urlencode({"match[]": "req_total", "start": start_s, "end": end_s})
        out["series"] = get_json(u.base + "/prometheus/api/v1/series?" + qs, TENANT)[1]["data"]
        out["labels"] = get_json(u.base + "/prometheus/api/v1/labels", TENANT)[1]["data"]
        out["job values"] = get_json(u.base + "/prometheus/api/v1/label/job/values", TENANT)[1]["data"]
        return out

    def test_restarted_urdar_serves_the_same_data_from_object_storage(self):
        """After flush-and-ship and a restart on an empty tsdb dir every query answers as before."""
        now_ms = int(time.time() * 1000)
        first = self.start("first")
        push(first.base + "/api/v1/push", make_data(now_ms), tenant=TENANT)
        before = self.answers(first, now_ms)
        self.assertTrue(before["range req_total"])
        status, body = http("POST", first.base + "/ingester/flush?wait=true", b"")
        self.assertEqual(status, 204, body)
        objects = self.bucket_objects()
        metas = [o for o in objects if o.startswith(TENANT + "/") and o.endswith("/meta.json")]
        self.assertTrue(metas, objects)
        ulid = metas[0].split("/")[1]
        for rel in ("index", "chunks/000001"):
            self.assertIn("%s/%s/%s" % (TENANT, ulid, rel), objects)
        first.stop()

        second = self.start("second")
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "second", "tsdb", TENANT)))
        after = self.answers(second, now_ms)
        for key in before:
            self.assertEqual(after[key], before[key], (key, second.output()[-3000:]))
        status, page = http("GET", second.base + "/store-gateway/tenants")
        self.assertEqual(status, 200)
        self.assertIn(TENANT.encode(), page)
        status, page = http("GET", second.base + "/store-gateway/tenant/%s/blocks" % TENANT)
        self.assertEqual(status, 200)
        self.assertIn(ulid.encode(), page)
        # No data came from the (empty) ingester.
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "second", "tsdb", TENANT)))


class FilesystemLongTermStorageTests(_LongTermStorage, unittest.TestCase):
    def backend_flags(self):
        self.bucket_dir = os.path.join(self.tmp, "bucket")
        return ["-blocks-storage.backend=filesystem", "-blocks-storage.filesystem.dir=" + self.bucket_dir]

    def bucket_objects(self):
        out = []
        for dirpath, _dirs, files in os.walk(self.bucket_dir):
            rel = os.path.relpath(dirpath, self.bucket_dir)
            if rel.startswith(".urdar-tmp"):
                continue
            out.extend((f if rel == "." else rel + "/" + f) for f in files)
        return sorted(out)


@unittest.skipUnless(moto_available(), "moto[server] and boto3 are not installed")
class S3LongTermStorageTests(_LongTermStorage, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s3 = MotoS3Server().start()

    @classmethod
    def tearDownClass(cls):
        cls.s3.stop()

    def backend_flags(self):
        if not hasattr(self, "bucket"):
            self.bucket = self.s3.new_bucket()
        return ["-blocks-storage.backend=s3", "-blocks-storage.s3.endpoint=" + self.s3.endpoint,
                "-blocks-storage.s3.bucket-name=" + self.bucket, "-blocks-storage.s3.insecure=true",
                "-blocks-storage.s3.access-key-id=" + self.s3.access_key_id,
                "-blocks-storage.s3.secret-access-key=" + self.s3.secret_access_key]

    def bucket_objects(self):
        client = self.s3.s3_client()
        out = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            out.extend(o["Key"] for o in page.get("Contents", ()))
        return sorted(out)
