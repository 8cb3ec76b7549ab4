//! Runs every command of the README's curl tour and command-line sections against a fresh
//! node and compares the answers with the ones the README shows, so the README cannot rot.
//!
//! In the README, a command is followed by its expected output as `# ` lines. JSON answers
//! are compared as JSON, where the string `"…"` stands for any value; other output line by
//! line.

mod common;

use serde_json::Value;

struct Step {
    command: String,
    expected: Vec<String>,
}

fn steps(readme: &str) -> Vec<Step> {
    let start = readme
        .find("## A five-minute tour with curl")
        .expect("tour section");
    let end = readme[start..]
        .find("## Embedding")
        .map_or(readme.len(), |e| start + e);
    let mut steps = Vec::new();
    let mut in_block = false;
    for line in readme[start..end].lines() {
        if line.starts_with("```") {
            in_block = line == "```sh";
            continue;
        }
        if !in_block || line.trim().is_empty() {
            continue;
        }
        if let Some(out) = line
            .strip_prefix("# ")
            .or_else(|| (line == "#").then_some(""))
        {
            steps
                .last_mut()
                .map(|s: &mut Step| s.expected.push(out.to_owned()))
                .expect("output follows a command");
        } else {
            steps.push(Step {
                command: line.to_owned(),
                expected: Vec::new(),
            });
        }
    }
    steps
}

/// Whether `got` matches `want`, where the string "…" in `want` matches anything.
fn json_matches(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::String(w), _) if w == "…" => true,
        (Value::Object(w), Value::Object(g)) => {
            w.len() == g.len()
                && w.iter()
                    .all(|(k, v)| g.get(k).is_some_and(|gv| json_matches(v, gv)))
        }
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| json_matches(a, b))
        }
        _ => want == got,
    }
}

#[actix_rt::test]
async fn the_readme_tour_works_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let steps = steps(&readme);
    assert!(steps.len() >= 25, "the tour has {} commands", steps.len());
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let addr = node.url.trim_start_matches("http://").to_owned();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_cooper"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let localize = |s: &str| {
        s.replace("http://127.0.0.1:7080", &node.url)
            .replace("localhost:7080", &addr)
    };
    for step in &steps {
        let command = localize(&step.command);
        let (url, path) = (node.url.clone(), path.clone());
        let cmd = command.clone();
        // Run off the test's thread: the node's registry lives on it.
        let out = actix_web::rt::task::spawn_blocking(move || {
            std::process::Command::new("bash")
                .arg("-c")
                .arg(format!("{cmd} 2>&1"))
                .env("PATH", path)
                .env("COOPER_NODE", url)
                .env_remove("COOPER_TOKEN")
                .output()
                .expect("bash runs")
        })
        .await
        .unwrap();
        let got = String::from_utf8_lossy(&out.stdout).into_owned();
        let expected: Vec<String> = step.expected.iter().map(|l| localize(l)).collect();
        let want_text = expected.join("\n");
        match serde_json::from_str::<Value>(&want_text) {
            Ok(want) if want.is_object() || want.is_array() => {
                let got_json: Value = serde_json::from_str(got.trim())
                    .unwrap_or_else(|e| panic!("{command}\nanswered {got:?}, not JSON: {e}"));
                assert!(
                    json_matches(&want, &got_json),
                    "{command}\nREADME shows {want}\nthe node answered {got_json}"
                );
            }
            _ => {
                let got_lines: Vec<&str> = got.trim_end().lines().map(str::trim_end).collect();
                let want_lines: Vec<&str> = expected.iter().map(|l| l.trim_end()).collect();
                assert_eq!(got_lines, want_lines, "{command}");
            }
        }
    }
    node.node.shutdown().await.unwrap();
}

#[test]
fn wildcards_match_anything_and_nothing_else() {
    let want: Value = serde_json::json!({"a": "…", "b": [1, {"c": 2}]});
    assert!(json_matches(
        &want,
        &serde_json::json!({"a": 5, "b": [1, {"c": 2}]})
    ));
    assert!(!json_matches(
        &want,
        &serde_json::json!({"a": 5, "b": [1, {"c": 3}]})
    ));
    assert!(!json_matches(
        &want,
        &serde_json::json!({"a": 5, "b": [1, {"c": 2}], "d": 0})
    ));
}
