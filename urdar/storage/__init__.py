"""Object storage: the Bucket protocol (bucket.py), its backends and decorators. See bucket.py."""
from urdar.storage.bucket import (  # noqa: F401
    AccessDenied, Attributes, Bucket, BucketError, BucketHTTPError, BucketUnavailable, InvalidName,
    NotFound)
from urdar.storage.factory import bucket_from_config  # noqa: F401

__all__ = ["AccessDenied", "Attributes", "Bucket", "BucketError", "BucketHTTPError",
           "BucketUnavailable", "InvalidName", "NotFound", "bucket_from_config"]
