//! Every IAM permission in `config/` is justified by an SDK call of the source that needs it,
//! and every SDK call has its permission in the policy of the mode that makes it.
//!
//! The justification is the table below: each S3 and SQS operation the reconciler calls, with
//! the IAM actions AWS requires for it (from AWS's "Actions, resources, and condition keys"
//! reference and each operation's "Permissions" section). The test finds the calls in `src/`
//! (`client.operation()`), so a new call without an entry here fails, and so does a permission in
//! a policy that no call needs.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Operation -> (IAM actions it needs, whether an audit (`--dry-run`, `explain`) makes it).
const NEEDS: &[(&str, &[&str], bool)] = &[
    // Sweeps list the bucket; ListBucket also makes HEAD of a missing key a 404 rather than 403.
    ("list_objects_v2", &["s3:ListBucket"], true),
    // Readiness and check-config: can the bucket be reached with these keys.
    ("head_bucket", &["s3:ListBucket"], true),
    // The re-check before every action, and `explain`.
    ("head_object", &["s3:GetObject"], true),
    // An S3 Inventory's manifest and data files ([storage.inventory]), in its destination bucket.
    ("get_object", &["s3:GetObject"], true),
    // Resumable uploads: the multipart uploads in progress under the prefix, and the bytes the
    // parts of an abandoned one hold.
    (
        "list_multipart_uploads",
        &["s3:ListBucketMultipartUploads"],
        true,
    ),
    ("list_parts", &["s3:ListMultipartUploadParts"], true),
    // A missing object: does the bucket keep versions (once per sweep), and what lies under the
    // missing key (its history only, with the key as prefix); `explain` lists it too.
    ("get_bucket_versioning", &["s3:GetBucketVersioning"], true),
    ("list_object_versions", &["s3:ListBucketVersions"], true),
    // Quarantine: the copy reads the source and its tags, writes the target and its tags.
    (
        "copy_object",
        &[
            "s3:GetObject",
            "s3:PutObject",
            "s3:GetObjectTagging",
            "s3:PutObjectTagging",
        ],
        false,
    ),
    // Quarantine of objects above storage.multipart_copy_threshold, in parts.
    ("create_multipart_upload", &["s3:PutObject"], false),
    ("upload_part_copy", &["s3:GetObject", "s3:PutObject"], false),
    ("complete_multipart_upload", &["s3:PutObject"], false),
    // A multipart copy that did not complete is aborted, never left billed.
    (
        "abort_multipart_upload",
        &["s3:AbortMultipartUpload"],
        false,
    ),
    // Quarantine (after the copy is checked) and orphan_action = "delete"; with a VersionId,
    // missing_action = "restore" removing a delete marker (s3:DeleteObjectVersion).
    (
        "delete_object",
        &["s3:DeleteObject", "s3:DeleteObjectVersion"],
        false,
    ),
    // The daemon's event path: receive, heartbeat, delete after commit, and the queue's
    // redrive policy (maxReceiveCount) for holding messages through outages.
    ("receive_message", &["sqs:ReceiveMessage"], false),
    (
        "change_message_visibility_batch",
        &["sqs:ChangeMessageVisibility"],
        false,
    ),
    ("delete_message_batch", &["sqs:DeleteMessage"], false),
    ("get_queue_attributes", &["sqs:GetQueueAttributes"], false),
];

/// The SDK operations called anywhere in `src/`.
fn calls_in_source() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                // `client.op()`, `self.client\n    .op()`: the shape of every SDK call here.
                let mut rest = text.as_str();
                while let Some(at) = rest.find("client") {
                    rest = &rest[at + "client".len()..];
                    let after = rest.trim_start();
                    let Some(call) = after.strip_prefix('.') else {
                        continue;
                    };
                    let name: String = call
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                        .collect();
                    // `clone` and `config` are the client's own methods, not operations.
                    let operation = !matches!(name.as_str(), "" | "clone" | "config");
                    if call[name.len()..].starts_with("()") && operation {
                        out.insert(name);
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

/// The actions a policy file allows.
fn allowed(policy: &str) -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(policy);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read policy")).expect("JSON");
    let mut out = BTreeSet::new();
    for statement in json["Statement"].as_array().expect("statements") {
        assert_eq!(statement["Effect"], "Allow", "{policy}: {statement}");
        match &statement["Action"] {
            Value::String(action) => {
                out.insert(action.clone());
            }
            Value::Array(actions) => out.extend(
                actions
                    .iter()
                    .map(|a| a.as_str().expect("action").to_owned()),
            ),
            other => panic!("{policy}: unexpected Action {other}"),
        }
    }
    out
}

#[test]
fn every_permission_is_needed_by_a_call_and_every_call_has_its_permission() {
    let table: BTreeMap<&str, (&[&str], bool)> = NEEDS
        .iter()
        .map(|(op, actions, audit)| (*op, (*actions, *audit)))
        .collect();
    let calls = calls_in_source();
    let unjustified: Vec<&String> = calls
        .iter()
        .filter(|c| !table.contains_key(c.as_str()))
        .collect();
    assert!(
        unjustified.is_empty(),
        "SDK calls with no entry in NEEDS (add the IAM actions they need): {unjustified:?}"
    );
    let stale: Vec<&&str> = table.keys().filter(|op| !calls.contains(**op)).collect();
    assert!(
        stale.is_empty(),
        "NEEDS lists calls the source no longer makes: {stale:?}"
    );

    let needed = |audit_only: bool| -> BTreeSet<String> {
        table
            .values()
            .filter(|(_, audit)| *audit || !audit_only)
            .flat_map(|(actions, _)| actions.iter().map(|a| (*a).to_owned()))
            .collect()
    };
    assert_eq!(
        allowed("iam-apply-policy.json"),
        needed(false),
        "the apply policy allows exactly what the calls need"
    );
    assert_eq!(
        allowed("iam-audit-policy.json"),
        needed(true),
        "the audit policy allows exactly what an audit's calls need, nothing that writes"
    );
}

/// A moto server of this test's own with IAM enforced: the shared one stays open for the rest
/// of the suite. Until `enforce` is called, moto lets every request through, so the bucket,
/// the objects and the users are made as an administrator would.
struct EnforcingMoto {
    endpoint: String,
    process: tokio::process::Child,
    http: reqwest::Client,
}

impl EnforcingMoto {
    async fn start() -> EnforcingMoto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
        let process = tokio::process::Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {} (scripts/test installs it): {e}", server.display())
            });
        let moto = EnforcingMoto {
            endpoint: format!("http://127.0.0.1:{port}"),
            process,
            http: reqwest::Client::new(),
        };
        crate::helpers::eventually(
            std::time::Duration::from_secs(30),
            "the IAM-enforcing moto answers",
            || async {
                moto.http
                    .get(format!("{}/moto-api/", moto.endpoint))
                    .send()
                    .await
                    .is_ok()
            },
        )
        .await;
        moto
    }

    /// An IAM call in the query protocol; returns the response body.
    async fn iam(&self, params: &[(&str, &str)]) -> String {
        let mut form = vec![("Version", "2010-05-08")];
        form.extend_from_slice(params);
        let response = self
            .http
            .post(&self.endpoint)
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=admin/20261126/us-east-1/iam/aws4_request, \
                 SignedHeaders=host, Signature=0",
            )
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(
                url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(&form)
                    .finish(),
            )
            .send()
            .await
            .expect("IAM call");
        let status = response.status();
        let body = response.text().await.expect("IAM response");
        assert!(status.is_success(), "IAM {params:?}: {status} {body}");
        body
    }

    /// A user whose only permissions are the policy file's; returns its access key pair.
    async fn user_with(&self, name: &str, policy_file: &str) -> (String, String) {
        let policy = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config")
                .join(policy_file),
        )
        .expect("read policy");
        self.iam(&[("Action", "CreateUser"), ("UserName", name)])
            .await;
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", name),
            ("PolicyName", policy_file),
            ("PolicyDocument", &policy),
        ])
        .await;
        let created = self
            .iam(&[("Action", "CreateAccessKey"), ("UserName", name)])
            .await;
        let field = |tag: &str| {
            let open = format!("<{tag}>");
            let start = created.find(&open).expect(tag) + open.len();
            let end = created[start..].find('<').expect(tag) + start;
            created[start..end].to_owned()
        };
        (field("AccessKeyId"), field("SecretAccessKey"))
    }

    /// From now on every request must be allowed by its signer's policies (`f64::INFINITY`
    /// turns enforcement off again).
    async fn enforce(&self, unchecked_requests_left: f64) {
        let response = self
            .http
            .post(format!("{}/moto-api/reset-auth", self.endpoint))
            .header("Content-Type", "text/plain")
            .body(unchecked_requests_left.to_string())
            .send()
            .await
            .expect("reset-auth");
        assert!(response.status().is_success(), "reset-auth: {response:?}");
    }
}

impl Drop for EnforcingMoto {
    fn drop(&mut self) {
        self.process.start_kill().ok();
    }
}

/// The policies in `config/` are enough, and the audit one is too little to write: a dry run
/// signed with the audit policy's keys finds everything, and applying with them cannot touch an
/// object; the apply policy's keys apply, and only under the quarantine prefix.
#[tokio::test]
async fn the_audit_policy_reads_everything_and_writes_nothing_the_apply_policy_applies() {
    use crate::helpers::*;
    let moto = EnforcingMoto::start().await;
    // The policies name the bucket `uploads`: this moto is the test's own, so it can be that.
    let bucket = TestBucket {
        name: "uploads".into(),
        client: s3_client(&moto.endpoint),
        endpoint: moto.endpoint.clone(),
    };
    bucket
        .client
        .create_bucket()
        .bucket("uploads")
        .send()
        .await
        .expect("create bucket uploads");
    let db = TestDb::with_docs(None).await;
    db.doc("stale", "pending", 2 * HOUR).await;
    db.doc("kept", "processed", 2 * HOUR).await;
    bucket.put("docs/kept", "kept").await;
    bucket.put("docs/orphan", "nobody's").await;
    let auditor = moto.user_with("auditor", "iam-audit-policy.json").await;
    let applier = moto.user_with("applier", "iam-apply-policy.json").await;
    let signed_by = |keys: &(String, String)| {
        let mut reconcile = Reconcile::new(&db, &bucket)
            .set("storage.prefix", "docs/")
            .set("sweep.orphan_grace", "0s")
            .set("sweep.orphan_action", "quarantine");
        reconcile
            .env
            .push(("AWS_ACCESS_KEY_ID".into(), keys.0.clone()));
        reconcile
            .env
            .push(("AWS_SECRET_ACCESS_KEY".into(), keys.1.clone()));
        reconcile
    };
    let expected = triples(&[
        ("orphan_object", "orphan", "quarantine"),
        ("stale_pending", "stale", "expire"),
    ]);
    moto.enforce(0.0).await;

    let audit = signed_by(&auditor)
        .run(&["--dry-run", "--format", "json"])
        .await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert_eq!(audit.findings(), expected, "{}", audit.stdout);

    let refused = signed_by(&auditor).run(&["--format", "json"]).await;
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    let orphan = refused.json()["findings"][0].clone();
    assert_eq!(orphan["result"], "failed", "{orphan}");
    assert!(
        orphan["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("AccessDenied"),
        "{orphan}"
    );

    let applied = signed_by(&applier).run(&["--format", "json"]).await;
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    assert_eq!(
        applied.json()["findings"][0]["result"],
        "applied",
        "{}",
        applied.stdout
    );

    moto.enforce(f64::INFINITY).await;
    let keys: Vec<String> = bucket.snapshot().await.into_keys().collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0], "docs/kept");
    assert!(keys[1].starts_with("quarantine/docs/orphan/"), "{keys:?}");
}
