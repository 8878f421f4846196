"""botocore's exceptions as fibackup's errors: one line naming the problem and the fix."""
from __future__ import annotations

import errno
import os
from typing import Any, Callable, Literal, Optional

from fibackup.errors import CorruptStoreError, StoreUnavailableError

ACCESS_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403",
                "InvalidToken", "ExpiredToken", "AllAccessDisabled"}


class Errors:
    """A context that turns botocore's exceptions into one-line fibackup errors (a 404 on
    ``missing`` into FileNotFoundError); ``endpoint`` names the service in messages."""

    def __init__(self, bucket: str, endpoint: Callable[[], str], what: str,
                 missing: Optional[str]) -> None:
        self.bucket = bucket
        self.endpoint = endpoint
        self.what = what
        self.missing = missing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Optional[BaseException],
                 _trace: Any) -> Literal[False]:
        from_client = type(error).__module__.startswith(("botocore", "boto3", "urllib3"))
        if error is None or not from_client or isinstance(error, (StoreUnavailableError,
                                                                  CorruptStoreError)):
            return False            # botocore's timeouts are OSErrors too: translated below
        raise translate(error, self.bucket, self.endpoint(), self.what, self.missing) from None


def error_code(error: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("" for other exceptions)."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def translate(error: BaseException, bucket: str, endpoint: str, what: str,
              missing: Optional[str] = None) -> Exception:
    """The fibackup error for a botocore exception, naming the problem and the fix."""
    import botocore.exceptions as bx
    code = error_code(error)
    if isinstance(error, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return StoreUnavailableError(
            f"no S3 credentials for s3://{bucket}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or a profile (AWS_PROFILE or [s3] profile in the "
            "configuration file)")
    if isinstance(error, (bx.EndpointConnectionError, bx.ConnectTimeoutError,
                          bx.ConnectionClosedError, bx.ReadTimeoutError,
                          bx.ConnectionError)):
        return StoreUnavailableError(
            f"cannot reach the S3 endpoint {endpoint} while {what} ({error}); check "
            "AWS_ENDPOINT_URL or [s3] endpoint_url and that the service runs, then run again")
    if code in ACCESS_CODES:
        return StoreUnavailableError(
            f"access denied by {endpoint} while {what} ({code}); check the S3 credentials "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, the profile) and the bucket's policy")
    if code == "NoSuchBucket" or (code in ("404", "NotFound") and missing is None):
        return StoreUnavailableError(
            f"the bucket '{bucket}' does not exist at {endpoint}; create it (e.g. 'aws s3 mb "
            f"s3://{bucket}') or fix the name given with -b")
    if code in ("404", "NoSuchKey", "NotFound") and missing is not None:
        return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), missing)
    if code == "InvalidRange":
        return CorruptStoreError(f"{missing or what}: the object is shorter than expected")
    message = ""
    if isinstance(getattr(error, "response", None), dict):
        message = str(error.response.get("Error", {}).get("Message") or "")  # type: ignore
    return StoreUnavailableError(f"S3 error while {what}: {code or type(error).__name__} "
                                 f"{message or error}".rstrip())

