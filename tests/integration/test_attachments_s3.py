"""Attachments in S3-compatible object storage (``SLIPSTREAM_S3_BUCKET``): a Slipstream process
configured for it stores, serves and deletes files in a bucket of an S3 server on loopback
(moto's standalone server: no MinIO or other S3 server can be installed here)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from chat.models import Attachment
from tests.conftest import server_env, session_client
from tests.support.daphne_server import DaphneServer
from tests.support.files import png
from tests.support.llama_server import free_port
from tests.support.sse_client import post_message

pytestmark = pytest.mark.django_db(transaction=True)

BUCKET = "slipstream-attachments"
CREDENTIALS = {"aws_access_key_id": "slipstream", "aws_secret_access_key": "s3-secret-key"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        moto.stop()


@pytest.fixture
def bucket(s3_endpoint: str) -> Iterator[Any]:
    s3 = boto3.resource("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **CREDENTIALS)
    created = s3.create_bucket(Bucket=BUCKET)
    yield created
    created.objects.all().delete()
    created.delete()


@pytest.fixture
def s3_server(django_db_blocker: Any, s3_endpoint: str) -> Iterator[DaphneServer]:
    """A Slipstream process whose attachments go to the bucket."""
    with django_db_blocker.unblock():
        env = server_env()
    env |= {
        "SLIPSTREAM_S3_BUCKET": BUCKET,
        "SLIPSTREAM_S3_ENDPOINT_URL": s3_endpoint,
        "SLIPSTREAM_S3_REGION": "us-east-1",
        "SLIPSTREAM_S3_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
        "SLIPSTREAM_S3_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
    }
    with DaphneServer(env=env) as daphne:
        yield daphne


def test_files_live_in_the_bucket_and_go_with_their_conversation(
    slot, sim, user, bucket, s3_server
) -> None:
    slot.accepts_images = True
    slot.save()
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    client = session_client(s3_server, user)
    try:
        image = client.post(
            "/chat/attachments/", files={"file": ("chart.png", png(64, 48), "image/png")}
        ).json()
        stored = Attachment.objects.get(pk=image["id"])
        keys = [o.key for o in bucket.objects.all()]
        assert keys == [stored.file.name]
        in_bucket = bucket.Object(stored.file.name).get()["Body"].read()

        served = client.get(image["url"])
        assert (served.status_code, served.content) == (200, in_bucket)
        answer = post_message(client, "What is it?", attachments=[image["id"]])
        assert answer.status_code == 200
        assert sim.stats()["last_parts"][1]["sha256"] == stored.sha256

        conversation_id = answer.meta("slipstream.message")["conversation_id"]
        client.post(f"/c/{conversation_id}/delete/")
        assert not Attachment.objects.exists()
        assert list(bucket.objects.all()) == []
    finally:
        client.close()
