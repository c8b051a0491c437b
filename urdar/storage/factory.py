"""Build the blocks bucket from configuration, with Mimir's option names.

`bucket_from_config(cfg, reactor=..., offload=...)` reads -blocks-storage.backend (filesystem, the
default, or s3), -blocks-storage.filesystem.dir, -blocks-storage.s3.{endpoint, bucket-name,
region, access-key-id, secret-access-key, insecure, bucket-lookup-type} and
-blocks-storage.storage-prefix, falling back to -common.storage.* as Mimir does. `cfg` may be a
flat dict keyed by flag names ("blocks-storage.s3.endpoint") or YAML paths
("blocks_storage.s3.endpoint"), a nested YAML-shaped dict, or urdar.app.config.Config. S3 buckets
come wrapped in RetryingBucket (network failures are expected there); the config helper registers
the flags."""
from collections.abc import Mapping

from urdar.storage.bucket import BucketConfigError

BACKENDS = ("filesystem", "s3")


def _flatten(cfg, prefix="", out=None):
    out = {} if out is None else out
    for key, value in cfg.items():
        path = prefix + str(key).lstrip("-").replace("-", "_")
        if isinstance(value, Mapping):
            _flatten(value, path + ".", out)
        else:
            out[path] = value
    return out


def _truthy(value, flag):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no", ""):
        return value.lower() in ("true", "1", "yes")
    raise BucketConfigError("-%s must be true or false, got %r" % (flag, value))


def bucket_from_config(cfg, reactor=None, offload=None, pool="bucket", section="blocks_storage",
                       clock=None):
    """The Bucket that `cfg`'s `section` (blocks_storage; ruler_storage etc. have the same shape)
    describes. File I/O and S3 hashing/parsing go to `offload`'s pool `pool` when given. S3 needs
    `reactor`; its retries wait on `clock` (default: the reactor)."""
    values = cfg if isinstance(cfg, Mapping) else cfg.values   # urdar.app.config.Config
    flat = _flatten(values)
    sec = section.replace("-", "_")
    flag_sec = sec.replace("_", "-")

    def get(key, default=None):
        for path in (sec + "." + key, "common.storage." + key):
            value = flat.get(path)
            if value not in (None, ""):
                return value
        return default

    backend = get("backend", "filesystem")
    if backend == "filesystem":
        from urdar.storage.filesystem import FilesystemBucket
        bucket = FilesystemBucket(get("filesystem.dir", "blocks"), reactor=reactor,
                                  offload=offload, pool=pool)
    elif backend == "s3":
        if reactor is None:
            raise BucketConfigError("the s3 backend needs a reactor")
        from urdar.storage.retrying import RetryingBucket
        from urdar.storage.s3 import S3Bucket
        region = get("s3.region", "us-east-1")
        endpoint = get("s3.endpoint") or "s3.%s.amazonaws.com" % (region,)
        bucket = S3Bucket(
            reactor, endpoint, get("s3.bucket_name", ""), region=region,
            access_key_id=get("s3.access_key_id", ""),
            secret_access_key=get("s3.secret_access_key", ""),
            insecure=_truthy(get("s3.insecure", False), flag_sec + ".s3.insecure"),
            bucket_lookup_type=get("s3.bucket_lookup_type", "auto"),
            offload=offload, pool=pool)
        bucket = RetryingBucket(bucket, clock if clock is not None else reactor,
                                max_attempts=int(get("s3.max_retries", 10)))
    else:
        raise BucketConfigError("-%s.backend: unsupported backend %r (supported: %s)"
                                % (flag_sec, backend, ", ".join(BACKENDS)))
    storage_prefix = get("storage_prefix")
    if storage_prefix:
        from urdar.storage.prefixed import PrefixedBucket
        bucket = PrefixedBucket(bucket, storage_prefix)
    return bucket
