"""Pure parts of the S3 store: locations, keys, error messages, configuration keys."""
from __future__ import annotations

import pytest

from fibackup import config
from fibackup.errors import ConfigError, StoreUnavailableError, UsageError
from fibackup.store.s3 import S3Backend, is_url, split_url, translate


def test_locations():
    assert is_url("s3://b") and not is_url("/backup")
    assert split_url("s3://b") == ("b", "")
    assert split_url("s3://b/") == ("b", "")
    assert split_url("s3://b/site//hv1/") == ("b", "site/hv1/")
    for bad in ("s3://", "s3:///x", "s3://b/../x", "s3://b/./x"):
        with pytest.raises(UsageError):
            split_url(bad)


def test_keys_and_paths():
    backend = S3Backend(client=None, bucket="b", prefix="hv1/")
    assert backend.root == "s3://b/hv1"
    assert backend.key(("domains", "u", "layers"), "x.qcow2") == "hv1/domains/u/layers/x.qcow2"
    assert backend.path(("domains",)) == "s3://b/hv1/domains"
    assert S3Backend(client=None, bucket="b", prefix="").root == "s3://b"


def _client_error(code: str):
    from botocore.exceptions import ClientError
    return ClientError({"Error": {"Code": code, "Message": "m"}}, "GetObject")


def test_errors_name_the_problem_and_the_fix():
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError
    denied = translate(_client_error("AccessDenied"), "b", "http://e", "reading x")
    assert isinstance(denied, StoreUnavailableError) and "access denied" in str(denied)
    assert "credentials" in str(translate(_client_error("SignatureDoesNotMatch"), "b", "e", "w"))
    missing_bucket = translate(_client_error("NoSuchBucket"), "b", "http://e", "listing")
    assert "bucket 'b' does not exist" in str(missing_bucket)
    gone = translate(_client_error("404"), "b", "e", "reading", missing="s3://b/k")
    assert isinstance(gone, FileNotFoundError) and gone.filename == "s3://b/k"
    down = translate(EndpointConnectionError(endpoint_url="http://e"), "b", "http://e", "w")
    assert "cannot reach the S3 endpoint http://e" in str(down)
    assert "AWS_ACCESS_KEY_ID" in str(translate(NoCredentialsError(), "b", "e", "w"))
    other = translate(_client_error("SlowDown"), "b", "e", "writing k")
    assert "SlowDown" in str(other) and "\n" not in str(other)


def test_configuration_keys():
    parsed = config.parse("f.toml", b'backup_dir = "s3://backups/hv1"\n[s3]\n'
                                    b'endpoint_url = "http://127.0.0.1:7480"\nprofile = "p"\n')
    assert parsed["backup_dir"].value == "s3://backups/hv1"
    assert parsed["s3.endpoint_url"].value == "http://127.0.0.1:7480"
    with pytest.raises(ConfigError, match="endpoint_url"):
        config.parse("f.toml", b'[s3]\nendpoint_url = "127.0.0.1:7480"\n')
