//! Secrets never leave the process: not in the log (at debug level), the reconciler's tables,
//! `explain`, `check-config`, `/metrics`, nor the error line of a failed command.

use crate::helpers::*;

fn assert_no_secret(place: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} in {place}:\n{text}");
    }
}

#[tokio::test]
async fn a_database_password_in_the_query_or_holding_url_delimiters_is_never_printed() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    // (the URL, what of it is secret, what of it the error must still name)
    let cases: [(&str, &[&str], &str); 2] = [
        (
            "postgresql://u@127.0.0.1:1/x?password=PWQUERY123",
            &["PWQUERY123"],
            "127.0.0.1:1/x",
        ),
        (
            "postgres://u:p/SLASHPW?#HASHPW@127.0.0.1:1/db",
            &["SLASHPW", "HASHPW"],
            "127.0.0.1:1/db",
        ),
    ];
    for (url, secrets, names) in cases {
        for command in ["--dry-run", "check-config"] {
            let run = Reconcile::new(&db, &bucket)
                .run(&["--database-url", url, command])
                .await;
            let stderr = run.stderr.trim();
            assert_eq!(run.code, 1, "{command} with {url}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
            assert!(stderr.contains(names), "{names:?} not in: {stderr}");
            assert_no_secret(&format!("{command}'s stderr"), stderr, secrets);
            assert_no_secret(&format!("{command}'s stdout"), &run.stdout, secrets);
        }
    }
}
