"""A real S3 endpoint for the tests: the single-node Ceph RGW of scripts/setup-s3.sh.

The session fixture ``rgw`` starts it (or reuses one that runs) and exports its
endpoint and keys into ``os.environ``, so every ``lab.cli`` run sees them as
boto3's standard settings; an RGW the session started is stopped at its end.
``s3_bucket`` gives each test its own bucket, emptied and removed afterwards.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = os.path.join(REPO, "scripts", "setup-s3.sh")


def _setup(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", SETUP, *args], capture_output=True, text=True, check=check,
                          timeout=600)


@dataclass
class RGW:
    env: dict[str, str]
    started: bool

    def client(self) -> Any:
        from fibackup.store.s3 import Settings, make_client
        return make_client(Settings(endpoint_url=self.env["AWS_ENDPOINT_URL"]))

    def stop_gateway(self) -> None:
        """Stop radosgw alone (monitor and OSD keep the data): a cut connection."""
        _setup("--stop-rgw")

    def start_gateway(self) -> None:
        _setup("--start-rgw")

    def new_bucket(self) -> str:
        name = f"fibtest-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def remove_bucket(self, name: str) -> None:
        client = self.client()
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=name):
            for upload in page.get("Uploads", ()):
                client.abort_multipart_upload(Bucket=name, Key=upload["Key"],
                                              UploadId=upload["UploadId"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", ()):
                client.delete_object(Bucket=name, Key=item["Key"])
        client.delete_bucket(Bucket=name)


def start() -> RGW:
    started = _setup("--status", check=False).returncode != 0
    completed = _setup()
    env_file = completed.stdout.strip().splitlines()[-1]
    env = {}
    with open(env_file) as handle:
        for line in handle:
            key, _sep, value = line.strip().removeprefix("export ").partition("=")
            if key:
                env[key] = value
    return RGW(env, started)


def stop(rgw: RGW) -> None:
    if rgw.started:
        _setup("--stop", check=False)


@contextlib.contextmanager
def running() -> Iterator[RGW]:
    """The RGW, its settings in ``os.environ`` meanwhile (as boto3's standard settings,
    for this process and every fibackup it runs); stopped afterwards if started here."""
    gateway = start()
    saved = {key: os.environ.get(key) for key in gateway.env}
    os.environ.update(gateway.env)
    try:
        yield gateway
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        stop(gateway)
