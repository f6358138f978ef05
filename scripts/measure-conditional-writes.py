"""Which conditional S3 requests a server honours (the table "Conditional writes" in docs/findings.md).
Usage: .venv/bin/python scripts/measure-conditional-writes.py ENDPOINT ACCESS_KEY SECRET_KEY REGION
(moto: any keys, region us-east-1; garage: the key scripts/test-garage creates)."""
import sys, uuid, boto3, botocore
endpoint, key, secret, region = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                  region_name=region, config=botocore.config.Config(s3={"addressing_style": "path"}))
b = "m-" + uuid.uuid4().hex[:16]
s3.create_bucket(Bucket=b)
def status(f):
    try:
        f(); return "ok (not refused)"
    except botocore.exceptions.ClientError as e:
        return f"refused: HTTP {e.response['ResponseMetadata']['HTTPStatusCode']} {e.response['Error'].get('Code')}"
s3.put_object(Bucket=b, Key="src", Body=b"v1")
s3.put_object(Bucket=b, Key="dst", Body=b"other")
print("CopyObject If-None-Match:* onto an existing key:",
      status(lambda: s3.copy_object(Bucket=b, Key="dst", CopySource=f"{b}/src", IfNoneMatch="*")),
      "| dst now:", s3.get_object(Bucket=b, Key="dst")["Body"].read())
print("CopyObject x-amz-copy-source-if-match with a stale ETag:",
      status(lambda: s3.copy_object(Bucket=b, Key="dst2", CopySource=f"{b}/src", CopySourceIfMatch='"0123456789abcdef0123456789abcdef"')))
print("DeleteObject If-Match with a stale ETag:",
      status(lambda: s3.delete_object(Bucket=b, Key="src", IfMatch='"0123456789abcdef0123456789abcdef"')),
      "| src still there:", any(o["Key"] == "src" for o in s3.list_objects_v2(Bucket=b).get("Contents", [])))
etag = s3.head_object(Bucket=b, Key="dst")["ETag"]
print("DeleteObject If-Match with the current ETag:", status(lambda: s3.delete_object(Bucket=b, Key="dst", IfMatch=etag)),
      "| dst gone:", all(o["Key"] != "dst" for o in s3.list_objects_v2(Bucket=b).get("Contents", [])))
s3.put_object(Bucket=b, Key="src", Body=b"v" * (6 << 20))
u = s3.create_multipart_upload(Bucket=b, Key="src")["UploadId"]
p = s3.upload_part_copy(Bucket=b, Key="src", UploadId=u, PartNumber=1, CopySource=f"{b}/src", CopySourceRange="bytes=0-1")
print("CompleteMultipartUpload If-None-Match:* onto an existing key:",
      status(lambda: s3.complete_multipart_upload(Bucket=b, Key="src", UploadId=u, IfNoneMatch="*",
             MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p["CopyPartResult"]["ETag"]}]})))
print("UploadPartCopy x-amz-copy-source-if-match with a stale ETag:",
      status(lambda: s3.upload_part_copy(Bucket=b, Key="x", UploadId=s3.create_multipart_upload(Bucket=b, Key="x")["UploadId"],
             PartNumber=1, CopySource=f"{b}/src", CopySourceRange="bytes=0-1", CopySourceIfMatch='"0123456789abcdef0123456789abcdef"')))
r = s3.list_objects_v2(Bucket=b)["Contents"][0]["LastModified"]; h = s3.head_object(Bucket=b, Key=r and "src")
print("listing LastModified:", r.isoformat(), "| HEAD Last-Modified:", h["ResponseMetadata"]["HTTPHeaders"]["last-modified"])
