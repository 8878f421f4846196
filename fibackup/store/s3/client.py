"""The boto3 client of an S3 store: endpoint, credentials and retries.

Endpoint and credentials: the configuration file's ``[s3]`` keys when set, else
boto3's own chain (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws/``...).  Transient errors
are retried with backoff (botocore's standard mode).  boto3 is imported only
when a client is made: a directory store never needs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from fibackup.errors import StoreUnavailableError
from fibackup.store.s3.download import READERS
from fibackup.store.s3.upload import PARALLEL

INSTALL_HINT = "pip install 'fibackup[s3]' (in a source tree: .venv/bin/pip install '.[s3]')"


@dataclass(frozen=True)
class Settings:
    endpoint_url: Optional[str] = None
    profile: Optional[str] = None
    region: Optional[str] = None


def settings_from_config() -> Settings:
    from fibackup.config import load_config
    config = load_config()
    return Settings(endpoint_url=config.value("s3.endpoint_url"),
                    profile=config.value("s3.profile"), region=config.value("s3.region"))


def make_client(settings: Settings) -> Any:
    """A boto3 S3 client: short connect timeout, retries with backoff, and checksums
    only where the API requires them (Ceph 16's RGW rejects boto3's CRC32 defaults)."""
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:
        raise StoreUnavailableError(f"s3:// backup locations need boto3, which is not "
                                    f"installed: {INSTALL_HINT}") from None
    options: dict[str, Any] = dict(connect_timeout=5, read_timeout=60,
                                   retries={"max_attempts": 5, "mode": "standard"},
                                   max_pool_connections=4 * (PARALLEL + READERS))
    try:
        config = botocore.config.Config(request_checksum_calculation="when_required",
                                        response_checksum_validation="when_required",
                                        **options)
    except TypeError:                       # botocore before 1.36 has neither setting
        config = botocore.config.Config(**options)
    try:
        session = boto3.session.Session(profile_name=settings.profile)
        return session.client("s3", endpoint_url=settings.endpoint_url,
                              region_name=settings.region, config=config)
    except botocore.exceptions.ProfileNotFound:
        raise StoreUnavailableError(f"the AWS profile '{settings.profile}' does not exist; "
                                    "fix [s3] profile or AWS_PROFILE") from None
    except (botocore.exceptions.BotoCoreError, ValueError) as error:
        raise StoreUnavailableError(f"cannot set up the S3 client ({error}); check "
                                    "AWS_ENDPOINT_URL or [s3] endpoint_url") from None

