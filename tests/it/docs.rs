//! The documentation cannot drift from the program: every shell block of README.md and of the
//! guide (docs/*.md) that is preceded by a `<!-- runnable ... -->` line runs here, as written, in
//! a shell, through the binaries this test suite built.
//!
//! The marker: `<!-- runnable -->` (the block must exit 0), `<!-- runnable: expect TEXT -->`
//! (and print TEXT on stdout), `<!-- runnable: background -->` (it runs on, like a terminal
//! left open: a daemon, a server; the next block starts once it printed `listening on`). The
//! blocks of one file run in order in one fresh folder, and its background blocks are stopped
//! when the file is done. In the shell, `cargo run --locked --no-default-features [--example
//! upload_api] -- ARGS` runs the binary the test suite built with ARGS (what `cargo run` would
//! do, without building it again), and `reconcile` is on the PATH.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug)]
struct Block {
    /// Where it is, for the failure message: `docs/getting-started.md:120`.
    at: String,
    background: bool,
    expect: Option<String>,
    script: String,
}

/// The runnable blocks of one Markdown file, in order.
fn runnable_blocks(path: &Path, shown: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {shown}: {e}"));
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some(marker) = line
            .trim()
            .strip_prefix("<!-- runnable")
            .and_then(|rest| rest.strip_suffix("-->"))
        else {
            continue;
        };
        let marker = marker.trim().trim_start_matches(':').trim();
        assert_eq!(
            lines.get(n + 1).map(|l| l.trim()),
            Some("```sh"),
            "{shown}:{}: a runnable marker must stand right above a ```sh block",
            n + 1
        );
        let script: Vec<&str> = lines[n + 2..]
            .iter()
            .take_while(|l| l.trim() != "```")
            .copied()
            .collect();
        blocks.push(Block {
            at: format!("{shown}:{}", n + 3),
            background: marker == "background",
            expect: marker.strip_prefix("expect ").map(str::to_owned),
            script: script.join("\n"),
        });
        assert!(
            marker.is_empty() || marker == "background" || marker.starts_with("expect "),
            "{shown}:{}: unknown marker {marker:?}",
            n + 1
        );
    }
    blocks
}

/// What every block's shell starts with: `cargo run` mapped onto the built binaries.
fn prelude(reconcile: &Path, upload_api: &Path) -> String {
    format!(
        r#"set -euo pipefail
cargo() {{
  case "$*" in
    "run --locked --no-default-features --example upload_api -- "*) shift 6; "{api}" "$@" ;;
    "run --locked --no-default-features -- "*) shift 4; "{bin}" "$@" ;;
    *) echo "tests/it/docs.rs does not know how to run: cargo $*" >&2; return 97 ;;
  esac
}}
"#,
        api = upload_api.display(),
        bin = reconcile.display(),
    )
}

/// A block running on in the background, in a process group of its own.
struct Background {
    at: String,
    child: std::process::Child,
    log: PathBuf,
}

impl Drop for Background {
    fn drop(&mut self) {
        // The whole group: the shell and the daemon or server it started.
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill")
            .args(["-TERM", "--", &group])
            .status();
        let _ = self.child.wait();
    }
}

fn shell(dir: &Path, prelude: &str, block: &Block, bin_dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("bash");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.arg("-c")
        .arg(format!("{prelude}{}", block.script))
        .current_dir(dir)
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir)
        .env("TMPDIR", dir);
    cmd
}

async fn run_file(shown: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let reconcile = crate::helpers::reconcile_binary();
    let bin_dir = reconcile.parent().expect("the binary's folder").to_owned();
    let prelude = prelude(&reconcile, &crate::upload_api::example_binary());
    let dir = tempfile::tempdir().expect("a folder for the blocks");
    let mut background = Vec::new();
    for block in runnable_blocks(&root.join(shown), shown) {
        if block.background {
            let log = dir
                .path()
                .join(format!("background-{}.log", background.len()));
            let out = std::fs::File::create(&log).expect("log file");
            let child = shell(dir.path(), &prelude, &block, &bin_dir)
                .stdout(out.try_clone().expect("log file"))
                .stderr(out)
                .process_group(0)
                .spawn()
                .expect("start bash");
            let mut running = Background {
                at: block.at.clone(),
                child,
                log,
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let said = std::fs::read_to_string(&running.log).unwrap_or_default();
                if said.contains("listening on") {
                    break;
                }
                let ended = running.child.try_wait().expect("poll the block");
                assert!(
                    ended.is_none() && tokio::time::Instant::now() < deadline,
                    "{}: the background block {} before saying `listening on`:\n{said}",
                    running.at,
                    if ended.is_some() {
                        "ended"
                    } else {
                        "took 60 s"
                    }
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            background.push(running);
            continue;
        }
        let mut cmd = tokio::process::Command::from(shell(dir.path(), &prelude, &block, &bin_dir));
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.kill_on_drop(true).output())
            .await
            .unwrap_or_else(|_| panic!("{}: still running after 120 s", block.at))
            .expect("run bash");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let logs: String = background
            .iter()
            .map(|b| {
                let log = std::fs::read_to_string(&b.log).unwrap_or_default();
                format!("\n--- background block {}:\n{log}", b.at)
            })
            .collect();
        assert!(
            out.status.success(),
            "{}: {}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}{logs}",
            block.at,
            out.status
        );
        if let Some(expected) = &block.expect {
            assert!(
                stdout.contains(expected.as_str()),
                "{}: {expected:?} not in its output:\n{stdout}{logs}",
                block.at
            );
        }
    }
}

/// The Markdown files of the documentation: README.md, then docs/*.md by name.
fn documentation() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut guide: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| {
            e.expect("docs/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    guide.sort();
    let mut files = vec!["README.md".to_owned()];
    files.extend(guide);
    files
}

#[tokio::test]
async fn every_runnable_block_of_the_readme_and_the_guide_runs_as_written() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let files = documentation();
    let count: usize = files
        .iter()
        .map(|f| runnable_blocks(&root.join(f), f).len())
        .sum();
    // The demo, and the walkthrough's two terminals and its client.
    assert!(count >= 4, "only {count} runnable blocks in {files:?}");
    for file in &files {
        run_file(file).await;
    }
}

#[tokio::test]
async fn every_link_between_the_readme_and_the_guide_leads_to_a_file_and_a_heading_that_exist() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let slug = |heading: &str| -> String {
        heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect()
    };
    let anchors = |file: &Path| -> Vec<String> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .map(|l| slug(l.trim_start_matches('#')))
            .collect()
    };
    for file in documentation() {
        let path = root.join(&file);
        let text = std::fs::read_to_string(&path).expect("read");
        for (n, line) in text.lines().enumerate() {
            for target in line.split("](").skip(1) {
                let Some(target) = target.split(')').next() else {
                    continue;
                };
                if target.starts_with("http") || target.starts_with("mailto:") {
                    continue;
                }
                let (linked, anchor) = target.split_once('#').unwrap_or((target, ""));
                let linked = if linked.is_empty() {
                    path.clone()
                } else {
                    path.parent().expect("a folder").join(linked)
                };
                assert!(linked.exists(), "{file}:{}: {target} names no file", n + 1);
                if !anchor.is_empty() {
                    assert!(
                        anchors(&linked).iter().any(|a| a == anchor),
                        "{file}:{}: {target} names no heading",
                        n + 1
                    );
                }
            }
        }
    }
}
