"""What the S3-compatible archive store (issue 13, part 6) will rely on, checked against a real
S3 endpoint (OpenStack Swift with its s3api middleware, tests/fixtures/s3_server.py) through
aiobotocore, signed with AWS SigV4: buckets, whole and multipart uploads, ranged reads, listings
by prefix in pages, sizes, deletion, and a refused signature."""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.fixtures.s3_server import S3Server, client

MIB = 1024 * 1024
MIN_PART = 5 * MIB
"""S3's smallest part of a multipart upload, but for the last."""


def error_code(error: pytest.ExceptionInfo[ClientError]) -> str:
    """The S3 error code of a refused request (`NoSuchKey`; a HEAD, with no body: `404`)."""
    return str(error.value.response["Error"]["Code"])


async def read(s3: Any, bucket: str, key: str, **kwargs: Any) -> tuple[dict[str, Any], bytes]:
    """GET an object: the answer's fields and its body."""
    answer = await s3.get_object(Bucket=bucket, Key=key, **kwargs)
    async with answer["Body"] as body:
        return answer, bytes(await body.read())


async def test_a_created_bucket_is_listed_and_answers(s3: Any) -> None:
    name = f"archive-{uuid.uuid4().hex[:16]}"
    with pytest.raises(ClientError) as missing:
        await s3.head_bucket(Bucket=name)
    assert error_code(missing) == "404"

    created = await s3.create_bucket(Bucket=name)

    assert created["ResponseMetadata"]["HTTPStatusCode"] == 200
    await s3.head_bucket(Bucket=name)
    listed = await s3.list_buckets()
    assert name in [b["Name"] for b in listed["Buckets"]]


async def test_an_object_put_is_read_back_whole(s3: Any, bucket: str) -> None:
    data = os.urandom(100_000)

    put = await s3.put_object(Bucket=bucket, Key="meeting-1/manifest.json", Body=data)

    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    answer, body = await read(s3, bucket, "meeting-1/manifest.json")
    assert body == data
    assert answer["ContentLength"] == len(data)


async def test_a_multipart_upload_in_parts_of_5_mib_is_one_object(s3: Any, bucket: str) -> None:
    parts = [os.urandom(MIN_PART), os.urandom(MIN_PART), os.urandom(MIB + 17)]
    key = "meeting-1/recording.seg"
    upload = await s3.create_multipart_upload(Bucket=bucket, Key=key)
    upload_id = upload["UploadId"]
    etags = []
    for number, part in enumerate(parts, start=1):
        sent = await s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part
        )
        assert sent["ETag"] == f'"{hashlib.md5(part).hexdigest()}"'
        etags.append(sent["ETag"])

    done = await s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )

    whole = b"".join(parts)
    # S3's multipart ETag: the MD5 of the parts' MD5s, then the number of parts.
    digests = b"".join(hashlib.md5(part).digest() for part in parts)
    assert done["ETag"] == f'"{hashlib.md5(digests).hexdigest()}-3"'
    head = await s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == len(whole)
    _, body = await read(s3, bucket, key)
    assert body == whole
    # A range across the first part boundary, as a reader of one segment would ask.
    _, across = await read(s3, bucket, key, Range=f"bytes={MIN_PART - 10}-{MIN_PART + 9}")
    assert across == whole[MIN_PART - 10 : MIN_PART + 10]
    pending = await s3.list_multipart_uploads(Bucket=bucket)
    assert pending.get("Uploads", []) == []


async def test_a_part_under_5_mib_that_is_not_the_last_is_refused(s3: Any, bucket: str) -> None:
    key = "meeting-1/too-small.seg"
    upload_id = (await s3.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
    parts = []
    for number, part in enumerate([os.urandom(MIN_PART - 1), os.urandom(100)], start=1):
        sent = await s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part
        )
        parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    with pytest.raises(ClientError) as refused:
        await s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )

    assert error_code(refused) == "EntityTooSmall"
    with pytest.raises(ClientError) as missing:
        await s3.head_object(Bucket=bucket, Key=key)
    assert error_code(missing) == "404"


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=1000-1999", 1000, 2000),
        ("bytes=-16", 65_520, 65_536),
        ("bytes=65000-", 65_000, 65_536),
    ],
)
async def test_a_ranged_get_returns_exactly_those_bytes(
    s3: Any, bucket: str, header: str, start: int, end: int
) -> None:
    data = os.urandom(65_536)
    await s3.put_object(Bucket=bucket, Key="segment", Body=data)

    answer, body = await read(s3, bucket, "segment", Range=header)

    assert body == data[start:end]
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert answer["ContentRange"] == f"bytes {start}-{end - 1}/{len(data)}"
    assert answer["ContentLength"] == end - start


async def test_a_listing_by_prefix_comes_in_pages(s3: Any, bucket: str) -> None:
    wanted = [f"meeting-a/segment-{i:03}" for i in range(5)]
    for key in [*wanted, "meeting-b/segment-000", "meeting-b/segment-001", "meeting-aa/x"]:
        await s3.put_object(Bucket=bucket, Key=key, Body=key.encode())

    pages: list[list[str]] = []
    truncated: list[bool] = []
    token: dict[str, str] = {}
    while True:
        page = await s3.list_objects_v2(Bucket=bucket, Prefix="meeting-a/", MaxKeys=2, **token)
        pages.append([item["Key"] for item in page.get("Contents", [])])
        truncated.append(page["IsTruncated"])
        assert all(item["Size"] == len(item["Key"]) for item in page.get("Contents", []))
        if not page["IsTruncated"]:
            break
        token = {"ContinuationToken": page["NextContinuationToken"]}

    assert pages == [wanted[0:2], wanted[2:4], wanted[4:5]]
    assert truncated == [True, True, False]


async def test_head_object_gives_the_size(s3: Any, bucket: str) -> None:
    await s3.put_object(Bucket=bucket, Key="meeting-1/segment-000", Body=os.urandom(12_345))

    head = await s3.head_object(Bucket=bucket, Key="meeting-1/segment-000")

    assert head["ContentLength"] == 12_345
    with pytest.raises(ClientError) as missing:
        await s3.head_object(Bucket=bucket, Key="meeting-1/segment-001")
    assert error_code(missing) == "404"


async def test_a_deleted_object_is_gone(s3: Any, bucket: str) -> None:
    await s3.put_object(Bucket=bucket, Key="meeting-1/segment-000", Body=b"expired")
    _, body = await read(s3, bucket, "meeting-1/segment-000")
    assert body == b"expired"

    deleted = await s3.delete_object(Bucket=bucket, Key="meeting-1/segment-000")

    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as gone:
        await read(s3, bucket, "meeting-1/segment-000")
    assert error_code(gone) == "NoSuchKey"
    listed = await s3.list_objects_v2(Bucket=bucket)
    assert listed["KeyCount"] == 0


@pytest.mark.parametrize(
    "keys",
    [{"secret_key": "not-the-secret-key"}, {"access_key": "consilium:intruder"}],
    ids=["wrong secret key", "unknown access key"],
)
async def test_a_request_signed_with_wrong_keys_is_refused(
    s3_server: S3Server, s3: Any, bucket: str, keys: dict[str, str]
) -> None:
    async with client(s3_server, **keys) as intruder:
        with pytest.raises(ClientError) as refused:
            await intruder.put_object(Bucket=bucket, Key="planted", Body=b"x")
        assert error_code(refused) in {"SignatureDoesNotMatch", "AccessDenied"}
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        with pytest.raises(ClientError) as listing:
            await intruder.list_objects_v2(Bucket=bucket)
        assert error_code(listing) in {"SignatureDoesNotMatch", "AccessDenied"}

    with pytest.raises(ClientError) as missing:
        await s3.head_object(Bucket=bucket, Key="planted")
    assert error_code(missing) == "404"
