"""bucket_from_config: Mimir's -blocks-storage.* options pick and configure the backend."""
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from urdar.app.config import Config
from urdar.storage import bucket_from_config
from urdar.storage.bucket import BucketConfigError
from urdar.storage.filesystem import FilesystemBucket
from urdar.storage.prefixed import PrefixedBucket
from urdar.storage.retrying import RetryingBucket
from urdar.storage.s3 import S3Bucket


class BucketFromConfigTests(SynchronousTestCase):
    def test_filesystem_is_the_default(self):
        """With no backend set the bucket is the filesystem one under ./blocks, as in Mimir."""
        b = bucket_from_config({})
        self.assertIsInstance(b, FilesystemBucket)
        self.assertTrue(b.root.endswith("/blocks"))

    def test_flag_yaml_and_nested_spellings(self):
        """Flag names, dotted YAML paths and nested YAML all set -blocks-storage.filesystem.dir."""
        for cfg in ({"-blocks-storage.filesystem.dir": "/data/a"},
                    {"blocks_storage.filesystem.dir": "/data/a"},
                    {"blocks_storage": {"backend": "filesystem", "filesystem": {"dir": "/data/a"}}}):
            self.assertEqual(bucket_from_config(cfg).root, "/data/a")

    def test_config_object_is_accepted(self):
        """urdar.app.config.Config (values by YAML path) works as the configuration."""
        cfg = Config()
        cfg.values["blocks_storage.filesystem.dir"] = "/data/b"
        self.assertEqual(bucket_from_config(cfg).root, "/data/b")

    def test_common_storage_is_the_fallback(self):
        """-common.storage.* applies where -blocks-storage.* is not set."""
        b = bucket_from_config({"common.storage.backend": "filesystem",
                                "common.storage.filesystem.dir": "/data/common"})
        self.assertEqual(b.root, "/data/common")

    def test_s3_options(self):
        """The s3 backend reads endpoint, bucket, region, keys, insecure and lookup type."""
        b = bucket_from_config({
            "blocks-storage.backend": "s3", "blocks-storage.s3.endpoint": "minio:9000",
            "blocks-storage.s3.bucket-name": "blocks", "blocks-storage.s3.region": "eu-west-1",
            "blocks-storage.s3.access-key-id": "AK", "blocks-storage.s3.secret-access-key": "SK",
            "blocks-storage.s3.insecure": True}, reactor=MemoryReactorClock())
        self.assertIsInstance(b, RetryingBucket)
        self.assertIsInstance(b.inner, S3Bucket)
        self.assertEqual(repr(b.inner), "S3Bucket('http://minio:9000/blocks/')")
        aws = bucket_from_config({"blocks_storage": {"backend": "s3", "s3": {
            "bucket_name": "blk", "region": "eu-west-1"}}}, reactor=MemoryReactorClock())
        self.assertEqual(repr(aws.inner), "S3Bucket('https://blk.s3.eu-west-1.amazonaws.com/')")

    def test_storage_prefix_wraps_the_bucket(self):
        """-blocks-storage.storage-prefix puts every object under that prefix."""
        b = bucket_from_config({"blocks-storage.storage-prefix": "mimir",
                                "blocks-storage.filesystem.dir": "/d"})
        self.assertIsInstance(b, PrefixedBucket)
        self.assertEqual(b.prefix, "mimir")

    def test_bad_configurations_name_the_flag(self):
        """Unknown backends and unusable S3 settings fail with the flag in the message."""
        cases = [
            ({"blocks-storage.backend": "gcs"}, "-blocks-storage.backend"),
            ({"blocks-storage.backend": "s3", "blocks-storage.s3.endpoint": "http://x:9000",
              "blocks-storage.s3.bucket-name": "b"}, "-blocks-storage.s3.endpoint"),
            ({"blocks-storage.backend": "s3", "blocks-storage.s3.endpoint": "x:9000"},
             "-blocks-storage.s3.bucket-name"),
            ({"blocks-storage.backend": "s3", "blocks-storage.s3.endpoint": "x:9000",
              "blocks-storage.s3.bucket-name": "b", "blocks-storage.s3.insecure": "maybe"},
             "-blocks-storage.s3.insecure"),
        ]
        for cfg, flag in cases:
            with self.assertRaises(BucketConfigError) as cm:
                bucket_from_config(cfg, reactor=MemoryReactorClock())
            self.assertIn(flag, str(cm.exception))
